"""The scale-out store: MongoDB through pymongo's asyncio API (``AsyncMongoClient``).

Layout (one database, named by the URL path, default ``renkei``; see docs/mongodb.md):

* ``entities``: one document per entity, ``_id = {"t": tenant, "i": entity id}`` so the
  id is unique across a cluster sharded on ``{_id: "hashed"}``; the expanded entity
  with field names escaped (``e``), a version for optimistic concurrency (``ver``)
  and the query fields described in ``broker.store.mongoquery``.
* ``tenants``, ``geo_paths`` (GeoProperty attributes seen, one 2dsphere index each),
  ``subscriptions`` (``_id = {"t", "i"}``, status counters beside the document),
  ``registrations`` (context source registrations and their subscriptions,
  ``_id = {"t", "k", "i"}``, a subscription's delivery counters beside it),
  ``contexts``, ``counters`` (also the hub's name, ``_id = "hub_id"``) and ``outbox``
  (notifications a stopping broker handed over).

Tenants share collections and are told apart by the ``t`` field that leads every
index: tenants appear at run time from a request header, and a database per tenant
would mean unbounded databases, each with its own files and indexes to build.

Writes: the batch's current documents are read in one ``find``, the mutations run in
Python, and the results go back in one unordered ``bulk_write`` whose replaces and
deletes are conditional on the version read; an entity another writer changed in
between is read again and its mutations re-run (they are pure). A write is
acknowledged with ``w=majority`` unless the URL says otherwise.

On a replica set or a sharded cluster (told by the server's ``hello``), a batch's
entity writes and the attribute history they append commit in one multi-document
transaction: history and current state never disagree. A standalone server has no
transactions; there the history is appended right after the entity writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import bson
import orjson
from bson import ObjectId
from bson.errors import BSONError
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.read_concern import ReadConcern

from broker.errors import (
    AlreadyExists,
    BadRequestData,
    InternalError,
    NgsiLdError,
    ResourceNotFound,
    StoreUnavailable,
)
from broker.model.entity import ENTITY_KEYS, Entity, expires_us, live, now_us
from broker.model.geo import validate_geometry
from broker.model.history import Duration, HistoryRow
from broker.model.store import (
    ANY_DATASET,
    DELETE,
    Aggregates,
    AnyDataset,
    ContextRecord,
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
from broker.query.evaluate import entity_geometry
from broker.store.base import RegistrationKind, Store
from broker.store.index import value_rows
from broker.store.mongohistory import MongoHistory, NumbersNeeded
from broker.store.mongoquery import (
    FilterBuilder,
    densify,
    escape_doc,
    escape_key,
    matches,
    sort_stages,
    unescape_doc,
    value_docs,
)

Doc = dict[str, Any]

#: Defaults applied when the URL does not set them (names as in the MongoDB URI spec).
DEFAULT_OPTIONS: Final[dict[str, Any]] = {
    "w": "majority",
    "readConcernLevel": "majority",
    "serverSelectionTimeoutMS": 10_000,
    "connectTimeoutMS": 10_000,
    "socketTimeoutMS": 30_000,
    "maxPoolSize": 100,
    "appname": "renkei",
}
#: How often one entity's mutations are re-run when other writers keep changing it.
_MAX_ATTEMPTS: Final = 64
#: MongoDB error codes for geometries it cannot index (16755 "Can't extract geo keys").
_GEO_CODES: Final = frozenset({16755, 16756})
_DUPLICATE: Final = 11000
#: MongoDB's own limits, answered 400 (the request, not the hub, is at fault):
#: BSONObjectTooLarge, a document grown past the limit by an update, KeyTooLong (an
#: index key over 1 KiB, before MongoDB 4.2) and Overflow (nesting deeper than 100).
_LIMIT_CODES: Final = frozenset({10334, 17419, 17280, 15})
#: Levels of nested documents and arrays MongoDB stores, the document itself included.
MAX_NESTING: Final = 100
#: The largest document MongoDB stores, unless the server's ``hello`` says otherwise.
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
#: Write tokens kept per entity document (see ``MongoStore._bulk``).
_TOKENS: Final = 16

ENTITY_INDEXES: Final = (
    IndexModel([("t", ASCENDING), ("id", ASCENDING)], name="tenant_id"),
    IndexModel([("t", ASCENDING), ("types", ASCENDING), ("id", ASCENDING)], name="tenant_types"),
    IndexModel([("t", ASCENDING), ("attrs", ASCENDING)], name="tenant_attrs"),
    IndexModel([("t", ASCENDING), ("scopes", ASCENDING)], name="tenant_scopes"),
    IndexModel([("t", ASCENDING), ("vals.p", ASCENDING), ("vals.n", ASCENDING)], name="vals_n"),
    IndexModel([("t", ASCENDING), ("vals.p", ASCENDING), ("vals.s", ASCENDING)], name="vals_s"),
    IndexModel([("t", ASCENDING), ("vals.p", ASCENDING), ("vals.dt", ASCENDING)], name="vals_dt"),
)


async def _pause(attempt: int) -> None:
    """After a lost race: let the winners through before reading again."""
    await asyncio.sleep(random.uniform(0, min(0.001 * attempt, 0.05)))


@contextmanager
def driver_errors() -> Iterator[None]:
    """Translate pymongo errors at the boundary of this backend (re-raised ``from``)."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise AlreadyExists(f"already exists: {exc.details or exc}") from exc
    except DocumentTooLarge as exc:
        raise BadRequestData(f"beyond the store's limits: {exc}") from exc
    except (
        ServerSelectionTimeoutError,
        NetworkTimeout,
        ExecutionTimeout,
        WTimeoutError,
        AutoReconnect,
        ConnectionFailure,
    ) as exc:
        raise StoreUnavailable(f"MongoDB unavailable: {exc}", retry_after=2) from exc
    except OperationFailure as exc:
        if exc.code in _GEO_CODES:
            raise BadRequestData(f"geometry refused by the store: {exc}") from exc
        if exc.code in _LIMIT_CODES:
            raise BadRequestData(f"beyond the store's limits: {exc}") from exc
        raise InternalError(f"store error: {exc}") from exc
    except (PyMongoError, BSONError) as exc:
        raise InternalError(f"store error: {exc}") from exc


