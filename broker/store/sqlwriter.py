"""The SQLite store's writer: the one connection that writes, and what it is sent.

The writer is sent data, never code. For each entity of a write it gets the stored
document the caller's mutations started from (``expect``, None for no entity) and
the states they produced (``steps``, None for a deletion). It applies the steps only
if the stored document still equals ``expect``; otherwise it answers with the stored
document (:class:`Conflict`) and the caller runs its mutations again on that, as the
MongoDB backend does. Comparing whole documents is exact: a mutation is a pure
function of the document it is given.

Because it is sent data, the writer can live in a process of its own, the default
(``python -c`` running :func:`main`, spoken to over a socket pair). The event
loop and the writer then each have a CPU core, where two threads of one process
would take turns holding the interpreter lock. ``?writer=thread`` keeps it in a
thread of the serving process instead (one process, no start-up cost).

What a client is told when the writer process dies (see :class:`ProcessWriter`):

* a write it was acknowledged (2xx) is committed: nothing acknowledged is lost;
* a write that committed before the death is acknowledged (2xx), not failed, when
  the stored documents show it committed, which is the normal case (:func:`settle`);
* any other write in flight fails at once with 503 ``StoreUnavailable`` and a
  ``Retry-After``. Its detail says whether nothing of it was written (a retry is
  safe) or its outcome is unknown (small writes such as subscriptions, or an entity
  another server changed meanwhile): a retried create may then answer 409
  ``AlreadyExists``, which means the first attempt did store the entity;
* one replacement writer starts at once; until it is open, ``/health`` answers 503
  with the reason, and new writes wait for it (at most ``REPLACE_WAIT`` seconds, then
  503).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import signal
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson

from broker.errors import BadRequestData, InternalError, NgsiLdError, StoreUnavailable
from broker.model.entity import ENTITY_KEYS, Entity, expires_us
from broker.model.history import HistoryPolicy, HistoryRow
from broker.query.patterns import search
from broker.store import sqlhistory, sqlschema
from broker.store.index import value_rows
from broker.store.sqlbatch import insert_rows, max_id, rows_in, where_in
from broker.store.sqlhistory import StoredRow
from broker.store.sqlindex import geo_match, geo_rows, q_match, scope_match

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
-- transient entities (expiresAt): when each expires, in µs
CREATE TABLE IF NOT EXISTS entity_expiry(rid INTEGER PRIMARY KEY, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS entity_expiry_at ON entity_expiry(at);
CREATE TABLE IF NOT EXISTS entity_scopes(
    tenant TEXT NOT NULL, scope TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY(tenant, scope, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_scopes_rid ON entity_scopes(rid);
-- one row per comparable value (or presence) of each attribute path: see index.py
CREATE TABLE IF NOT EXISTS attr_values(
    tenant TEXT NOT NULL, path TEXT NOT NULL, rid INTEGER NOT NULL, kind INTEGER NOT NULL,
    b INTEGER, num, str TEXT, dt INTEGER, day INTEGER, tod INTEGER
);
-- Queries only probe an entity's rows (rid, then path): keyed by rid, an entity's rows
-- are appended together, where a (path, rid) key put them on a page per path.
CREATE INDEX IF NOT EXISTS attr_values_key ON attr_values(rid, path);
DROP INDEX IF EXISTS attr_values_path;
DROP INDEX IF EXISTS attr_values_num;
DROP INDEX IF EXISTS attr_values_str;
DROP INDEX IF EXISTS attr_values_dt;
DROP INDEX IF EXISTS attr_values_rid;
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
    last_success_code INTEGER, last_failure_reason TEXT,
    fails_counter INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(tenant, id)
);
CREATE TABLE IF NOT EXISTS registrations(
    tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    doc BLOB NOT NULL,
    times_sent INTEGER NOT NULL DEFAULT 0, times_failed INTEGER NOT NULL DEFAULT 0,
    last_notification TEXT, last_success TEXT, last_failure TEXT,
    PRIMARY KEY(tenant, kind, id)
);
-- facts about this store's hub kept across restarts (its name in Via, ...)
CREATE TABLE IF NOT EXISTS hub_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notification_outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL, sub_id TEXT NOT NULL, data BLOB NOT NULL
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

#: WAL pages after which a commit checkpoints by itself (the store's checkpointer
#: normally keeps the WAL far below this); and the size the WAL file is cut back to.
_AUTOCHECKPOINT_PAGES = 16384
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


class IndexRows(NamedTuple):
    """An entity's side-table rows, without its row number (see :func:`index_rows`)."""

    types: list[str]
    attrs: list[tuple[str, str]]
    scopes: list[str]
    values: list[tuple[Any, ...]]
    shapes: list[tuple[str, bytes, tuple[float, float, float, float]]]
    #: when a transient entity expires (µs), else None
    expires: int | None = None


