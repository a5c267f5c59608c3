"""The embedded default store: one SQLite file in WAL mode.

* One writer owns the write connection (``sqlwriter.py``), by default in a process of
  its own so that it has a CPU core beside the event loop's. Mutations run here, on
  the document each entity is believed to have; the writer is sent the states they
  produce, applies them only where that belief holds and otherwise answers with the
  stored document to run them again on (optimistic concurrency). Concurrent writes
  are grouped: every waiting request in one transaction (group commit), with one
  statement per table for the whole group; a rejected entity (its mutation raised)
  is simply not written. A write is acknowledged only after COMMIT.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from broker.errors import (
    AlreadyExists,
    InternalError,
    NgsiLdError,
    ResourceNotFound,
    StoreUnavailable,
)
from broker.model.entity import Entity, live, now_us
from broker.model.history import Duration, HistoryPolicy, HistoryRow, changes
from broker.model.store import (
    ANY_DATASET,
    DELETE,
    Aggregates,
    AnyDataset,
    ContextRecord,
    Create,
    Discovery,
    EntityQuery,
    History,
    HistoryEntity,
    HistoryQuery,
    Mutation,
    NotificationRecord,
    PendingNotification,
    WriteResult,
)
from broker.store import sqlhistory
from broker.store.base import RegistrationKind, Store
from broker.store.index import UNINDEXED_META, geo_window, path_key
from broker.store.sqlbatch import rows_in
from broker.store.sqlhistory import StoredRow, stored_rows
from broker.store.sqlindex import EntityTable, SqlBuilder, selection_sql
from broker.store.sqlwriter import (
    Conflict,
    Item,
    Job,
    Outcome,
    ProcessWriter,
    ThreadWriter,
    Unknown,
    connect,
    driver_errors,
    index_rows,
)

T = TypeVar("T")
log = logging.getLogger("renkei.store")

_MAX_GROUP = 512
#: groups sent to the writer before the first is answered: the next one waits in the
#: socket while the writer works, so it never idles between groups
_IN_FLIGHT = 2
_READERS = 4
#: the current entities, as an entity selection probes them
_ENTITIES = EntityTable(
    tenant_column="e.tenant",
    id_column="e.id",
    type_probe="EXISTS (SELECT 1 FROM entity_types t WHERE t.tenant=? AND t.type=? AND t.rid=e.rid)",
    attr_probe="EXISTS (SELECT 1 FROM entity_attrs a WHERE a.tenant=? AND a.rid=e.rid "
    "AND a.attr IN ({marks}))",
)
#: The same, for a query with a geo window. The R*Tree's candidates in the window are
#: gathered (and checked) first whatever the plan, so the entities are read by those row
#: numbers and sorted, rather than walked in id order (every entity when fewer than a
#: page match): ``+`` keeps SQLite from taking the (tenant, id) index for the walk.
_ENTITIES_IN_WINDOW = replace(_ENTITIES, tenant_column="+e.tenant")
#: the R*Tree's candidates of a geo window (shapes ``g``), as their types probe them
_GEO_CANDIDATES = replace(
    _ENTITIES,
    type_probe="EXISTS (SELECT 1 FROM entity_types t WHERE t.tenant=? AND t.type=? AND t.rid=g.rid)",
)
#: rounds of optimistic retries before a write gives up on an entity
_MAX_ROUNDS = 16
#: stored documents remembered as the likely state for the next write of an entity
_DOC_CACHE = 10_000


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _run(
    eid: str,
    doc: bytes | None,
    mutations: Sequence[tuple[int, Mutation]],
    results: list[WriteResult],
    recorded: Callable[[Entity | None, Entity | None], list[StoredRow]] | None,
) -> tuple[list[bytes | None], Entity | None, list[list[StoredRow]] | None]:
    """Run one entity's mutations in order, starting from ``doc`` (its stored document,
    or None); fill in their results and return the states they produce (None: deleted),
    the last one's entity and the history rows of each. A mutation that raises leaves
    the entity as it was."""
    steps: list[bytes | None] = []
    last: Entity | None = None
    history: list[list[StoredRow]] | None = [] if recorded is not None else None
    for i, mutation in mutations:
        # a transient entity past its expiresAt is gone, even before it is purged
        current = live(orjson.loads(doc)) if doc is not None else None
        result = results[i] = WriteResult(eid, before=current)
        try:
            after = mutation(orjson.loads(doc) if doc is not None and current is not None else None)
        except NgsiLdError as exc:
            result.error = exc
            continue
        if after is DELETE:
            if doc is None:
                continue
            doc = last = None
        else:
            assert isinstance(after, dict)
            doc = _dumps(after)
            result.after = last = after
        steps.append(doc)
        if recorded is not None and history is not None:
            history.append(recorded(result.before, last))
    return steps, last, history


def _changed(
    policy: HistoryPolicy, tenant: str, now: int, before: Entity | None, after: Entity | None
) -> list[StoredRow]:
    """The history rows of one write of an entity, as the writer stores them."""
    ent = after if after is not None else before
    if ent is None or not policy.records(tenant, ent["type"]):
        return []
    return stored_rows(changes(before, after, now))


@dataclass
class _WriteJob:
    job: Job
    future: asyncio.Future[list[Outcome]]
    #: order in which jobs were sent
    seq: int


# Small writes, run by the writer in a transaction of their own (``_exec_write``).


def _rowcount(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """``sql`` for each of ``rows``; the number of rows it changed."""
    return conn.executemany(sql, rows).rowcount


def _put_subscription(
    conn: sqlite3.Connection, tenant: str, sub_id: str, doc: bytes, create: bool
) -> None:
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


def _put_registration(
    conn: sqlite3.Connection, tenant: str, kind: str, reg_id: str, doc: bytes, create: bool
) -> None:
    what = "registration" if kind == "registration" else "context source subscription"
    if create:
        try:
            conn.execute(
                "INSERT INTO registrations(tenant, kind, id, seq, doc) VALUES "
                "(?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM registrations), ?)",
                (tenant, kind, reg_id, doc),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"{what} {reg_id} already exists") from None
        conn.execute("INSERT OR IGNORE INTO tenants(name) VALUES (?)", (tenant,))
    elif (
        conn.execute(
            "UPDATE registrations SET doc=? WHERE tenant=? AND kind=? AND id=?",
            (doc, tenant, kind, reg_id),
        ).rowcount
        == 0
    ):
        raise ResourceNotFound(f"{what} {reg_id} not found")


def _hub_identity(conn: sqlite3.Connection, proposed: str) -> str:
    conn.execute("INSERT OR IGNORE INTO hub_meta(key, value) VALUES ('hub_id', ?)", (proposed,))
    row = conn.execute("SELECT value FROM hub_meta WHERE key='hub_id'").fetchone()
    return str(row[0])


def _take_outbox(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    """Remove and return (seq, tenant, sub_id, data) of the oldest ``limit``
    handed-over notifications, in the writer's transaction: each row goes to one taker."""
    rows = conn.execute(
        "DELETE FROM notification_outbox WHERE seq IN "
        "(SELECT seq FROM notification_outbox ORDER BY seq LIMIT ?) "
        "RETURNING seq, tenant, sub_id, data",
        (limit,),
    ).fetchall()
    return sorted(rows)


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
        elif isinstance(key, str):  # createdAt, modifiedAt
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
    def __init__(
        self, path: str | Path, *, synchronous: str = "NORMAL", writer: str = "process"
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        if writer not in ("process", "thread"):
            raise ValueError("writer must be process or thread")
        self.writer = writer
        self._writer: ProcessWriter | ThreadWriter | None = None
        #: groups sent to the writer and not yet answered
        self._in_flight: asyncio.Semaphore | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._queue: asyncio.Queue[_WriteJob] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._readers: list[sqlite3.Connection] = []
        #: Read connection used on the event loop itself for primary-key look-ups,
        #: which cost less than a hop to the reader pool.
        self._loop_conn: sqlite3.Connection | None = None
        self._readers_lock = threading.Lock()
        self._known_tenants: set[str] = {""}
        #: (tenant, id) -> the entity's document (None: no entity) once the jobs sent
        #: so far are applied, and the ``seq`` of the job that said so: what the next
        #: write of it starts from. The writer applies jobs in the order they are sent,
        #: so writes of one entity chain in one group. A wrong guess costs a round
        #: trip, never a wrong write.
        self._docs: dict[tuple[str, str], tuple[bytes | None, int]] = {}
        self._seq = 0
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
        return cls(
            path,
            synchronous=opts.get("synchronous", ["NORMAL"])[0],
            writer=opts.get("writer", ["process"])[0],
        )

    @property
    def unavailable(self) -> str | None:
        """Why writes cannot be taken now (the writer process is being replaced), or
        None. ``/health`` answers 503 with it."""
        return self._writer.unavailable if isinstance(self._writer, ProcessWriter) else None

    # -- lifecycle ----------------------------------------------------------------------------

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        return connect(self.path, self.synchronous, readonly=readonly)

    async def open(self) -> None:
        self._reader_pool = ThreadPoolExecutor(_READERS, thread_name_prefix="renkei-sqlite-r")
        self._writer = ProcessWriter() if self.writer == "process" else ThreadWriter()
        await self._request(("open", self.path, self.synchronous))
        self._loop_conn = self._connect(readonly=True)
        self._checkpointer = _Checkpointer(lambda: self._connect(readonly=False))
        self._checkpointer.start()
        self._queue = asyncio.Queue()
        self._in_flight = asyncio.Semaphore(_IN_FLIGHT)
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
        if self._writer is not None:
            try:
                await self._request(("close",))
            finally:
                await self._writer.stop()
                self._writer = None
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
        self._docs.clear()

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
            with driver_errors():
                return fn(self._reader())

        return await loop.run_in_executor(self._reader_pool, run)

    async def _request(self, request: tuple[Any, ...]) -> Any:
        """Send one request to the writer and wait for its answer."""
        if self._writer is None:
            raise InternalError("store is not open")
        result = await self._writer.request(request)
        if self._checkpointer is not None:
            self._checkpointer.wanted()
        return result

    async def _exec_write(
        self, fn: Callable[..., T], *args: Any, forget: bool = False, **kwargs: Any
    ) -> T:
        """``fn(conn, *args, **kwargs)`` on the writer in a transaction of its own (not
        grouped). ``fn`` must be a module-level function and its arguments plain data:
        with the default ``writer=process`` they are pickled to the writer process."""
        result: T = await self._request(("call", fn, args, kwargs, forget))
        return result

    # -- writes -------------------------------------------------------------------------------

    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        """Run the mutations here, on the document each entity is believed to have, and
        send the writer the states they produce; where the stored document turns out
        to be another, run them again on that one (see ``sqlwriter``)."""
        if self._queue is None:
            raise InternalError("store is not open")
        order: dict[str, list[int]] = {}
        for i, (eid, _) in enumerate(mutations):
            order.setdefault(eid, []).append(i)
        results: list[WriteResult] = [WriteResult(eid) for eid, _ in mutations]
        #: eid -> (document to start from, whether the store held it during this write):
        #: the state the jobs sent before leave, else none for a create (a guess the
        #: writer checks), else what the store holds now
        start: dict[str, tuple[bytes | None, bool]] = {}
        unknown = []
        for eid in order:
            known = self._docs.get((tenant, eid))
            if known is not None:
                start[eid] = (known[0], False)
            elif isinstance(mutations[order[eid][0]][1], Create):
                # a create expects no stored entity: take that as the guess, which the
                # writer checks (on a conflict it answers with the stored document)
                start[eid] = (None, False)
            else:
                unknown.append(eid)
        if unknown:
            stored = self._stored(tenant, unknown)
            for eid in unknown:
                start[eid] = (stored.get(eid), True)
        todo = list(order)
        policy = self.history_policy
        for _ in range(_MAX_ROUNDS):
            # the temporal API's explicit rows are recorded by the writer
            recorded = (
                None if history else partial(_changed, policy, tenant, time.time_ns() // 1000)
            )
            items: list[Item] = []
            for eid in todo:
                doc, seen = start[eid]
                steps, last, changed = _run(
                    eid, doc, [(i, mutations[i][1]) for i in order[eid]], results, recorded
                )
                if steps or not seen:
                    rows = index_rows(last) if last is not None else None
                    items.append(Item(eid, doc, steps, rows, changed))
                # else: every mutation was rejected (or changed nothing) on a document
                # the store held during this write: that is the outcome, no write needed
            if not items:
                return results
            explicit = (
                {it.eid: history[it.eid] for it in items if it.eid in history} if history else None
            )
            outcomes = await self._send(Job(tenant, items, explicit))
            todo = []
            for item, outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, Conflict):
                    # what the jobs sent since will leave, else what the writer found
                    known = self._docs.get((tenant, item.eid))
                    guess = known[0] if known is not None else outcome.current
                    start[item.eid] = (guess, guess == outcome.current)
                    todo.append(item.eid)
                elif isinstance(outcome, Unknown):  # the writer died: see sqlwriter
                    for i in order[item.eid]:
                        results[i].after = None
                        results[i].error = StoreUnavailable(outcome.reason)
                elif outcome is not None:
                    for i in order[item.eid]:
                        results[i].after = None
                        results[i].error = InternalError(outcome)
            if not todo:
                return results
        for eid in todo:  # still conflicting after every round
            for i in order[eid]:
                results[i].after = None
                results[i].error = StoreUnavailable(f"{eid}: too many concurrent writes")
        return results

    def _stored(self, tenant: str, eids: Sequence[str]) -> dict[str, bytes]:
        """The stored documents of ``eids``: primary-key look-ups, on the event loop
        like :meth:`get_entity`."""
        if self._loop_conn is None:
            raise InternalError("store is not open")
        with driver_errors():
            return dict(
                rows_in(
                    self._loop_conn,
                    "SELECT id, doc FROM entities WHERE tenant=? AND id IN ({})",
                    eids,
                    tenant,
                )
            )

    async def _send(self, job: Job) -> list[Outcome]:
        """Queue ``job`` for the writer, noting the states it will leave."""
        assert self._queue is not None
        self._seq += 1
        if len(self._docs) + len(job.items) > _DOC_CACHE:
            self._docs.clear()
        for it in job.items:
            self._docs[(job.tenant, it.eid)] = (it.leaves, self._seq)
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_WriteJob(job, future, self._seq))
        return await future

    def _learn(self, pending: Sequence[_WriteJob], outcomes: Sequence[Sequence[Outcome]]) -> None:
        """After a group: note the stored state of its entities, unless a job sent
        since has said what it will be."""
        last = pending[-1].seq
        stored: dict[tuple[str, str], bytes | None] = {}
        for p, outs in zip(pending, outcomes, strict=True):
            for it, outcome in zip(p.job.items, outs, strict=True):
                key = (p.job.tenant, it.eid)
                if outcome is None:
                    stored[key] = it.leaves
                elif isinstance(outcome, Conflict):
                    stored[key] = outcome.current
                else:
                    stored.pop(key, None)
                    self._docs.pop(key, None)
        for key, doc in stored.items():
            known = self._docs.get(key)
            if known is None or known[1] <= last:
                self._docs[key] = (doc, last)

    async def _writer_loop(self) -> None:
        """Send waiting jobs to the writer in groups (one transaction each)."""
        assert self._queue is not None
        assert self._in_flight is not None
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0].job.items)
            while not self._queue.empty() and size < _MAX_GROUP:
                waiting = self._queue.get_nowait()
                pending.append(waiting)
                size += len(waiting.job.items)
            await self._in_flight.acquire()
            request = self._request(("apply", [p.job for p in pending], self.history_policy))
            task = asyncio.ensure_future(request)
            task.add_done_callback(partial(self._answered, pending))

    def _answered(self, pending: list[_WriteJob], done: asyncio.Future[Any]) -> None:
        """A group's answer: settle each job's future. Answers come in the order the
        groups were sent."""
        assert self._queue is not None
        assert self._in_flight is not None
        self._in_flight.release()
        try:
            exc = done.exception()
            if exc is not None:  # the whole group failed (e.g. disk full): fail each job
                self._docs.clear()
                error = (
                    exc
                    if isinstance(exc, NgsiLdError)
                    else InternalError(f"store write failed: {exc}")
                )
                for p in pending:
                    if not p.future.done():
                        p.future.set_exception(error)
                return
            outcomes = done.result()
            self._learn(pending, outcomes)
            for p, outs in zip(pending, outcomes, strict=True):
                if not p.future.done():
                    p.future.set_result(outs)
        finally:
            for _ in pending:
                self._queue.task_done()

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
        with driver_errors():
            row = self._loop_conn.execute(
                "SELECT doc FROM entities WHERE tenant=? AND id=?", (tenant, entity_id)
            ).fetchone()
        return live(orjson.loads(row[0])) if row else None

    def _where(self, tenant: str, query: EntityQuery, sql: SqlBuilder) -> tuple[str, list[Any]]:
        windowed = query.geo is not None and geo_window(query.geo) is not None
        clauses, args = selection_sql(query, tenant, _ENTITIES_IN_WINDOW if windowed else _ENTITIES)
        # transient entities past their expiresAt answer no query
        clauses.append("NOT EXISTS (SELECT 1 FROM entity_expiry x WHERE x.rid=e.rid AND x.at <= ?)")
        args.append(now_us())
        if query.q is not None:
            sql.args = []
            clauses.append(sql.q(query.q))
            args.extend(sql.args)
        if query.scope_q is not None:
            sql.args = []
            clauses.append(sql.scope(query.scope_q))
            args.extend(sql.args)
        if query.geo is not None:
            sql.args = []
            candidates = None
            if windowed and query.types:
                # the types, checked on the R*Tree's candidates: an entity of another
                # type is then neither checked exactly nor read
                narrow, narrow_args = selection_sql(
                    EntityQuery(types=query.types), tenant, _GEO_CANDIDATES
                )
                candidates = (narrow[1], narrow_args[1:])
            clauses.append(sql.geo(query.geo, candidates))
            args.extend(sql.args)
        return " AND ".join(clauses), args

    async def expired_entities(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        def fn(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return [
                (t, i)
                for t, i in conn.execute(
                    "SELECT e.tenant, e.id FROM entity_expiry x JOIN entities e ON e.rid=x.rid "
                    "WHERE x.at <= ? ORDER BY x.at LIMIT ?",
                    (now, limit),
                )
            ]

        return await self._read(fn)

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
        await self._exec_write(_put_subscription, tenant, sub["id"], _dumps(sub), create)
        if create:
            self._known_tenants.add(tenant)

    @staticmethod
    def _subscription(row: Any) -> dict[str, Any]:
        sub: dict[str, Any] = orjson.loads(row[0])
        status = {"timesSent": row[1], "timesFailed": row[2]}
        for key, value in zip(
            (
                "lastNotification",
                "lastSuccess",
                "lastFailure",
                "lastSuccessCode",
                "lastFailureReason",
            ),
            row[3:8],
            strict=True,
        ):
            if value is not None:
                status[key] = value
        if row[8]:
            status["failsCounter"] = row[8]
        sub["notificationStatus"] = status
        return sub

    _SUB_COLUMNS = (
        "doc, times_sent, times_failed, last_notification, last_success, last_failure, "
        "last_success_code, last_failure_reason, fails_counter"
    )

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
        sql = "DELETE FROM subscriptions WHERE tenant=? AND id=?"
        return await self._exec_write(_rowcount, sql, [(tenant, sub_id)]) > 0

    async def record_notifications(self, records: Sequence[NotificationRecord]) -> None:
        rows = [
            (
                r.sent,
                r.failed,
                r.last_notification,
                r.last_success,
                r.last_failure,
                r.last_success_code,
                r.last_failure_reason,
                r.reset,
                r.trailing_failures,
                r.trailing_failures,
                r.tenant,
                r.sub_id,
            )
            for r in records
        ]

        sql = (
            "UPDATE subscriptions SET times_sent = times_sent + ?, times_failed = times_failed + ?, "
            "last_notification = coalesce(?, last_notification), "
            "last_success = coalesce(?, last_success), last_failure = coalesce(?, last_failure), "
            "last_success_code = coalesce(?, last_success_code), "
            "last_failure_reason = coalesce(?, last_failure_reason), "
            "fails_counter = CASE WHEN ? THEN ? ELSE fails_counter + ? END "
            "WHERE tenant=? AND id=?"
        )
        await self._exec_write(_rowcount, sql, rows)

    async def claim_notification(
        self, tenant: str, sub_id: str, *, now: float, min_gap: float
    ) -> bool:
        sql = (
            "UPDATE subscriptions SET last_claim = ? WHERE tenant=? AND id=? "
            "AND (last_claim IS NULL OR last_claim <= ?)"
        )
        return await self._exec_write(_rowcount, sql, [(now, tenant, sub_id, now - min_gap)]) == 1

    # -- context source registrations ---------------------------------------------------------

    async def put_registration(
        self, tenant: str, kind: RegistrationKind, doc: dict[str, Any], *, create: bool
    ) -> None:
        await self._exec_write(_put_registration, tenant, kind, doc["id"], _dumps(doc), create)
        if create:
            self._known_tenants.add(tenant)

    async def get_registration(
        self, tenant: str, kind: RegistrationKind, reg_id: str
    ) -> dict[str, Any] | None:
        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT doc FROM registrations WHERE tenant=? AND kind=? AND id=?",
                (tenant, kind, reg_id),
            ).fetchone()
            return orjson.loads(row[0]) if row else None

        return await self._read(fn)

    async def list_registrations(self, tenant: str, kind: RegistrationKind) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT doc FROM registrations WHERE tenant=? AND kind=? ORDER BY seq",
                (tenant, kind),
            )
            return [orjson.loads(r[0]) for r in rows]

        return await self._read(fn)

    async def delete_registration(self, tenant: str, kind: RegistrationKind, reg_id: str) -> bool:
        sql = "DELETE FROM registrations WHERE tenant=? AND kind=? AND id=?"
        return await self._exec_write(_rowcount, sql, [(tenant, kind, reg_id)]) > 0

    async def record_registration_notifications(
        self, records: Sequence[NotificationRecord]
    ) -> None:
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
        sql = (
            "UPDATE registrations SET times_sent = times_sent + ?, "
            "times_failed = times_failed + ?, "
            "last_notification = coalesce(?, last_notification), "
            "last_success = coalesce(?, last_success), last_failure = coalesce(?, last_failure) "
            "WHERE tenant=? AND kind='subscription' AND id=?"
        )
        await self._exec_write(_rowcount, sql, rows)

    async def registration_status(self, tenant: str, sub_id: str) -> dict[str, Any]:
        def fn(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(
                "SELECT times_sent, times_failed, last_notification, last_success, last_failure "
                "FROM registrations WHERE tenant=? AND kind='subscription' AND id=?",
                (tenant, sub_id),
            ).fetchone()
            if row is None:
                return {}
            status: dict[str, Any] = {"timesSent": row[0], "timesFailed": row[1]}
            for key, value in zip(
                ("lastNotification", "lastSuccess", "lastFailure"), row[2:], strict=True
            ):
                if value is not None:
                    status[key] = value
            return status

        return await self._read(fn)

    async def hub_identity(self, proposed: str) -> str:
        return await self._exec_write(_hub_identity, proposed)

    async def hand_over(self, pending: Sequence[PendingNotification]) -> None:
        rows = [(p.tenant, p.sub_id, _dumps(p.data)) for p in pending]
        sql = "INSERT INTO notification_outbox(tenant, sub_id, data) VALUES (?, ?, ?)"
        await self._exec_write(_rowcount, sql, rows)

    async def take_over(self, limit: int) -> list[PendingNotification]:
        def any_waiting(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM notification_outbox LIMIT 1").fetchone() is not None

        if not await self._read(any_waiting):  # the usual case, read without a write
            return []
        rows = await self._exec_write(_take_outbox, limit)
        return [PendingNotification(t, s, orjson.loads(d)) for _, t, s, d in rows]

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
        sql = (
            "INSERT OR REPLACE INTO contexts(id, url, kind, doc, created_at, last_usage, hits) "
            "VALUES (?,?,?,?,?,?,?)"
        )
        row = (
            record.id,
            record.url,
            record.kind,
            _dumps(record.document),
            record.created_at,
            record.last_usage,
            record.hits,
        )
        await self._exec_write(_rowcount, sql, [row])

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
        sql = "DELETE FROM contexts WHERE id=?"
        return await self._exec_write(_rowcount, sql, [(context_id,)]) > 0

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
        dataset_id: str | AnyDataset | None = ANY_DATASET,
        instance_id: str | None = None,
    ) -> int:
        return await self._exec_write(
            sqlhistory.delete,
            tenant,
            entity_id,
            attr=attr,
            dataset_id=dataset_id,
            instance_id=instance_id,
            forget=True,
        )

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        return await self._exec_write(sqlhistory.replace, tenant, entity_id, attr, instance_id, row)

    async def expire_history(self, now: int) -> int:
        return await self._exec_write(sqlhistory.expire, self.history_policy, now)
