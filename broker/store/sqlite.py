"""The embedded default store: one SQLite file in WAL mode.

* One writer thread owns the write connection. Concurrent writes are grouped: the
  writer drains the queue and applies every waiting request in one transaction
  (group commit), with one statement per table for the whole group; a rejected
  entity (its mutation raised) is simply not written. Should a statement fail, the
  group is redone entity by entity, each under its own SAVEPOINT, so that only the
  entity at fault fails. A write is acknowledged only after COMMIT.
* Reads run on a small thread pool, each thread with its own read-only connection,
  so the event loop never blocks on SQLite and WAL lets reads run beside the writer.
* Entities are stored as JSON (orjson) with side tables for what queries filter on:
  types and attribute names (discovery, ``type=``/``attrs=``).
* Attribute history (``sqlhistory.py``) is appended in the same transaction as the
  entity write it records.
* Durability: WAL with ``synchronous=NORMAL`` survives a killed process with no loss
  of committed transactions; ``?synchronous=FULL`` in the URL also survives power loss.
* Checkpoints (copying the WAL back into the database file) run on their own thread,
  not inside a write request's commit (``_Checkpointer``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from broker.core.history import Duration, HistoryRow
from broker.core.model import ENTITY_KEYS, Entity
from broker.errors import (
    AlreadyExists,
    InternalError,
    NgsiLdError,
    ResourceNotFound,
    StoreUnavailable,
)
from broker.query.patterns import search
from broker.store import sqlhistory
from broker.store.base import (
    ANY_DATASET,
    DELETE,
    Aggregates,
    ContextRecord,
    Discovery,
    EntityQuery,
    History,
    HistoryEntity,
    HistoryQuery,
    Mutation,
    NotificationRecord,
    Store,
    WriteResult,
)
from broker.store.sqlbatch import insert_rows, max_id, rows_in, where_in
from broker.store.sqlindex import (
    UNINDEXED_META,
    SqlBuilder,
    geo_match,
    geo_rows,
    path_key,
    q_match,
    scope_match,
    selection_sql,
    value_rows,
)

T = TypeVar("T")
log = logging.getLogger("renkei.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants(name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities(
    rid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    doc BLOB NOT NULL,
    UNIQUE(tenant, id)
);
CREATE TABLE IF NOT EXISTS entity_types(
    tenant TEXT NOT NULL, type TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY(tenant, type, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_types_rid ON entity_types(rid);
CREATE TABLE IF NOT EXISTS entity_attrs(
    tenant TEXT NOT NULL, attr TEXT NOT NULL, rid INTEGER NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY(tenant, attr, rid, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_attrs_rid ON entity_attrs(rid);
CREATE TABLE IF NOT EXISTS entity_scopes(
    tenant TEXT NOT NULL, scope TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY(tenant, scope, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_scopes_rid ON entity_scopes(rid);
-- one row per comparable value (or presence) of each attribute path: see sqlindex.py
CREATE TABLE IF NOT EXISTS attr_values(
    tenant TEXT NOT NULL, path TEXT NOT NULL, rid INTEGER NOT NULL, kind INTEGER NOT NULL,
    b INTEGER, num, str TEXT, dt INTEGER, day INTEGER, tod INTEGER
);
CREATE INDEX IF NOT EXISTS attr_values_path ON attr_values(tenant, path, rid);
DROP INDEX IF EXISTS attr_values_num;
DROP INDEX IF EXISTS attr_values_str;
DROP INDEX IF EXISTS attr_values_dt;
CREATE INDEX IF NOT EXISTS attr_values_rid ON attr_values(rid);
CREATE TABLE IF NOT EXISTS geo_shapes(
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, path TEXT NOT NULL, rid INTEGER NOT NULL,
    geom BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS geo_shapes_path ON geo_shapes(tenant, path, rid);
CREATE INDEX IF NOT EXISTS geo_shapes_rid ON geo_shapes(rid);
CREATE VIRTUAL TABLE IF NOT EXISTS geo_rtree USING rtree(id, minx, maxx, miny, maxy);
CREATE TABLE IF NOT EXISTS subscriptions(
    tenant TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, doc BLOB NOT NULL,
    times_sent INTEGER NOT NULL DEFAULT 0, times_failed INTEGER NOT NULL DEFAULT 0,
    last_notification TEXT, last_success TEXT, last_failure TEXT, last_claim REAL,
    PRIMARY KEY(tenant, id)
);
CREATE TABLE IF NOT EXISTS contexts(
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    doc BLOB NOT NULL,
    created_at TEXT NOT NULL,
    last_usage TEXT,
    hits INTEGER NOT NULL DEFAULT 0
);
"""