def nested_deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests documents and arrays more than ``limit`` levels (``doc``
    itself is the first), as MongoDB counts them; containers only are visited."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if level > limit:
            return True
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                stack.append((child, level + 1))
    return False


def beyond_limits(doc: Doc, size: int, max_bytes: int) -> str | None:
    """Why MongoDB would refuse to store ``doc`` (``size`` bytes of BSON), or None."""
    if size > max_bytes:
        return f"the stored document would be {size} bytes; MongoDB stores at most {max_bytes}"
    if nested_deeper_than(doc, MAX_NESTING):
        return f"values nested deeper than MongoDB's {MAX_NESTING} levels"
    return None


def _key(tenant: str, ident: str) -> Doc:
    return {"t": tenant, "i": ident}


def _copy(ent: Entity) -> Entity:
    copied: Entity = orjson.loads(orjson.dumps(ent))
    return copied


def _geometries(ent: Entity) -> dict[str, Any]:
    """The ``g`` field: each GeoProperty attribute's first geometry, as indexed.

    Raises BadRequestData for a geometry MongoDB would refuse (unclosed or
    self-intersecting rings, out-of-range positions), before anything is written."""
    found: dict[str, Any] = {}
    for attr in ent:
        if attr in ENTITY_KEYS:
            continue
        value = entity_geometry(ent, attr)
        if value is None:
            continue
        validate_geometry(value, attr)
        found[escape_key(attr)] = densify(value)
    return found


def entity_document(
    tenant: str, ent: Entity, ver: int, token: ObjectId, earlier: Sequence[ObjectId] = ()
) -> Doc:
    """The stored document of an entity (see the module docstring)."""
    types = list(ent.get("type") or ())
    scopes = ent.get("scope") or []
    kinds: dict[tuple[str, str], None] = {}
    for attr, instances in ent.items():
        if attr in ENTITY_KEYS or not isinstance(instances, list):
            continue
        for inst in instances:
            if isinstance(inst, dict):
                kinds[(attr, str(inst.get("type", "Property")))] = None
    doc: Doc = {
        "_id": _key(tenant, ent["id"]),
        "t": tenant,
        "id": ent["id"],
        "ver": ver,
        # the last writes' tokens: a writer finds its own even after later writes
        "toks": [token, *earlier][:_TOKENS],
        "e": escape_doc(ent),
        "types": types,
        "tmin": min(types) if types else None,
        "attrs": sorted({a for a, _ in kinds}),
        "kinds": [{"a": a, "k": k} for a, k in kinds],
        "scopes": [scopes] if isinstance(scopes, str) else list(scopes),
        "vals": value_docs(value_rows(ent)),
    }
    expires = expires_us(ent)
    if expires is not None:
        doc["x"] = expires  # a transient entity: when it expires, in µs
    geo = _geometries(ent)
    if geo:
        doc["g"] = geo
    return doc


class _Pending:
    """One entity's mutations in a write, and what the current attempt made of them."""

    __slots__ = (
        "doc",
        "eid",
        "failed",
        "indexes",
        "op_index",
        "results",
        "start_ver",
        "tokens",
    )

    def __init__(self, eid: str) -> None:
        self.eid = eid
        self.indexes: list[int] = []
        self.results: dict[int, WriteResult] = {}
        self.doc: Doc | None = None
        self.start_ver: int | None = None
        self.op_index: int | None = None
        self.tokens: list[ObjectId] = []
        #: an error the store gave this entity in an aborted transaction: kept, not retried
        self.failed: NgsiLdError | None = None