def index_rows(ent: Entity) -> IndexRows:
    """The rows queries use for ``ent``. They depend on nothing stored, so the
    sender computes them, off the writer's serial path."""
    return IndexRows(
        list(ent["type"]),
        [
            (k, inst.get("type", "Property"))
            for k, instances in ent.items()
            if k not in ENTITY_KEYS
            for inst in instances
        ],
        list(ent.get("scope") or ()),
        value_rows(ent),
        [(g.path, g.wkb, g.bounds) for g in geo_rows(ent)],
        expires_us(ent),
    )


class Item(NamedTuple):
    """One entity of a write job: the document its steps start from, the steps, the
    index rows of the last step (None when it deletes, or there are no steps) and the
    history rows of each step (None: the writer works them out)."""

    eid: str
    expect: bytes | None
    steps: list[bytes | None]
    rows: IndexRows | None = None
    history: list[list[StoredRow]] | None = None

    @property
    def leaves(self) -> bytes | None:
        """The document the entity has once this item is applied."""
        return self.steps[-1] if self.steps else self.expect


class Job(NamedTuple):
    """One write request: entities of one tenant, and the temporal API's explicit rows."""

    tenant: str
    items: list[Item]
    explicit: Mapping[str, Sequence[HistoryRow]] | None = None


class Conflict(NamedTuple):
    """The stored document differed from ``expect``: here it is, to try again on."""

    current: bytes | None


class Unknown(NamedTuple):
    """The writer died before answering, and what is stored does not tell whether
    this item was applied (see :func:`settle`): the caller answers 503."""

    reason: str


#: Per item: None (applied, or ``expect`` confirmed when there are no steps), a
#: Conflict, Unknown, or the message of a store error that failed this entity alone.
Outcome = Conflict | Unknown | str | None


def _regexp(pattern: str, value: str | None) -> bool:
    return value is not None and search(pattern, value)


# Python 3.11's sqlite3 binds int, float and str at once, but sends None and bytes
# through its adaptation protocol first, whose failed attribute look-ups format an
# AttributeError message for every such parameter, and most index and history rows
# are mostly NULL. Identity adapters end that search at its first step (the adapter
# registry) with the same values bound: 13% fewer instructions per entity written
# (callgrind, the writer alone, groups of 16).
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # {}.get(None)
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b


#: Page cache per connection, in KiB: readers keep much of the store in memory. The
#: connections that write keep less, because a commit can walk the whole cache: after
#: a b-tree split (which renumbers pages through a temporary number past the end),
#: SQLite's commit drops any cached page past the end by scanning every slot of the
#: cache's hash table. With 64 MiB that scan cost the writer ~8% of its CPU on
#: single-entity creates; the writer mostly touches the right edges of its indexes,
#: which a few MiB hold.
_READER_CACHE_KIB = 65536
_WRITER_CACHE_KIB = 8192