_MAX_GROUP = 512
#: WAL pages after which a commit checkpoints by itself (the checkpointer normally
#: keeps the WAL far below this); and the size the WAL file is cut back to.
_AUTOCHECKPOINT_PAGES = 16384
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
_READERS = 4
_REGEX_MAX = 256


def _regexp(pattern: str, value: str | None) -> bool:
    return value is not None and search(pattern, value)


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


@dataclass
class _WriteJob:
    tenant: str
    mutations: Sequence[tuple[str, Mutation]]
    future: asyncio.Future[list[WriteResult]]
    history: Mapping[str, Sequence[HistoryRow]] | None = None
    results: list[WriteResult] = field(default_factory=list)


@dataclass(slots=True)
class _Slot:
    """An entity during a group write: its stored row (``rid``) and its state so far."""

    rid: int | None
    doc: bytes | None
    entity: Entity | None = None
    dirty: bool = False  # written in this group
    gone: bool = False  # its stored row was deleted in this group


def _unindex(conn: sqlite3.Connection, rids: Sequence[int]) -> None:
    if not rids:
        return
    for table in ("entity_types", "entity_attrs", "entity_scopes", "attr_values"):
        where_in(conn, f"DELETE FROM {table} WHERE rid IN ({{}})", rids)
    where_in(
        conn,
        "DELETE FROM geo_rtree WHERE id IN (SELECT id FROM geo_shapes WHERE rid IN ({}))",
        rids,
    )
    where_in(conn, "DELETE FROM geo_shapes WHERE rid IN ({})", rids)


def _index(conn: sqlite3.Connection, items: Sequence[tuple[str, int, Entity]]) -> None:
    """Write the side-table rows queries use for these (tenant, rid, entity)."""
    if not items:
        return
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_types(tenant, type, rid)",
        [(tenant, t, rid) for tenant, rid, ent in items for t in ent["type"]],
    )
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_attrs(tenant, attr, rid, kind)",
        [
            (tenant, k, rid, inst.get("type", "Property"))
            for tenant, rid, ent in items
            for k, instances in ent.items()
            if k not in ENTITY_KEYS
            for inst in instances
        ],
    )
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_scopes(tenant, scope, rid)",
        [(tenant, sc, rid) for tenant, rid, ent in items for sc in ent.get("scope") or ()],
    )
    insert_rows(
        conn,
        "INSERT INTO attr_values(tenant, path, rid, kind, b, num, str, dt, day, tod)",
        [(tenant, row[0], rid, *row[1:]) for tenant, rid, ent in items for row in value_rows(ent)],
    )
    shapes = [(tenant, rid, g) for tenant, rid, ent in items for g in geo_rows(ent)]
    if not shapes:
        return
    top = max_id(conn, "geo_shapes", "id")
    insert_rows(
        conn,
        "INSERT INTO geo_shapes(id, tenant, path, rid, geom)",
        [(top + i, tenant, g.path, rid, g.wkb) for i, (tenant, rid, g) in enumerate(shapes, 1)],
    )
    insert_rows(
        conn,
        "INSERT INTO geo_rtree(id, minx, maxx, miny, maxy)",
        [
            (top + i, g.bounds[0], g.bounds[2], g.bounds[1], g.bounds[3])
            for i, (_, _, g) in enumerate(shapes, 1)
        ],
    )