class _Retry(Exception):
    """Aborts a write transaction so the batch runs again: another writer won a race,
    or new geo indexes must be created first (outside any transaction)."""

    def __init__(self, geo_docs: Sequence[Doc] = ()) -> None:
        super().__init__("write conflict")
        self.geo_docs = list(geo_docs)


def supports_transactions(hello: Mapping[str, Any]) -> bool:
    """Whether the server answering ``hello`` runs multi-document transactions: a
    replica set member (``setName``) or a ``mongos`` (``msg: isdbgrid``)."""
    return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"


class MongoStore(Store):
    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        transactions: bool | None = None,
        **options: Any,
    ) -> None:
        """``url`` is a MongoDB connection string; its path names the database (default
        ``renkei``) unless ``database`` is given; ``options`` go to ``AsyncMongoClient``.

        ``transactions``: whether entity writes and their history commit in one
        transaction; None (the default) asks the server at ``open`` (replica sets
        and sharded clusters have transactions, a standalone server has none)."""
        # the URL is parsed here without resolving it (mongodb+srv:// would need DNS)
        parts = urlsplit(url)
        given = {k.lower() for k in parse_qs(parts.query)}
        opts = {k: v for k, v in DEFAULT_OPTIONS.items() if k.lower() not in given}
        opts.update(options)
        self._read_concern = opts.pop("readConcernLevel", None)
        self.url = url
        self.database_name: str = database or unquote(parts.path.lstrip("/")) or "renkei"
        self._options = opts
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        self._known_tenants: set[str] = {""}
        self._geo_paths: set[str] = set()
        self._geo_lock = asyncio.Lock()
        self._history_store: MongoHistory | None = None
        self._want_transactions = transactions
        #: set at ``open``: writes and history share a transaction
        self.transactions = False
        #: the largest document the server stores (its ``hello`` says, on open)
        self.max_document_bytes = MAX_DOCUMENT_BYTES

    @classmethod
    def from_url(cls, url: str) -> MongoStore:
        return cls(url)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        self._client = AsyncMongoClient(self.url, **self._options)
        concern = ReadConcern(self._read_concern) if self._read_concern else None
        self._db = self._client.get_database(self.database_name, read_concern=concern)
        with driver_errors():
            hello = await self._db.command("hello")
            self.max_document_bytes = int(hello.get("maxBsonObjectSize", MAX_DOCUMENT_BYTES))
            self.transactions = (
                supports_transactions(hello)
                if self._want_transactions is None
                else self._want_transactions
            )
            await self._entities.create_indexes(list(ENTITY_INDEXES))
            await self._db.subscriptions.create_index(
                [("t", ASCENDING), ("seq", ASCENDING)], name="tenant_seq"
            )
            await self._db.contexts.create_index([("created_at", ASCENDING)], name="created")
            await self._db.registrations.create_index(
                [("t", ASCENDING), ("k", ASCENDING), ("seq", ASCENDING)], name="tenant_kind_seq"
            )
            async for row in self._db.geo_paths.find():
                self._geo_paths.add(row["_id"])
            for attr in sorted(self._geo_paths):
                await self._create_geo_index("g." + attr)
            async for row in self._db.tenants.find():
                self._known_tenants.add(row["_id"])
            self._history_store = MongoHistory(self._db)
            await self._history_store.open()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._db = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise InternalError("store is not open")
        return self._db

    @property
    def _history(self) -> MongoHistory:
        if self._history_store is None:
            raise InternalError("store is not open")
        return self._history_store

    @property
    def _entities(self) -> AsyncCollection[Doc]:
        return self.db.entities

    async def _create_geo_index(self, field: str) -> None:
        digest = hashlib.sha1(field.encode()).hexdigest()[:16]
        name = f"geo_{digest}"
        # single-field: the tenant is matched beside it (mongoeco, which the tests run
        # on, has no compound 2dsphere indexes; the index still bounds the scan)
        await self._entities.create_index([(field, "2dsphere")], name=name)

    async def _ensure_geo_indexes(self, docs: Sequence[Doc]) -> None:
        """A 2dsphere index for each GeoProperty attribute, created as it first appears
        (before the first document with it is written, so MongoDB checks that one too)."""
        new = {k for d in docs for k in d.get("g", {})} - self._geo_paths
        if not new:
            return
        async with self._geo_lock:
            for attr in sorted(new - self._geo_paths):
                await self._create_geo_index("g." + attr)
                await self.db.geo_paths.update_one(
                    {"_id": attr}, {"$set": {"field": "g." + attr}}, upsert=True
                )
                self._geo_paths.add(attr)

    # -- tenants ------------------------------------------------------------------------------

    async def tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        with driver_errors():
            found = await self.db.tenants.find_one({"_id": tenant}) is not None
        if found:
            self._known_tenants.add(tenant)
        return found

    async def tenants(self) -> list[str]:
        with driver_errors():
            return sorted([row["_id"] async for row in self.db.tenants.find()])

    async def _note_tenant(self, tenant: str) -> None:
        if tenant not in self._known_tenants:
            await self.db.tenants.update_one({"_id": tenant}, {"$set": {"seen": True}}, upsert=True)
            self._known_tenants.add(tenant)

    # -- entities -----------------------------------------------------------------------------

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        with driver_errors():
            doc = await self._entities.find_one({"_id": _key(tenant, entity_id)}, {"e": 1})
        if doc is None:
            return None
        return live(unescape_doc(doc["e"]))

    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        now = time.time_ns() // 1000
        pending: dict[str, _Pending] = {}
        for i, (eid, _) in enumerate(mutations):
            pending.setdefault(eid, _Pending(eid)).indexes.append(i)
        results: list[WriteResult | None] = [None] * len(mutations)
        todo = list(pending.values())
        explicit = history or {}
        with driver_errors():
            if self.transactions:
                todo = await self._write_atomic(tenant, todo, mutations, explicit, now)
            else:
                for attempt in range(_MAX_ATTEMPTS):
                    if not todo:
                        break
                    if attempt:  # lost a race: let the winners through before reading again
                        await _pause(attempt)
                    todo = await self._write_round(tenant, todo, mutations)
        for p in todo:  # still conflicting after every attempt
            for i in p.indexes:
                p.results[i] = WriteResult(
                    p.eid, error=StoreUnavailable(f"{p.eid}: too many concurrent writes")
                )
        for p in pending.values():
            for i, r in p.results.items():
                results[i] = r
        done = [r for r in results if r is not None]
        assert len(done) == len(mutations)
        if any(r.ok for r in done):
            with driver_errors():
                await self._note_tenant(tenant)
                if not self.transactions:  # else recorded in the write's transaction
                    writes = [(r.id, r.before, r.after, explicit.get(r.id)) for r in done if r.ok]
                    await self._history.record(self.history_policy, tenant, writes, now)
        return done

    async def _write_atomic(
        self,
        tenant: str,
        todo: list[_Pending],
        mutations: Sequence[tuple[str, Mutation]],
        explicit: Mapping[str, Sequence[HistoryRow]],
        now: int,
    ) -> list[_Pending]:
        """The batch's entity writes and their history in one transaction, run again
        (after a short random pause) while another writer wins a race on one of its
        entities; returns the entities still conflicting after every attempt.

        ``with_transaction`` retries what MongoDB labels transient (write conflicts
        with other transactions, elections) and commits whose outcome is unknown;
        any other error aborts the transaction, entity writes included."""
        assert self._client is not None
        concern = ReadConcern(self._read_concern) if self._read_concern else None

        async def attempt(session: AsyncClientSession) -> None:
            retry = await self._write_round(tenant, todo, mutations, session)
            if retry:
                raise _Retry()
            done = sorted((i, r) for p in todo for i, r in p.results.items() if r.ok)
            writes = [(r.id, r.before, r.after, explicit.get(r.id)) for _, r in done]
            await self._history.record(self.history_policy, tenant, writes, now, session=session)

        for n in range(_MAX_ATTEMPTS):
            if n:
                await _pause(n)
            try:
                async with self._client.start_session() as session:
                    await session.with_transaction(attempt, read_concern=concern)
                return []
            except _Retry as again:
                if again.geo_docs:
                    await self._ensure_geo_indexes(again.geo_docs)
            except NumbersNeeded as need:
                await self._history.reserve(need.count)
        return [p for p in todo if p.failed is None]

    async def _write_round(
        self,
        tenant: str,
        todo: list[_Pending],
        mutations: Sequence[tuple[str, Mutation]],
        session: AsyncClientSession | None = None,
    ) -> list[_Pending]:
        """One optimistic attempt for ``todo``; returns the entities to try again.
        Inside a transaction (``session``) a lost race raises ``_Retry`` instead: a
        write error has aborted the transaction on the server."""
        stored: dict[str, Doc] = {}
        async for doc in self._entities.find(
            {"_id": {"$in": [_key(tenant, p.eid) for p in todo]}},
            {"id": 1, "ver": 1, "e": 1, "toks": 1},
            session=session,
        ):
            stored[doc["id"]] = doc
        token = ObjectId()
        ops: list[InsertOne[Doc] | ReplaceOne[Doc]] = []
        op_owner: list[_Pending] = []
        deletes: list[tuple[_Pending, int]] = []
        for p in todo:
            row = stored.get(p.eid)
            # a transient entity past its expiresAt is gone, even before it is purged
            start: Entity | None = live(unescape_doc(row["e"])) if row else None
            p.start_ver = row["ver"] if row else None
            p.tokens = list(row.get("toks", ())) if row else []
            p.results = {}
            p.doc = None
            if p.failed is not None:  # refused by the store in an earlier attempt
                p.results = {i: WriteResult(p.eid, error=p.failed) for i in p.indexes}
                continue
            cur, changed = start, False
            for i in p.indexes:
                result = WriteResult(p.eid, before=cur)
                try:
                    out = mutations[i][1](None if cur is None else _copy(cur))
                    if out is DELETE:
                        result.after, cur = None, None
                    else:
                        assert isinstance(out, dict)
                        _geometries(out)  # refuses geometry MongoDB would refuse
                        result.after, cur = out, out
                    changed = True
                except NgsiLdError as exc:
                    result.error = exc
                p.results[i] = result
            if not changed:
                continue
            if cur is None:
                if p.start_ver is not None:
                    deletes.append((p, p.start_ver))
                continue
            new: Doc | None = None
            try:
                new = entity_document(tenant, cur, (p.start_ver or 0) + 1, token, p.tokens)
                # what BSON or the server cannot hold fails this entity, not the batch
                why = beyond_limits(new, len(bson.encode(new)), self.max_document_bytes)
            except (BSONError, OverflowError) as exc:
                why = str(exc)
            if new is not None and why is None:
                p.doc = new
            else:
                error = BadRequestData(
                    f"{p.eid}: cannot be stored (beyond the store's limits): {why}"
                )
                for r in p.results.values():
                    if r.ok:
                        r.error, r.after = error, None
                continue
            p.op_index = len(ops)
            op_owner.append(p)
            if p.start_ver is None:
                ops.append(InsertOne(new))
            else:
                ops.append(ReplaceOne({"_id": new["_id"], "ver": p.start_ver}, new))
        retry: list[_Pending] = []
        if ops:
            docs = [p.doc for p in op_owner if p.doc is not None]
            if session is not None and {k for d in docs for k in d.get("g", {})} - self._geo_paths:
                raise _Retry(docs)  # an index build would wait for this transaction
            await self._ensure_geo_indexes(docs)
            retry.extend(await self._bulk(tenant, ops, op_owner, token, session))
        if deletes:
            if session is not None:  # a transaction's session runs one operation at a time
                outcomes = [
                    await self._entities.delete_one(
                        {"_id": _key(tenant, p.eid), "ver": ver}, session=session
                    )
                    for p, ver in deletes
                ]
            else:
                outcomes = await asyncio.gather(
                    *(
                        self._entities.delete_one({"_id": _key(tenant, p.eid), "ver": ver})
                        for p, ver in deletes
                    )
                )
            retry.extend(
                p for (p, _), res in zip(deletes, outcomes, strict=True) if not res.deleted_count
            )
        return retry

    async def _bulk(
        self,
        tenant: str,
        ops: list[InsertOne[Doc] | ReplaceOne[Doc]],
        owners: list[_Pending],
        token: ObjectId,
        session: AsyncClientSession | None = None,
    ) -> list[_Pending]:
        failed: dict[int, dict[str, Any]] = {}
        try:
            res = await self._entities.bulk_write(ops, ordered=False, session=session)
            settled = res.inserted_count + res.matched_count
        except BulkWriteError as exc:
            for err in exc.details.get("writeErrors", []):
                failed[err["index"]] = err
            settled = exc.details.get("nInserted", 0) + exc.details.get("nMatched", 0)
        retry: list[_Pending] = []
        for index, err in failed.items():
            p = owners[index]
            if err.get("code") == _DUPLICATE:
                retry.append(p)  # created by another writer meanwhile: run again on it
            else:
                error: NgsiLdError = (
                    BadRequestData(f"{p.eid}: refused by the store: {err.get('errmsg')}")
                    if err.get("code") in _GEO_CODES | _LIMIT_CODES
                    else InternalError(f"{p.eid}: store error: {err.get('errmsg')}")
                )
                for r in p.results.values():
                    if r.ok:
                        r.error, r.after = error, None
                p.failed = error
        if session is not None and failed:
            raise _Retry()  # the server aborted the transaction: the others run again
        if settled + len(failed) < len(ops):
            # some conditional replaces matched nothing: which? Those whose document
            # does not hold our token (among its last few, should others write since)
            replaced = [p for p in owners if p.start_ver is not None and p.op_index not in failed]
            ours = {
                doc["id"]
                async for doc in self._entities.find(
                    {"_id": {"$in": [_key(tenant, p.eid) for p in replaced]}, "toks": token},
                    {"id": 1},
                    session=session,
                )
            }
            retry.extend(p for p in replaced if p.eid not in ours)
        return retry

    # -- queries ------------------------------------------------------------------------------

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        builder = FilterBuilder()
        where = {
            "$and": [
                {"t": tenant, **builder.query(query)},
                # transient entities past their expiresAt answer no query
                {"$or": [{"x": None}, {"x": {"$gt": now_us()}}]},
            ]
        }
        stages = [{"$match": where}, *sort_stages(query)]
        with driver_errors():
            if builder.exact:
                found: list[Entity] = []
                if query.limit > 0:  # limit=0 asks for the count alone ($limit must be > 0)
                    page_stages = [
                        *stages,
                        {"$skip": query.offset},
                        {"$limit": query.limit},
                        {"$project": {"e": 1}},
                    ]
                    cursor = await self._entities.aggregate(page_stages)
                    found = [unescape_doc(d["e"]) async for d in cursor]
                total = await self._entities.count_documents(where) if query.count else None
                return found, total
            return await self._query_checked(stages, query)

    async def _query_checked(
        self, stages: list[dict[str, Any]], query: EntityQuery
    ) -> tuple[list[Entity], int | None]:
        """Page over the candidates that pass the reference evaluator."""
        found: list[Entity] = []
        total = 0
        cursor = await self._entities.aggregate([*stages, {"$project": {"e": 1}}])
        async for doc in cursor:
            ent: Entity = unescape_doc(doc["e"])
            if not matches(query, ent):
                continue
            if query.offset <= total < query.offset + query.limit:
                found.append(ent)
            total += 1
            if not query.count and total >= query.offset + query.limit:
                break
        await cursor.close()
        return found, total if query.count else None

    async def expired_entities(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        with driver_errors():
            cursor = self._entities.find({"x": {"$lte": now}}, {"t": 1, "id": 1}).limit(limit)
            return [(d["t"], d["id"]) async for d in cursor]

    async def discovery(self, tenant: str) -> Discovery:
        async def run(pipeline: list[dict[str, Any]]) -> AsyncIterator[Doc]:
            cursor = await self._entities.aggregate(pipeline)
            async for row in cursor:
                yield row

        match = {"$match": {"t": tenant}}
        with driver_errors():
            types = {
                r["_id"]: r["n"]
                async for r in run(
                    [match, {"$unwind": "$types"}, {"$group": {"_id": "$types", "n": {"$sum": 1}}}]
                )
            }
            attributes = {
                r["_id"]: r["n"]
                async for r in run(
                    [match, {"$unwind": "$attrs"}, {"$group": {"_id": "$attrs", "n": {"$sum": 1}}}]
                )
            }
            pairs: dict[tuple[str, str], set[str]] = {}
            async for r in run(
                [
                    match,
                    {"$unwind": "$types"},
                    {"$unwind": "$kinds"},
                    {"$group": {"_id": {"t": "$types", "a": "$kinds.a", "k": "$kinds.k"}}},
                ]
            ):
                key = r["_id"]
                pairs.setdefault((key["t"], key["a"]), set()).add(key["k"])
        return Discovery(types=types, attributes=attributes, type_attributes=pairs)

    # -- subscriptions ------------------------------------------------------------------------

    async def put_subscription(self, tenant: str, sub: dict[str, Any], *, create: bool) -> None:
        sub_id = sub["id"]
        with driver_errors():
            if create:
                counter = await self.db.counters.find_one_and_update(
                    {"_id": "subscriptions"}, {"$inc": {"n": 1}}, upsert=True, return_document=True
                )
                try:
                    await self.db.subscriptions.insert_one(
                        {
                            "_id": _key(tenant, sub_id),
                            "t": tenant,
                            "seq": counter["n"] if counter else 0,
                            "doc": escape_doc(sub),
                            "sent": 0,
                            "failed": 0,
                        }
                    )
                except DuplicateKeyError:
                    raise AlreadyExists(f"subscription {sub_id} already exists") from None
                await self._note_tenant(tenant)
            else:
                res = await self.db.subscriptions.update_one(
                    {"_id": _key(tenant, sub_id)}, {"$set": {"doc": escape_doc(sub)}}
                )
                if res.matched_count == 0:
                    raise ResourceNotFound(f"subscription {sub_id} not found")

    @staticmethod
    def _subscription(row: Doc) -> dict[str, Any]:
        sub: dict[str, Any] = unescape_doc(row["doc"])
        status = _delivery_status(row)
        if row.get("fails_counter"):
            status["failsCounter"] = row["fails_counter"]
        sub["notificationStatus"] = status
        return sub

    async def get_subscription(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        with driver_errors():
            row = await self.db.subscriptions.find_one({"_id": _key(tenant, sub_id)})
        return self._subscription(row) if row else None

    async def list_subscriptions(self, tenant: str) -> list[dict[str, Any]]:
        with driver_errors():
            return [
                self._subscription(row)
                async for row in self.db.subscriptions.find({"t": tenant}).sort("seq", ASCENDING)
            ]

    async def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        with driver_errors():
            res = await self.db.subscriptions.delete_one({"_id": _key(tenant, sub_id)})
        return res.deleted_count > 0

    async def record_notifications(self, records: Sequence[NotificationRecord]) -> None:
        ops = []
        for r in records:
            inc: dict[str, Any] = {"sent": r.sent, "failed": r.failed}
            update: dict[str, Any] = {"$inc": inc}
            latest: dict[str, Any] = {
                k: v
                for k, v in (
                    ("last_notification", r.last_notification),
                    ("last_success", r.last_success),
                    ("last_failure", r.last_failure),
                    ("last_success_code", r.last_success_code),
                    ("last_failure_reason", r.last_failure_reason),
                )
                if v is not None
            }
            if r.reset:
                latest["fails_counter"] = r.trailing_failures
            elif r.trailing_failures:
                inc["fails_counter"] = r.trailing_failures
            if latest:
                update["$set"] = latest
            # no upsert: records of deleted subscriptions match nothing
            ops.append(UpdateOne({"_id": _key(r.tenant, r.sub_id)}, update))
        if ops:
            with driver_errors():
                await self.db.subscriptions.bulk_write(ops, ordered=False)

    async def hand_over(self, pending: Sequence[PendingNotification]) -> None:
        # ObjectIds made here in order: the oldest handed over is taken first
        docs = [
            {"_id": ObjectId(), "t": p.tenant, "s": p.sub_id, "d": escape_doc(p.data)}
            for p in pending
        ]
        if docs:
            with driver_errors():
                await self.db.outbox.insert_many(docs, ordered=True)

    async def take_over(self, limit: int) -> list[PendingNotification]:
        taken: list[PendingNotification] = []
        with driver_errors():
            while len(taken) < limit:  # one at a time: each document goes to one taker
                doc = await self.db.outbox.find_one_and_delete({}, sort=[("_id", ASCENDING)])
                if doc is None:
                    break
                taken.append(PendingNotification(doc["t"], doc["s"], unescape_doc(doc["d"])))
        return taken

    async def claim_notification(
        self, tenant: str, sub_id: str, *, now: float, min_gap: float
    ) -> bool:
        with driver_errors():
            row = await self.db.subscriptions.find_one_and_update(
                {
                    "_id": _key(tenant, sub_id),
                    "$or": [{"last_claim": None}, {"last_claim": {"$lte": now - min_gap}}],
                },
                {"$set": {"last_claim": now}},
                projection={"_id": 1},
            )
        return row is not None

    # -- context source registrations ---------------------------------------------------------

    async def put_registration(
        self, tenant: str, kind: RegistrationKind, doc: dict[str, Any], *, create: bool
    ) -> None:
        reg_id = doc["id"]
        key = {"t": tenant, "k": kind, "i": reg_id}
        what = "registration" if kind == "registration" else "context source subscription"
        with driver_errors():
            if create:
                counter = await self.db.counters.find_one_and_update(
                    {"_id": "registrations"}, {"$inc": {"n": 1}}, upsert=True, return_document=True
                )
                try:
                    await self.db.registrations.insert_one(
                        {
                            "_id": key,
                            "t": tenant,
                            "k": kind,
                            "seq": counter["n"] if counter else 0,
                            "doc": escape_doc(doc),
                        }
                    )
                except DuplicateKeyError:
                    raise AlreadyExists(f"{what} {reg_id} already exists") from None
                await self._note_tenant(tenant)
            else:
                res = await self.db.registrations.update_one(
                    {"_id": key}, {"$set": {"doc": escape_doc(doc)}}
                )
                if res.matched_count == 0:
                    raise ResourceNotFound(f"{what} {reg_id} not found")

    async def get_registration(
        self, tenant: str, kind: RegistrationKind, reg_id: str
    ) -> dict[str, Any] | None:
        with driver_errors():
            row = await self.db.registrations.find_one(
                {"_id": {"t": tenant, "k": kind, "i": reg_id}}
            )
        return unescape_doc(row["doc"]) if row else None

    async def list_registrations(self, tenant: str, kind: RegistrationKind) -> list[dict[str, Any]]:
        with driver_errors():
            return [
                unescape_doc(row["doc"])
                async for row in self.db.registrations.find({"t": tenant, "k": kind}).sort(
                    "seq", ASCENDING
                )
            ]

    async def delete_registration(self, tenant: str, kind: RegistrationKind, reg_id: str) -> bool:
        with driver_errors():
            res = await self.db.registrations.delete_one(
                {"_id": {"t": tenant, "k": kind, "i": reg_id}}
            )
        return res.deleted_count > 0

    async def record_registration_notifications(
        self, records: Sequence[NotificationRecord]
    ) -> None:
        ops = []
        for r in records:
            update: dict[str, Any] = {"$inc": {"sent": r.sent, "failed": r.failed}}
            latest = {
                k: v
                for k, v in (
                    ("last_notification", r.last_notification),
                    ("last_success", r.last_success),
                    ("last_failure", r.last_failure),
                )
                if v is not None
            }
            if latest:
                update["$set"] = latest
            key = {"t": r.tenant, "k": "subscription", "i": r.sub_id}
            # no upsert: records of deleted subscriptions match nothing
            ops.append(UpdateOne({"_id": key}, update))
        if ops:
            with driver_errors():
                await self.db.registrations.bulk_write(ops, ordered=False)

    async def registration_status(self, tenant: str, sub_id: str) -> dict[str, Any]:
        with driver_errors():
            row = await self.db.registrations.find_one(
                {"_id": {"t": tenant, "k": "subscription", "i": sub_id}},
                projection={"doc": 0},
            )
        if row is None:
            return {}
        return _delivery_status(row)

    async def hub_identity(self, proposed: str) -> str:
        with driver_errors():
            # another process inserting it at the same moment: read theirs
            with contextlib.suppress(DuplicateKeyError):
                await self.db.counters.update_one(
                    {"_id": "hub_id"}, {"$setOnInsert": {"value": proposed}}, upsert=True
                )
            row = await self.db.counters.find_one({"_id": "hub_id"})
        return str(row["value"]) if row else proposed

    # -- contexts -----------------------------------------------------------------------------

    @staticmethod
    def _record(row: Doc) -> ContextRecord:
        return ContextRecord(
            id=row["_id"],
            url=row["url"],
            kind=row["kind"],
            document=unescape_doc(row["doc"]),
            created_at=row["created_at"],
            last_usage=row.get("last_usage"),
            hits=row.get("hits", 0),
        )

    async def put_context(self, record: ContextRecord) -> None:
        doc = {
            "_id": record.id,
            "url": record.url,
            "kind": record.kind,
            "doc": escape_doc(record.document),
            "created_at": record.created_at,
            "last_usage": record.last_usage,
            "hits": record.hits,
        }
        with driver_errors():
            await self.db.contexts.replace_one({"_id": record.id}, doc, upsert=True)

    async def get_context(self, context_id: str) -> ContextRecord | None:
        with driver_errors():
            row = await self.db.contexts.find_one({"_id": context_id})
        return self._record(row) if row else None

    async def list_contexts(self) -> list[ContextRecord]:
        with driver_errors():
            return [
                self._record(row)
                async for row in self.db.contexts.find().sort([("created_at", 1), ("_id", 1)])
            ]

    async def delete_context(self, context_id: str) -> bool:
        with driver_errors():
            res = await self.db.contexts.delete_one({"_id": context_id})
        return res.deleted_count > 0

    # -- attribute history --------------------------------------------------------------------

    async def history_entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None = None
    ) -> tuple[list[HistoryEntity], int | None]:
        with driver_errors():
            return await self._history.entities(tenant, query, window)

    async def history(self, tenant: str, entity_ids: Sequence[str], query: HistoryQuery) -> History:
        with driver_errors():
            return await self._history.history(tenant, entity_ids, query)

    async def aggregate_history(
        self,
        tenant: str,
        entity_ids: Sequence[str],
        query: HistoryQuery,
        methods: Sequence[str],
        period: Duration | None,
    ) -> Aggregates:
        with driver_errors():
            return await self._history.aggregate(tenant, entity_ids, query, methods, period)

    async def delete_history(
        self,
        tenant: str,
        entity_id: str,
        *,
        attr: str | None = None,
        dataset_id: str | AnyDataset | None = ANY_DATASET,
        instance_id: str | None = None,
    ) -> int:
        with driver_errors():
            return await self._history.delete(
                tenant, entity_id, attr=attr, dataset_id=dataset_id, instance_id=instance_id
            )

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        with driver_errors():
            return await self._history.replace(tenant, entity_id, attr, instance_id, row)

    async def expire_history(self, now: int) -> int:
        with driver_errors():
            return await self._history.expire(self.history_policy, now)


#: a subscription's delivery record: its notificationStatus member -> the stored field
#: (registration subscriptions keep the first three)
_STATUS_FIELDS = (
    ("lastNotification", "last_notification"),
    ("lastSuccess", "last_success"),
    ("lastFailure", "last_failure"),
    ("lastSuccessCode", "last_success_code"),
    ("lastFailureReason", "last_failure_reason"),
)


def _delivery_status(row: Doc) -> dict[str, Any]:
    """The delivery counts and times of a subscription's stored record."""
    status: dict[str, Any] = {"timesSent": row.get("sent", 0), "timesFailed": row.get("failed", 0)}
    for key, field in _STATUS_FIELDS:
        if row.get(field) is not None:
            status[key] = row[field]
    return status