def connect(path: str, synchronous: str, *, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA cache_size=-{_READER_CACHE_KIB if readonly else _WRITER_CACHE_KIB}")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.create_function("regexp", 2, _regexp, deterministic=True)
    conn.create_function("geo_match", 2, geo_match)
    conn.create_function("scope_match", 2, scope_match, deterministic=True)
    conn.create_function("q_match", 2, q_match)
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


#: SQLite's messages for a statement beyond its own limits (sqlite3.c, "too large",
#: "too many", "too complex", "too big"): the request asked too much, not a fault.
_LIMITS = (
    "expression tree is too large",
    "too many sql variables",
    "too many terms",
    "too many columns",
    "too many from clause terms",
    "too many arguments on function",
    "parser stack overflow",
    "pattern too complex",
    "string or blob too big",
)


@contextmanager
def driver_errors() -> Iterator[None]:
    """Translate sqlite3 errors at the boundary of this backend.

    A request beyond SQLite's limits (a statement too large, an integer beyond 64 bits)
    is the client's to change: 400, saying which limit.
    """
    try:
        yield
    except OverflowError as exc:  # sqlite3 binds integers of at most 64 bits
        raise BadRequestData(f"a number is beyond the store's 64-bit integers: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if any(limit in text.lower() for limit in _LIMITS):
            raise BadRequestData(
                f"the request is beyond the store's limits ({text}): use fewer terms"
            ) from exc
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            raise StoreUnavailable(f"database busy: {exc}") from exc
        raise InternalError(f"store error: {exc}") from exc


@dataclass(slots=True)
class _Slot:
    """An entity during a group write: its stored row (``rid``) and its state so far."""

    rid: int | None
    doc: bytes | None
    rows: IndexRows | None = None
    dirty: bool = False  # written in this group
    gone: bool = False  # its stored row was deleted in this group


def _unindex(conn: sqlite3.Connection, rids: Sequence[int]) -> None:
    if not rids:
        return
    for table in ("entity_types", "entity_attrs", "entity_scopes", "attr_values", "entity_expiry"):
        where_in(conn, f"DELETE FROM {table} WHERE rid IN ({{}})", rids)
    where_in(
        conn,
        "DELETE FROM geo_rtree WHERE id IN (SELECT id FROM geo_shapes WHERE rid IN ({}))",
        rids,
    )
    where_in(conn, "DELETE FROM geo_shapes WHERE rid IN ({})", rids)


def _index(conn: sqlite3.Connection, items: Sequence[tuple[str, int, IndexRows]]) -> None:
    """Write the side-table rows queries use for these (tenant, rid, rows)."""
    if not items:
        return
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_types(tenant, type, rid)",
        [(tenant, t, rid) for tenant, rid, rows in items for t in rows.types],
    )
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_attrs(tenant, attr, rid, kind)",
        [(tenant, k, rid, kind) for tenant, rid, rows in items for k, kind in rows.attrs],
    )
    insert_rows(
        conn,
        "INSERT OR REPLACE INTO entity_expiry(rid, at)",
        [(rid, rows.expires) for _, rid, rows in items if rows.expires is not None],
    )
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO entity_scopes(tenant, scope, rid)",
        [(tenant, sc, rid) for tenant, rid, rows in items for sc in rows.scopes],
    )
    insert_rows(
        conn,
        "INSERT INTO attr_values(tenant, path, rid, kind, b, num, str, dt, day, tod)",
        [(tenant, v[0], rid, *v[1:]) for tenant, rid, rows in items for v in rows.values],
    )
    shapes = [(tenant, rid, g) for tenant, rid, rows in items for g in rows.shapes]
    if not shapes:
        return
    top = max_id(conn, "geo_shapes", "id")
    insert_rows(
        conn,
        "INSERT INTO geo_shapes(id, tenant, path, rid, geom)",
        [(top + i, tenant, g[0], rid, g[1]) for i, (tenant, rid, g) in enumerate(shapes, 1)],
    )
    insert_rows(
        conn,
        "INSERT INTO geo_rtree(id, minx, maxx, miny, maxy)",
        [(top + i, g[2][0], g[2][2], g[2][1], g[2][3]) for i, (_, _, g) in enumerate(shapes, 1)],
    )


def _loads(doc: bytes | None) -> Entity | None:
    return orjson.loads(doc) if doc is not None else None


def _record(
    history: sqlhistory.GroupHistory,
    tenant: str,
    item: Item,
    start: bytes | None,
    now: int,
    explicit: Sequence[HistoryRow] | None = None,
) -> None:
    """Add the history of each of ``item``'s steps, from the stored ``start``: the rows
    the sender worked out, or the temporal API's ``explicit`` ones for a step that
    leaves the entity."""
    before = _loads(start)
    for k, step in enumerate(item.steps):
        after = _loads(step)
        if explicit is not None and after is not None:
            history.add(tenant, item.eid, before, after, now, explicit)
        else:
            changed = item.history[k] if item.history is not None else None
            history.add(tenant, item.eid, before, after, now, changed=changed)
        before = after