class _Checkpointer:
    """Copies committed WAL pages back into the database file on its own thread.

    SQLite otherwise does this inside the commit that crosses its threshold, so every
    thousand pages one write request also pays for writing and syncing the database
    file. Here the writer only signals after each commit; a PASSIVE checkpoint (which
    never blocks writers or readers) runs at most every ``interval`` seconds. The
    writer keeps a high automatic threshold as a backstop should this fall behind."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = 0.5) -> None:
        self._connect = connect
        self.interval = interval
        self._wanted = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="renkei-sqlite-ckpt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wanted(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._halt.set()
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                self._wanted.wait()
                if self._halt.is_set():
                    return
                self._halt.wait(self.interval)
                self._wanted.clear()
                if self._halt.is_set():  # set before _wanted by stop(): never missed
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next commit asks again
                    log.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()


@contextmanager
def _driver_errors() -> Iterator[None]:
    """Translate sqlite3 errors at the boundary of this backend."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreUnavailable(f"database busy: {exc}") from exc
        raise InternalError(f"store error: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise InternalError(f"store error: {exc}") from exc


def _order_by(query: EntityQuery) -> tuple[str, list[Any]]:
    """ORDER BY terms for ``query.order_by``; the entity id orders the rest.

    Ordering by id lets SQLite walk the (tenant, id) index and stop at the page's
    end, probing each entity's side-table rows, instead of gathering every match."""
    terms: list[str] = []
    args: list[Any] = []
    for key, desc in query.order_by or ():
        if key == "id":
            term = "e.id"
        elif key == "type":
            term = "(SELECT min(type) FROM entity_types t WHERE t.rid = e.rid)"
        elif key in ("createdAt", "modifiedAt"):
            term = f"json_extract(CAST(e.doc AS TEXT), '$.{key}')"
        elif key.meta in UNINDEXED_META and not key.sub_attributes and '"' not in key.attr:
            # attribute system timestamps have no index rows: read them from the document
            term = f"json_extract(CAST(e.doc AS TEXT), '$.\"{key.attr}\"[0].{key.meta}')"
        else:
            term = "(SELECT min(coalesce(v.num, v.str)) FROM attr_values v WHERE v.rid = e.rid AND v.path = ?)"
            args.append(path_key(key))
        terms.append(term + (" DESC" if desc else ""))
    terms.append("e.id")
    return ", ".join(terms), args


class SqliteStore(Store):
    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        self._writer_pool: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_WriteJob] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._readers: list[sqlite3.Connection] = []
        #: Read connection used on the event loop itself for primary-key look-ups,
        #: which cost less than a hop to the reader pool.
        self._loop_conn: sqlite3.Connection | None = None
        self._readers_lock = threading.Lock()
        self._known_tenants: set[str] = {""}
        #: history series numbers, used by the writer thread only
        self._series = sqlhistory.Series()
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        parts = urlsplit(url)
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if path.startswith("/./") or path.startswith("/../"):
            path = path[1:]
        if not path or path == "/":
            raise ValueError("sqlite store URL needs a file path, e.g. sqlite:///./renkei.db")
        opts = parse_qs(parts.query)
        return cls(path, synchronous=opts.get("synchronous", ["NORMAL"])[0])

    # -- lifecycle ----------------------------------------------------------------------------

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.create_function("regexp", 2, _regexp, deterministic=True)
        conn.create_function("geo_match", 2, geo_match)
        conn.create_function("scope_match", 2, scope_match, deterministic=True)
        conn.create_function("q_match", 2, q_match)
        if readonly:
            conn.execute("PRAGMA query_only=1")
        return conn

    def _open_writer(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(readonly=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise InternalError(f"cannot enable WAL on {self.path} (got {mode})")
        conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        conn.executescript(SCHEMA)
        conn.executescript(sqlhistory.SCHEMA)
        self._write_conn = conn
        self._known_tenants.update(r[0] for r in conn.execute("SELECT name FROM tenants"))

    async def open(self) -> None:
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="renkei-sqlite-w")
        self._reader_pool = ThreadPoolExecutor(_READERS, thread_name_prefix="renkei-sqlite-r")
        loop = asyncio.get_running_loop()
        with _driver_errors():
            await loop.run_in_executor(self._writer_pool, self._open_writer)
        self._loop_conn = self._connect(readonly=True)
        self._checkpointer = _Checkpointer(lambda: self._connect(readonly=False))
        self._checkpointer.start()
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._writer_loop(), name="renkei-sqlite-writer")

    async def close(self) -> None:
        if self._writer_task is not None:
            assert self._queue is not None
            await self._queue.join()
            self._writer_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._writer_task
            self._writer_task = None
        loop = asyncio.get_running_loop()
        if self._checkpointer is not None:
            await loop.run_in_executor(None, self._checkpointer.stop)
            self._checkpointer = None
        if self._writer_pool is not None:
            await loop.run_in_executor(self._writer_pool, self._close_writer)
            self._writer_pool.shutdown(wait=True)
            self._writer_pool = None
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
            self._reader_pool = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

    def _close_writer(self) -> None:
        if self._write_conn is not None:
            self._write_conn.execute("PRAGMA optimize")
            self._write_conn.close()
            self._write_conn = None

    # -- plumbing -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_pool is None:
            raise InternalError("store is not open")
        loop = asyncio.get_running_loop()

        def run() -> T:
            with _driver_errors():
                return fn(self._reader())

        return await loop.run_in_executor(self._reader_pool, run)

    async def _exec_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a small write directly on the writer thread (not grouped)."""
        if self._writer_pool is None:
            raise InternalError("store is not open")
        loop = asyncio.get_running_loop()

        def run() -> T:
            assert self._write_conn is not None
            conn = self._write_conn
            with _driver_errors():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

        return await loop.run_in_executor(self._writer_pool, run)

    # -- writes -------------------------------------------------------------------------------

    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        if self._queue is None:
            raise InternalError("store is not open")
        future: asyncio.Future[list[WriteResult]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_WriteJob(tenant, mutations, future, history))
        return await future

    async def _writer_loop(self) -> None:
        assert self._queue is not None
        assert self._writer_pool is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].mutations)
            while not self._queue.empty() and size < _MAX_GROUP:
                job = self._queue.get_nowait()
                jobs.append(job)
                size += len(job.mutations)
            try:
                await asyncio.shield(
                    loop.run_in_executor(self._writer_pool, self._apply_jobs, jobs)
                )
            except Exception as exc:  # the whole group failed (e.g. disk full): fail each job
                error = (
                    exc
                    if isinstance(exc, NgsiLdError)
                    else InternalError(f"store write failed: {exc}")
                )
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            else:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_result(job.results)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    def _apply_jobs(self, jobs: list[_WriteJob]) -> None:
        conn = self._write_conn
        assert conn is not None
        with _driver_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time_ns() // 1000
                if any(job.history for job in jobs):
                    self._apply_each(conn, jobs, now)
                else:
                    try:
                        self._apply_group(conn, jobs, now)
                    except sqlite3.DatabaseError:
                        # Some entity's rows failed (too big, say): redo the group entity by
                        # entity, so that only that entity fails.
                        self._series.forget()
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                        self._apply_each(conn, jobs, now)
                new_tenants = {
                    job.tenant
                    for job in jobs
                    if job.tenant not in self._known_tenants and any(r.ok for r in job.results)
                }
                for name in new_tenants:
                    conn.execute("INSERT OR IGNORE INTO tenants(name) VALUES (?)", (name,))
                conn.execute("COMMIT")
            except BaseException:
                self._series.forget()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._known_tenants.update(new_tenants)
        if self._checkpointer is not None:
            self._checkpointer.wanted()

    def _apply_group(self, conn: sqlite3.Connection, jobs: list[_WriteJob], now: int) -> None:
        """Apply a group of jobs with a few statements per table, not per entity.

        Mutations run in order against each entity's state so far in the group; then
        every entity the group changed is written once in its final state, and the
        history of every step is appended. A mutation that raises leaves its entity as
        it was. Row numbers of new entities (and geometries) continue from the current
        maximum, which is safe because the transaction holds SQLite's write lock."""
        slots: dict[tuple[str, str], _Slot] = {}
        history = sqlhistory.GroupHistory(self.history_policy)
        for job in jobs:
            self._load(conn, job.tenant, {eid for eid, _ in job.mutations}, slots)
            job.results = []
            for eid, mutation in job.mutations:
                slot = slots[(job.tenant, eid)]
                before = orjson.loads(slot.doc) if slot.doc is not None else None
                result = WriteResult(eid, before=before)
                job.results.append(result)
                try:
                    after = mutation(orjson.loads(slot.doc) if slot.doc is not None else None)
                except NgsiLdError as exc:
                    result.error = exc
                    continue
                if after is DELETE:
                    if slot.doc is None:
                        continue
                    history.add(job.tenant, eid, before, None, now)
                    slot.doc = slot.entity = None
                    slot.gone = slot.rid is not None
                else:
                    assert isinstance(after, dict)
                    history.add(job.tenant, eid, before, after, now)
                    slot.doc = _dumps(after)
                    slot.entity = result.after = after
                slot.dirty = True
        unindex: list[int] = []
        removed: list[int] = []
        updated: list[tuple[int, str, str, bytes]] = []
        inserted: list[tuple[int, str, str, bytes]] = []
        indexed: list[tuple[str, int, Entity]] = []
        top: int | None = None
        for (tenant, eid), slot in slots.items():
            if not slot.dirty:
                continue
            if slot.rid is not None:
                unindex.append(slot.rid)
                if slot.gone or slot.entity is None:
                    removed.append(slot.rid)
            if slot.entity is None or slot.doc is None:
                continue
            if slot.rid is not None and not slot.gone:
                updated.append((slot.rid, tenant, eid, slot.doc))
                indexed.append((tenant, slot.rid, slot.entity))
            else:
                if top is None:
                    top = max_id(conn, "entities", "rid")
                top += 1
                inserted.append((top, tenant, eid, slot.doc))
                indexed.append((tenant, top, slot.entity))
        _unindex(conn, unindex)
        where_in(conn, "DELETE FROM entities WHERE rid IN ({})", removed)
        insert_rows(
            conn,
            "INSERT INTO entities(rid, tenant, id, doc)",
            updated,
            "ON CONFLICT(rid) DO UPDATE SET doc=excluded.doc",
        )
        insert_rows(conn, "INSERT INTO entities(rid, tenant, id, doc)", inserted)
        _index(conn, indexed)
        history.write(conn, self._series)

    @staticmethod
    def _load(
        conn: sqlite3.Connection, tenant: str, eids: set[str], slots: dict[tuple[str, str], _Slot]
    ) -> None:
        """Read the stored state of the entities not yet in ``slots``."""
        wanted = [eid for eid in eids if (tenant, eid) not in slots]
        for rid, eid, doc in rows_in(
            conn, "SELECT rid, id, doc FROM entities WHERE tenant=? AND id IN ({})", wanted, tenant
        ):
            slots[(tenant, eid)] = _Slot(rid, doc)
        for eid in wanted:
            slots.setdefault((tenant, eid), _Slot(None, None))

    def _apply_each(self, conn: sqlite3.Connection, jobs: list[_WriteJob], now: int) -> None:
        """Apply jobs entity by entity, each under its own SAVEPOINT."""
        for job in jobs:
            explicit = job.history or {}
            job.results = [
                self._apply_one(conn, job.tenant, eid, m, now, explicit.get(eid))
                for eid, m in job.mutations
            ]

    def _apply_one(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        eid: str,
        mutation: Mutation,
        now: int,
        explicit: Sequence[HistoryRow] | None = None,
    ) -> WriteResult:
        row = conn.execute(
            "SELECT rid, doc FROM entities WHERE tenant=? AND id=?", (tenant, eid)
        ).fetchone()
        before: Entity | None = orjson.loads(row[1]) if row else None
        result = WriteResult(eid, before=before)
        try:
            after = mutation(orjson.loads(row[1]) if row else None)
        except NgsiLdError as exc:
            result.error = exc
            return result
        history = sqlhistory.GroupHistory(
            self.history_policy, replace_observed=explicit is not None
        )
        conn.execute("SAVEPOINT one")
        try:
            if after is DELETE:
                if row is not None:
                    _unindex(conn, [row[0]])
                    conn.execute("DELETE FROM entities WHERE rid=?", (row[0],))
                    history.add(tenant, eid, before, None, now)
            else:
                assert isinstance(after, dict)
                doc = _dumps(after)
                if row is None:
                    cur = conn.execute(
                        "INSERT INTO entities(tenant, id, doc) VALUES (?,?,?)", (tenant, eid, doc)
                    )
                    rid = cur.lastrowid
                    assert rid is not None
                else:
                    rid = row[0]
                    conn.execute("UPDATE entities SET doc=? WHERE rid=?", (doc, rid))
                    _unindex(conn, [rid])
                _index(conn, [(tenant, rid, after)])
                history.add(tenant, eid, before, after, now, explicit)
                result.after = after
            history.write(conn, self._series)
        except sqlite3.DatabaseError as exc:
            self._series.forget()
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            result.after = None
            result.error = InternalError(f"store error for {eid}: {exc}")
            return result
        conn.execute("RELEASE one")
        return result

    # -- reads --------------------------------------------------------------------------------

    async def tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True

        def fn(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM tenants WHERE name=?", (tenant,)).fetchone() is not None
            )

        found = await self._read(fn)
        if found:
            self._known_tenants.add(tenant)
        return found

    async def tenants(self) -> list[str]:
        def fn(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT name FROM tenants ORDER BY name")]

        return await self._read(fn)

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        if self._loop_conn is None:
            raise InternalError("store is not open")
        with _driver_errors():
            row = self._loop_conn.execute(
                "SELECT doc FROM entities WHERE tenant=? AND id=?", (tenant, entity_id)
            ).fetchone()
        return orjson.loads(row[0]) if row else None

    def _where(self, tenant: str, query: EntityQuery, sql: SqlBuilder) -> tuple[str, list[Any]]:
        selection, selection_args = selection_sql(
            query,
            tenant,
            id_column="e.id",
            type_probe="EXISTS (SELECT 1 FROM entity_types t "
            "WHERE t.tenant=? AND t.type=? AND t.rid=e.rid)",
        )
        clauses = ["e.tenant = ?", *selection]
        args: list[Any] = [tenant, *selection_args]
        if query.attrs:
            marks = ",".join("?" * len(query.attrs))
            clauses.append(
                "EXISTS (SELECT 1 FROM entity_attrs a WHERE a.tenant=? AND a.rid=e.rid "
                f"AND a.attr IN ({marks}))"
            )
            args.extend([tenant, *query.attrs])
        for part, node in (("q", query.q), ("scope", query.scope_q), ("geo", query.geo)):
            if node is None:
                continue
            sql.args = []
            if part == "q":
                clauses.append(sql.q(node))
            elif part == "scope":
                clauses.append(sql.scope(node))
            else:
                clauses.append(sql.geo(node))
            args.extend(sql.args)
        return " AND ".join(clauses), args

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        sql = SqlBuilder(tenant)
        where, args = self._where(tenant, query, sql)
        try:
            return await self._read(self._query_fn(where, args, query))
        finally:
            sql.release()

    @staticmethod
    def _query_fn(
        where: str, args: list[Any], query: EntityQuery
    ) -> Callable[[sqlite3.Connection], tuple[list[Entity], int | None]]:
        order, order_args = _order_by(query)

        def fn(conn: sqlite3.Connection) -> tuple[list[Entity], int | None]:
            rows = conn.execute(
                f"SELECT e.doc FROM entities e WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, *order_args, query.limit, query.offset],
            ).fetchall()
            total = None
            if query.count:
                total = conn.execute(
                    f"SELECT count(*) FROM entities e WHERE {where}", args
                ).fetchone()[0]
            return [orjson.loads(r[0]) for r in rows], total

        return fn

    async def discovery(self, tenant: str) -> Discovery:
        def fn(conn: sqlite3.Connection) -> Discovery:
            types = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT type, count(*) FROM entity_types WHERE tenant=? GROUP BY type",
                    (tenant,),
                )
            }
            attributes = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT attr, count(DISTINCT rid) FROM entity_attrs WHERE tenant=? GROUP BY attr",
                    (tenant,),
                )
            }
            pairs: dict[tuple[str, str], set[str]] = {}
            rows = conn.execute(
                "SELECT DISTINCT t.type, a.attr, a.kind FROM entity_types t "
                "JOIN entity_attrs a ON a.rid = t.rid WHERE t.tenant=?",
                (tenant,),
            )
            for type_, attr, kind in rows:
                pairs.setdefault((type_, attr), set()).add(kind)
            return Discovery(types=types, attributes=attributes, type_attributes=pairs)

        return await self._read(fn)

    # -- subscriptions ------------------------------------------------------------------------

    async def put_subscription(self, tenant: str, sub: dict[str, Any], *, create: bool) -> None:
        sub_id = sub["id"]
        doc = _dumps(sub)

        def fn(conn: sqlite3.Connection) -> None:
            if create:
                try:
                    conn.execute(
                        "INSERT INTO subscriptions(tenant, id, seq, doc) VALUES "
                        "(?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM subscriptions), ?)",
                        (tenant, sub_id, doc),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"subscription {sub_id} already exists") from None
                conn.execute("INSERT OR IGNORE INTO tenants(name) VALUES (?)", (tenant,))
            elif (
                conn.execute(
                    "UPDATE subscriptions SET doc=? WHERE tenant=? AND id=?", (doc, tenant, sub_id)
                ).rowcount
                == 0
            ):
                raise ResourceNotFound(f"subscription {sub_id} not found")

        await self._exec_write(fn)
        if create:
            self._known_tenants.add(tenant)

    @staticmethod
    def _subscription(row: Any) -> dict[str, Any]:
        sub: dict[str, Any] = orjson.loads(row[0])
        status = {"timesSent": row[1], "timesFailed": row[2]}
        for key, value in zip(
            ("lastNotification", "lastSuccess", "lastFailure"), row[3:6], strict=True
        ):
            if value is not None:
                status[key] = value
        sub["notificationStatus"] = status
        return sub

    _SUB_COLUMNS = "doc, times_sent, times_failed, last_notification, last_success, last_failure"

    async def get_subscription(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                f"SELECT {self._SUB_COLUMNS} FROM subscriptions WHERE tenant=? AND id=?",
                (tenant, sub_id),
            ).fetchone()
            return self._subscription(row) if row else None

        return await self._read(fn)

    async def list_subscriptions(self, tenant: str) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {self._SUB_COLUMNS} FROM subscriptions WHERE tenant=? ORDER BY seq",
                (tenant,),
            )
            return [self._subscription(r) for r in rows]

        return await self._read(fn)

    async def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "DELETE FROM subscriptions WHERE tenant=? AND id=?", (tenant, sub_id)
                ).rowcount
                > 0
            )

        return await self._exec_write(fn)

    async def record_notifications(self, records: Sequence[NotificationRecord]) -> None:
        rows = [
            (
                r.sent,
                r.failed,
                r.last_notification,
                r.last_success,
                r.last_failure,
                r.tenant,
                r.sub_id,
            )
            for r in records
        ]

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE subscriptions SET times_sent = times_sent + ?, times_failed = times_failed + ?, "
                "last_notification = coalesce(?, last_notification), "
                "last_success = coalesce(?, last_success), last_failure = coalesce(?, last_failure) "
                "WHERE tenant=? AND id=?",
                rows,
            )

        await self._exec_write(fn)

    async def claim_notification(
        self, tenant: str, sub_id: str, *, now: float, min_gap: float
    ) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE subscriptions SET last_claim = ? WHERE tenant=? AND id=? "
                    "AND (last_claim IS NULL OR last_claim <= ?)",
                    (now, tenant, sub_id, now - min_gap),
                ).rowcount
                == 1
            )

        return await self._exec_write(fn)

    # -- contexts -----------------------------------------------------------------------------

    @staticmethod
    def _record(row: Any) -> ContextRecord:
        return ContextRecord(
            id=row[0],
            url=row[1],
            kind=row[2],
            document=orjson.loads(row[3]),
            created_at=row[4],
            last_usage=row[5],
            hits=row[6],
        )

    async def put_context(self, record: ContextRecord) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO contexts(id, url, kind, doc, created_at, last_usage, hits) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    record.id,
                    record.url,
                    record.kind,
                    _dumps(record.document),
                    record.created_at,
                    record.last_usage,
                    record.hits,
                ),
            )

        await self._exec_write(fn)

    async def get_context(self, context_id: str) -> ContextRecord | None:
        def fn(conn: sqlite3.Connection) -> ContextRecord | None:
            row = conn.execute(
                "SELECT id, url, kind, doc, created_at, last_usage, hits FROM contexts WHERE id=?",
                (context_id,),
            ).fetchone()
            return self._record(row) if row else None

        return await self._read(fn)

    async def list_contexts(self) -> list[ContextRecord]:
        def fn(conn: sqlite3.Connection) -> list[ContextRecord]:
            rows = conn.execute(
                "SELECT id, url, kind, doc, created_at, last_usage, hits FROM contexts ORDER BY created_at"
            )
            return [self._record(r) for r in rows]

        return await self._read(fn)

    async def delete_context(self, context_id: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM contexts WHERE id=?", (context_id,)).rowcount > 0

        return await self._exec_write(fn)

    # -- attribute history ----------------------------------------------------------------------

    async def history_entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None = None
    ) -> tuple[list[HistoryEntity], int | None]:
        return await self._read(lambda conn: sqlhistory.entities(conn, tenant, query, window))

    async def history(self, tenant: str, entity_ids: Sequence[str], query: HistoryQuery) -> History:
        return await self._read(lambda conn: sqlhistory.history(conn, tenant, entity_ids, query))

    async def aggregate_history(
        self,
        tenant: str,
        entity_ids: Sequence[str],
        query: HistoryQuery,
        methods: Sequence[str],
        period: Duration | None,
    ) -> Aggregates:
        return await self._read(
            lambda conn: sqlhistory.aggregate(conn, tenant, entity_ids, query, methods, period)
        )

    async def delete_history(
        self,
        tenant: str,
        entity_id: str,
        *,
        attr: str | None = None,
        dataset_id: Any = ANY_DATASET,
        instance_id: str | None = None,
    ) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            try:
                return sqlhistory.delete(
                    conn,
                    tenant,
                    entity_id,
                    attr=attr,
                    dataset_id=dataset_id,
                    instance_id=instance_id,
                )
            finally:
                self._series.forget()  # on the writer thread, like every use of it

        return await self._exec_write(fn)

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        return await self._exec_write(
            lambda conn: sqlhistory.replace(conn, tenant, entity_id, attr, instance_id, row)
        )

    async def expire_history(self, now: int) -> int:
        return await self._exec_write(
            lambda conn: sqlhistory.expire(conn, self.history_policy, now)
        )