class Writer:
    """Owns the write connection. Concurrent writes reach it in groups: every waiting
    request in one transaction (group commit), with one statement per table for the
    whole group. Should a statement fail, the group is redone entity by entity, each
    under its own SAVEPOINT, so that only the entity at fault fails."""

    def __init__(self, path: str, synchronous: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with driver_errors():
            conn = connect(path, synchronous, readonly=False)
            sqlschema.upgrade(conn, path)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InternalError(f"cannot enable WAL on {path} (got {mode})")
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            conn.executescript(SCHEMA)
            conn.executescript(sqlhistory.SCHEMA)
            self.known_tenants = {""} | {r[0] for r in conn.execute("SELECT name FROM tenants")}
        self.conn = conn
        #: history series numbers handed out by this connection
        self.series = sqlhistory.Series()
        #: SQLite's count of commits by other connections, as of this one's last write
        self._data_version = self._other_commits()

    def _other_commits(self) -> int:
        version: int = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _begin(self) -> None:
        """Start a write transaction. Where another connection (another server on the
        same file) has committed since this one last wrote, it may have deleted history
        series: the numbers remembered here go."""
        self.conn.execute("BEGIN IMMEDIATE")
        version = self._other_commits()
        if version != self._data_version:
            self._data_version = version
            self.series.forget()

    def close(self) -> None:
        with driver_errors():
            self.conn.execute("PRAGMA optimize")
            self.conn.close()

    def call(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        forget: bool = False,
    ) -> Any:
        """``fn(conn, *args, **kwargs)`` in a transaction of its own (a small write).
        ``forget``: ``fn`` may delete history series, so the cached numbers go."""
        conn = self.conn
        with driver_errors():
            self._begin()
            try:
                result = fn(conn, *args, **kwargs)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                if forget:
                    self.series.forget()
            conn.execute("COMMIT")
        return result

    def apply(self, jobs: Sequence[Job], policy: HistoryPolicy) -> list[list[Outcome]]:
        """Apply a group of jobs in one transaction; an outcome per item of each job."""
        conn = self.conn
        with driver_errors():
            self._begin()
            try:
                now = time.time_ns() // 1000
                try:
                    outcomes = self._apply_group(jobs, policy, now)
                except sqlite3.DatabaseError:
                    # Some entity's rows failed (too big, say): redo the group entity by
                    # entity, so that only that entity fails.
                    self.series.forget()
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                    outcomes = self._apply_each(jobs, policy, now)
                new_tenants = {
                    job.tenant
                    for job, outs in zip(jobs, outcomes, strict=True)
                    if job.tenant not in self.known_tenants
                    and any(o is None and it.steps for it, o in zip(job.items, outs, strict=True))
                }
                for name in new_tenants:
                    conn.execute("INSERT OR IGNORE INTO tenants(name) VALUES (?)", (name,))
                conn.execute("COMMIT")
            except BaseException:
                self.series.forget()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self.known_tenants.update(new_tenants)
        return outcomes

    def _apply_group(
        self, jobs: Sequence[Job], policy: HistoryPolicy, now: int
    ) -> list[list[Outcome]]:
        """Apply a group of jobs with a few statements per table, not per entity.

        Items are checked in order against each entity's state so far in the group;
        then every entity the group changed is written once in its final state, and
        the history of every step is appended. Row numbers of new entities (and
        geometries) continue from the current maximum, which is safe because the
        transaction holds SQLite's write lock."""
        conn = self.conn
        slots: dict[tuple[str, str], _Slot] = {}
        history = sqlhistory.GroupHistory(policy)
        outcomes: list[list[Outcome]] = []
        for job in jobs:
            tenant = job.tenant
            explicit = job.explicit or {}
            self._load(tenant, {it.eid for it in job.items}, slots)
            outs: list[Outcome] = []
            outcomes.append(outs)
            for it in job.items:
                slot = slots[(tenant, it.eid)]
                if slot.doc != it.expect:
                    outs.append(Conflict(slot.doc))
                    continue
                outs.append(None)
                if not it.steps:
                    continue
                _record(history, tenant, it, slot.doc, now, explicit.get(it.eid))
                slot.doc = it.leaves
                slot.rows = it.rows if slot.doc is not None else None
                if slot.doc is None:
                    slot.gone = slot.rid is not None
                slot.dirty = True
        unindex: list[int] = []
        removed: list[int] = []
        updated: list[tuple[int, str, str, bytes]] = []
        inserted: list[tuple[int, str, str, bytes]] = []
        indexed: list[tuple[str, int, IndexRows]] = []
        top: int | None = None
        for (tenant, eid), slot in slots.items():
            if not slot.dirty:
                continue
            if slot.rid is not None:
                unindex.append(slot.rid)
                if slot.gone or slot.doc is None:
                    removed.append(slot.rid)
            if slot.doc is None:
                continue
            rows = slot.rows
            assert rows is not None  # sent with every item that leaves a document
            if slot.rid is not None and not slot.gone:
                updated.append((slot.rid, tenant, eid, slot.doc))
                indexed.append((tenant, slot.rid, rows))
            else:
                if top is None:
                    top = max_id(conn, "entities", "rid")
                top += 1
                inserted.append((top, tenant, eid, slot.doc))
                indexed.append((tenant, top, rows))
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
        history.write(conn, self.series)
        return outcomes

    def _load(self, tenant: str, eids: set[str], slots: dict[tuple[str, str], _Slot]) -> None:
        """Read the stored state of the entities not yet in ``slots``."""
        wanted = [eid for eid in eids if (tenant, eid) not in slots]
        for rid, eid, doc in rows_in(
            self.conn,
            "SELECT rid, id, doc FROM entities WHERE tenant=? AND id IN ({})",
            wanted,
            tenant,
        ):
            slots[(tenant, eid)] = _Slot(rid, doc)
        for eid in wanted:
            slots.setdefault((tenant, eid), _Slot(None, None))

    def _apply_each(
        self, jobs: Sequence[Job], policy: HistoryPolicy, now: int
    ) -> list[list[Outcome]]:
        """Apply jobs entity by entity, each under its own SAVEPOINT."""
        outcomes: list[list[Outcome]] = []
        for job in jobs:
            explicit = job.explicit or {}
            outcomes.append(
                [
                    self._apply_one(job.tenant, it, policy, now, explicit.get(it.eid))
                    for it in job.items
                ]
            )
        return outcomes

    def _apply_one(
        self,
        tenant: str,
        item: Item,
        policy: HistoryPolicy,
        now: int,
        explicit: Sequence[HistoryRow] | None,
    ) -> Outcome:
        conn = self.conn
        row = conn.execute(
            "SELECT rid, doc FROM entities WHERE tenant=? AND id=?", (tenant, item.eid)
        ).fetchone()
        current: bytes | None = row[1] if row else None
        if current != item.expect:
            return Conflict(current)
        if not item.steps:
            return None
        history = sqlhistory.GroupHistory(policy)
        conn.execute("SAVEPOINT one")
        try:
            _record(history, tenant, item, current, now, explicit)
            final = item.steps[-1]
            if final is None:
                if row is not None:
                    _unindex(conn, [row[0]])
                    conn.execute("DELETE FROM entities WHERE rid=?", (row[0],))
            else:
                if row is None:
                    cur = conn.execute(
                        "INSERT INTO entities(tenant, id, doc) VALUES (?,?,?)",
                        (tenant, item.eid, final),
                    )
                    rid = cur.lastrowid
                    assert rid is not None
                else:
                    rid = row[0]
                    conn.execute("UPDATE entities SET doc=? WHERE rid=?", (final, rid))
                    _unindex(conn, [rid])
                assert item.rows is not None  # sent with every item that leaves a document
                _index(conn, [(tenant, rid, item.rows)])
            history.write(conn, self.series)
        except sqlite3.DatabaseError as exc:
            self.series.forget()
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            return f"store error for {item.eid}: {exc}"
        conn.execute("RELEASE one")
        return None


class Host:
    """Runs the requests sent to a writer: ``("open", path, synchronous)``,
    ``("apply", jobs, policy)``, ``("call", fn, args, kwargs, forget)`` and ``("close",)``."""

    def __init__(self) -> None:
        self.writer: Writer | None = None

    def handle(self, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "open":
            self.writer = Writer(request[1], request[2])
            return None
        if self.writer is None:
            raise InternalError("store is not open")
        if op == "apply":
            return self.writer.apply(request[1], request[2])
        if op == "call":
            return self.writer.call(request[1], request[2], request[3], forget=request[4])
        if op == "close":
            self.writer.close()
            self.writer = None
            return None
        raise InternalError(f"unknown writer request {op!r}")


class ThreadWriter:
    """The writer in this process, on a thread of its own."""

    def __init__(self) -> None:
        self.host = Host()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="renkei-sqlite-w")

    async def request(self, request: tuple[Any, ...]) -> Any:
        return await asyncio.wrap_future(self._pool.submit(self.host.handle, request))

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)


#: The child's program. Not ``-m``: this module must be imported under its own name,
#: or what it pickles would name ``__main__``.
_CHILD = "from broker.store.sqlwriter import main; main()"
#: where the ``broker`` package is, for the child's import path
_ROOT = str(Path(__file__).resolve().parents[2])
#: message framing of ``multiprocessing.connection.Connection``, which the child uses
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")


class _Child:
    """One writer process and the requests sent to it, each under its id.

    Its answers are matched to requests by id, so an answer can never settle another
    request, and each child has its own table of requests: when it ends, exactly the
    requests sent to it are settled (see :func:`settle`), never one sent to the next."""

    def __init__(
        self, proc: asyncio.subprocess.Process, requests: socket.socket, answers: socket.socket
    ) -> None:
        self.proc = proc
        self._requests = requests
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="renkei-sqlite-send")
        self._answers_sock = answers
        self._answers: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        #: request id -> (request, its future), for the requests not yet answered
        self.waiting: dict[int, tuple[tuple[Any, ...], asyncio.Future[Any]]] = {}
        #: the ``open`` request it was sent: where to look when it dies mid-write
        self.opened: tuple[Any, ...] | None = None
        #: set when it is being stopped on purpose: its end is then no failure
        self.closing = False
        #: its socket ended: nothing more can be sent to it
        self.ended = False
        #: called once when it ends without being stopped on purpose
        self.on_end: Callable[[_Child], None] | None = None
        #: done once the process has ended and every request sent to it is settled
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exit_code: int | None = None

    @classmethod
    async def spawn(cls) -> _Child:
        requests, their_requests = socket.socketpair()
        answers, their_answers = socket.socketpair()
        fds = [their_requests.fileno(), their_answers.fileno()]
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _ROOT + (os.pathsep + path if path else "")}
        try:
            with their_requests, their_answers:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _CHILD, *map(str, fds), pass_fds=fds, env=env
                )
        except BaseException:
            requests.close()
            answers.close()
            raise
        child = cls(proc, requests, answers)
        reader, child._answers = await asyncio.open_unix_connection(sock=answers, limit=1 << 20)
        child._reader = asyncio.create_task(child._receive(reader), name="renkei-sqlite-answers")
        return child

    def send(self, rid: int, request: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Send ``request`` under the id ``rid``; the future gets its answer."""
        if self.ended:
            raise StoreUnavailable("the store's writer process stopped; the write was not sent")
        if request[0] == "open":
            self.opened = request
        data = pickle.dumps((rid, request), protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > 0x7FFFFFFF:
            head = _LENGTH.pack(-1) + _LONG_LENGTH.pack(len(data))
        else:
            head = _LENGTH.pack(len(data))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = (request, future)
        self._sender.submit(_send_all, self._requests, head + data)
        return future

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        cause: BaseException | None = None
        try:
            while True:
                (size,) = _LENGTH.unpack(await reader.readexactly(4))
                if size == -1:
                    (size,) = _LONG_LENGTH.unpack(await reader.readexactly(8))
                rid, tag, value = pickle.loads(await reader.readexactly(size))
                entry = self.waiting.pop(rid, None)
                if entry is None:
                    log.error("the store's writer answered request %s, which is not waiting", rid)
                    continue
                future = entry[1]
                if future.done():  # its caller gave up waiting
                    continue
                if tag == "error":
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (asyncio.IncompleteReadError, OSError) as exc:  # its end
            cause = exc
        except Exception as exc:  # an answer that cannot be read: this child cannot go on
            log.exception("reading the store writer's answers failed")
            cause = exc
        await self._end(cause)

    async def _end(self, cause: BaseException | None) -> None:
        """After its answers socket ended: see that the process has ended, then settle
        every request it had not answered."""
        self.ended = True
        try:
            if not self.closing and self.on_end is not None:
                self.on_end(self)  # the replacement starts now, beside what follows
            if self._answers is not None:
                self._answers.close()
            with suppress(OSError):
                self._requests.shutdown(socket.SHUT_RDWR)  # also wakes a blocked sendall
            await asyncio.get_running_loop().run_in_executor(None, self._sender.shutdown)
            self._requests.close()
            if not self.closing and self.proc.returncode is None:
                with suppress(ProcessLookupError):
                    self.proc.kill()  # only its socket broke: it must not write on
            try:
                self.exit_code = await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    self.proc.kill()
                self.exit_code = await self.proc.wait()
            if not self.closing:
                log.error(
                    "the store's writer process ended (exit code %s) with %d request(s) "
                    "unanswered; starting another",
                    self.exit_code,
                    len(self.waiting),
                )
            await self._settle(cause)
        finally:
            if not self.settled.done():
                self.settled.set_result(None)

    async def _settle(self, cause: BaseException | None) -> None:
        """The process has ended, so what it committed is on disk and what it had not
        is not. Each group write is answered from the stored documents (see
        :func:`settle`); anything else fails as unknown."""
        waiting = [(req, fut) for req, fut in self.waiting.values() if not fut.done()]
        self.waiting.clear()
        groups = [req[1] for req, _ in waiting if req[0] == "apply"]
        found: list[list[list[Outcome]] | StoreUnavailable] = []
        if groups and self.opened is not None:
            found = await asyncio.to_thread(_settle_all, self.opened[1], self.opened[2], groups)
        if groups:
            lost = sum(isinstance(f, StoreUnavailable) for f in found)
            log.warning(
                "of the %d group write(s) it had not answered, %d committed and %d failed",
                len(groups),
                len(found) - lost,
                lost,
            )
        answers = iter(found)
        for request, future in waiting:
            answer: Any = (
                next(answers, None)
                if request[0] == "apply" and self.opened is not None
                else StoreUnavailable(
                    "the store's writer process stopped; the write's outcome is unknown"
                )
            )
            if answer is None:
                answer = StoreUnavailable("the store's writer process stopped before opening")
            if isinstance(answer, StoreUnavailable):
                answer.__cause__ = cause
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def close(self) -> None:
        """Stop it on purpose and wait for it to end. Answers first: a child blocked
        on an answer nobody reads would never take the next request."""
        self.closing = True
        if self._answers is not None:
            self._answers.close()
            with suppress(OSError):
                await self._answers.wait_closed()
        if self._reader is not None:
            await self._reader
        else:
            self._answers_sock.close()
            await self._end(None)


class ProcessWriter:
    """The writer in a child process, sent pickled requests over one socket pair and
    answering over another.

    Requests are written by a thread of their own with one blocking ``sendall``: a
    batch's request is larger than a socket buffer, and written from the event loop
    the rest of it would wait while the loop works on the next request, leaving the
    child idle. Answers are read on the event loop. Several requests can be on their
    way while the child works on the first, so it never idles between groups. Each
    request carries an id and its answer the same id: answers are matched by id,
    never by order.

    It ends when its request socket does: when the store closes it, and when this
    process dies, however it dies.

    **When the child dies** (killed, out of memory, a crash):

    * at once, :attr:`unavailable` says why (``/health`` answers 503 with it) and one
      replacement starts (there is only ever one: a second death while it starts is
      handled by the same task, which retries with a growing delay);
    * every request sent to it and not answered is settled as soon as the process has
      ended, with no wait for the replacement: a group write (``apply``) is answered
      from the stored documents (see :func:`settle`): where they show that its
      transaction committed, as if the writer had answered (the client gets its 2xx);
      where they show it did not, with :class:`StoreUnavailable` (503, nothing of it
      was written, a retry is safe); where they cannot tell, with StoreUnavailable
      saying the outcome is unknown. Any other request (subscriptions, contexts,
      history deletion) fails with StoreUnavailable, its outcome unknown;
    * requests that arrive meanwhile wait for the replacement, up to
      :attr:`REPLACE_WAIT` seconds, then fail with StoreUnavailable.

    So no acknowledged write is lost, and no write that committed is reported as
    failed, except where :func:`settle` cannot tell (a retried create may then get
    409 AlreadyExists)."""

    #: seconds a request waits for a replacement writer before failing with 503
    REPLACE_WAIT = 5.0
    #: seconds a new writer process has to start and open the store
    OPEN_TIMEOUT = 30.0

    def __init__(self) -> None:
        #: the child taking requests (started and open), None while it is replaced
        self._child: _Child | None = None
        self._live = asyncio.Event()
        self._replacing: asyncio.Task[None] | None = None
        self._opened: tuple[Any, ...] | None = None
        self._ids = itertools.count(1)
        self._closing = False
        #: why writes cannot be taken now (None: they can)
        self.unavailable: str | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the writer taking requests (None while it is replaced)."""
        return self._child.proc.pid if self._child is not None else None

    async def request(self, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "open":
            self._opened = request
            self._closing = False
            self._adopt(await self._open())
            return None
        if op == "close":
            self._closing = True
            child = self._child
            if child is None:  # nothing open to close
                return None
            child.closing = True
            return await child.send(next(self._ids), request)
        child = self._child
        if child is None:
            child = await self._wait_live()
        return await child.send(next(self._ids), request)

    async def _open(self) -> _Child:
        """A new child, open on the store."""
        assert self._opened is not None
        child = await _Child.spawn()
        try:
            await asyncio.wait_for(child.send(next(self._ids), self._opened), self.OPEN_TIMEOUT)
        except BaseException:
            await child.close()
            raise
        return child

    def _adopt(self, child: _Child) -> None:
        child.on_end = self._ended
        self._child = child
        self.unavailable = None
        self._live.set()

    async def _wait_live(self) -> _Child:
        if self._opened is None or self._closing:
            raise InternalError("store is not open")
        deadline = time.monotonic() + self.REPLACE_WAIT
        while self._child is None:
            try:
                await asyncio.wait_for(self._live.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise StoreUnavailable(
                    self.unavailable or "the store's writer process is being replaced"
                ) from None
        return self._child

    def _ended(self, child: _Child) -> None:
        """A child that took requests ended without being asked to: start one
        replacement, and say why writes wait until it is open."""
        if child is not self._child:
            return
        self._child = None
        self._live.clear()
        if self._closing:
            return
        self.unavailable = "the store's writer process stopped; a new one is starting"
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.create_task(
                self._replace(child), name="renkei-sqlite-replace"
            )

    async def _replace(self, dead: _Child) -> None:
        delay = 0.25
        while not self._closing:
            try:
                child = await self._open()
            except Exception as exc:
                self.unavailable = f"the store's writer process cannot be started: {exc}"
                log.error("%s; trying again in %.2fs", self.unavailable, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            # the dead child's requests are settled from the stored documents first,
            # so no write sent to the new one can change what they find
            await dead.settled
            if self._closing:
                await child.close()
                return
            self._adopt(child)
            log.warning("the store's writer process was replaced (pid %s)", child.proc.pid)
            return

    async def stop(self) -> None:
        """After ``close``: wait for the child to end."""
        self._closing = True
        if self._replacing is not None:
            self._replacing.cancel()
            with suppress(asyncio.CancelledError):
                await self._replacing
            self._replacing = None
        child, self._child = self._child, None
        self._live.clear()
        if child is not None:
            await child.close()


def _send_all(sock: socket.socket, data: bytes) -> None:
    """One blocking write of a whole request (on the sender thread). A child that
    died is noticed by the reader of its answers."""
    with suppress(OSError):
        sock.sendall(data)


def _settle_all(
    path: str, synchronous: str, groups: Sequence[Sequence[Job]]
) -> list[list[list[Outcome]] | StoreUnavailable]:
    """:func:`settle` each group against the stored documents, read once the dead
    writer has ended."""
    found: list[list[list[Outcome]] | StoreUnavailable] = []
    try:
        conn = connect(path, synchronous, readonly=True)
    except sqlite3.Error as exc:
        log.error("cannot read the store to settle unanswered writes: %s", exc)
        return [
            StoreUnavailable("the store's writer process stopped; the write's outcome is unknown")
            for _ in groups
        ]
    try:
        for jobs in groups:
            try:
                stored: dict[tuple[str, str], bytes | None] = {}
                for job in jobs:
                    eids = sorted({it.eid for it in job.items})
                    docs = dict(
                        rows_in(
                            conn,
                            "SELECT id, doc FROM entities WHERE tenant=? AND id IN ({})",
                            eids,
                            job.tenant,
                        )
                    )
                    for eid in eids:
                        stored[(job.tenant, eid)] = docs.get(eid)
                found.append(settle(jobs, stored))
            except StoreUnavailable as exc:
                found.append(exc)
            except sqlite3.Error as exc:
                log.error("cannot read the store to settle unanswered writes: %s", exc)
                found.append(
                    StoreUnavailable("the store's writer process stopped; outcome unknown")
                )
    finally:
        conn.close()
    return found


def settle(
    jobs: Sequence[Job], stored: Mapping[tuple[str, str], bytes | None]
) -> list[list[Outcome]]:
    """The outcomes of a group write whose writer died before answering, told from the
    documents ``stored`` once it had ended (by (tenant, id)); raises StoreUnavailable
    where the group did not commit, or where that cannot be told.

    A group is one transaction: all of it committed or none. Each entity's items, in
    the group's order, chain from the document the first expects to the one the last
    leaves (the serving process sends each write on the state the writes before it
    leave). Where an entity's chain changes its document, the stored one shows the
    transaction's fate: the one it leaves if it committed, the one it expects if not
    (documents carry ``modifiedAt``, so a write's result differs from what it
    replaced). All such entities must agree. An entity that shows neither (another
    server wrote it since, or its chain is broken by a wrong guess) gets
    :class:`Unknown` in a committed group."""
    chains: dict[tuple[str, str], list[Item]] = {}
    for job in jobs:
        for it in job.items:
            chains.setdefault((job.tenant, it.eid), []).append(it)
    shown: set[bool] = set()  # what the entities show: committed (True) or not (False)
    applied: dict[tuple[str, str], bool] = {}  # in a committed group: shown applied
    for key, items in chains.items():
        current = stored.get(key)
        first, last = items[0].expect, items[-1].leaves
        chained = all(b.expect == a.leaves for a, b in itertools.pairwise(items))
        if chained and last != first:
            if current == last:
                shown.add(True)
            elif current == first:
                shown.add(False)
            applied[key] = current == last
        else:
            applied[key] = chained and current == first
    if not shown and not any(it.steps for items in chains.values() for it in items):
        # only confirmations: nothing was to be written, so nothing is in doubt
        return [
            [
                None
                if stored.get((job.tenant, it.eid)) == it.expect
                else Conflict(stored.get((job.tenant, it.eid)))
                for it in job.items
            ]
            for job in jobs
        ]
    if shown == {False}:
        raise StoreUnavailable(
            "the store's writer process stopped before this write committed; "
            "nothing of it was written and it can be sent again"
        )
    if shown != {True}:
        raise StoreUnavailable(
            "the store's writer process stopped during this write; its outcome is unknown"
        )
    unknown = Unknown(
        "the store's writer process stopped during this write; its outcome is unknown"
    )
    return [
        [None if applied[(job.tenant, it.eid)] else unknown for it in job.items] for job in jobs
    ]


def serve(requests: Connection, answers: Connection) -> None:
    """The child's loop: a request in, its result (or exception) out under the
    request's id, until the request socket ends."""
    host = Host()
    try:
        while True:
            try:
                rid, request = requests.recv()
            except (EOFError, OSError):
                return
            try:
                reply: tuple[int, str, Any] = (rid, "ok", host.handle(request))
            except NgsiLdError as exc:
                reply = (rid, "error", exc)
            except Exception as exc:  # anything else reaches the caller as a 500
                log.exception("store writer request failed")
                reply = (rid, "error", InternalError(f"store write failed: {exc}"))
            try:
                try:
                    answers.send(reply)  # pickles it first: nothing is sent when that fails
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    log.exception("store writer answer could not be pickled")
                    answers.send(
                        (rid, "error", InternalError(f"store writer answer unreadable: {exc}"))
                    )
            except (EOFError, OSError):
                return
            if request[0] == "close":
                return
    finally:
        if host.writer is not None:
            host.writer.close()


def main() -> None:
    # Ctrl+C in a terminal reaches the whole process group: the serving process
    # handles it and closes this writer in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So does SIGTERM from systemd (KillMode=control-group) or an init forwarding to the
    # group: the serving process finishes its writes first. This process still ends
    # when the serving one does, however it ends (its request socket closes).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from broker.runtime import tune_gc
    from broker.settings import get_settings

    tune_gc(get_settings().gc_threshold)  # as the serving process does, from the same setting
    serve(Connection(int(sys.argv[1])), Connection(int(sys.argv[2])))
