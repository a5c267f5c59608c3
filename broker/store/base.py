"""The store contract: what every backend (SQLite, MongoDB) provides to the services.

Backends keep entities in the broker's internal form (``broker.core.model``): expanded
IRIs for types and attribute names. They know nothing of HTTP or JSON-LD.

Writes go through one primitive, :meth:`Store.write`: a list of ``(entity_id,
mutation)`` pairs for one tenant. A mutation receives the stored entity (or None) and
returns the entity to store, :data:`DELETE`, or raises an ``NgsiLdError`` to reject
that entity. Each entity is written atomically and independently: a rejected or
failed mutation writes nothing for its entity and does not stop the others. A
backend applies the whole list in as few transactions as it can (one, for SQLite),
which is what makes batch operations cheap. Mutations must be pure functions of
their input, and raise nothing but ``NgsiLdError`` for an entity they cannot apply
to: a backend may call one more than once (optimistic retries), and on the state it
expects the entity to have, which only the call on the state actually stored turns
into a write.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from broker.core.history import Duration, HistoryPolicy, HistoryRow
from broker.core.model import Entity
from broker.errors import AlreadyExists, NgsiLdError, NotImplementedYet


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"

    def __reduce__(self) -> str:
        return "DELETE"  # unpickles as this module's one instance


#: Returned by a mutation to delete the entity.
DELETE: Final = _Delete()

Mutation = Callable[[Entity | None], "Entity | _Delete"]


class Create:
    """The mutation that creates ``entity``; on a stored entity it fails with
    AlreadyExists. A backend may take what it expects, no stored entity, as its guess
    and skip reading the entity before the write (the write still checks it)."""

    __slots__ = ("entity",)

    def __init__(self, entity: Entity) -> None:
        self.entity = entity

    def __call__(self, current: Entity | None) -> Entity:
        if current is not None:
            raise AlreadyExists(f"entity {self.entity['id']} already exists")
        return self.entity  # the store serialises it; nothing mutates it afterwards


@dataclass(slots=True)
class WriteResult:
    """The outcome for one entity of a :meth:`Store.write` call."""

    id: str
    before: Entity | None = None
    after: Entity | None = None
    error: NgsiLdError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True, frozen=True)
class Selector:
    """One entity selector of a query body: its parts are ANDed."""

    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    types: Sequence[Sequence[str]] | None = None


@dataclass(slots=True)
class EntityQuery:
    """Backend-neutral selection of entities.

    ``q`` is a resolved ``broker.query.ast.Node``, ``geo`` a resolved ``GeoQuery`` and
    ``scope_q`` a ``ScopeQuery``; ``broker.query.evaluate`` defines what they match.
    ``selectors`` (POST /entityOperations/query) are ORed, and ANDed with the rest.
    """

    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    #: Disjunction of conjunctions of expanded type IRIs: [[A], [B, C]] = A | (B ; C).
    types: Sequence[Sequence[str]] | None = None
    #: Entities must have at least one of these attributes (expanded IRIs).
    attrs: Sequence[str] | None = None
    q: Any = None
    geo: Any = None
    scope_q: Any = None
    selectors: Sequence[Selector] | None = None
    #: Sort keys, each (key, descending): key is "id", "type", "createdAt", "modifiedAt"
    #: or a resolved ``AttrPath`` (an attribute's smallest value sorts it).
    order_by: Sequence[tuple[Any, bool]] | None = None
    limit: int = 20
    offset: int = 0
    count: bool = False


@dataclass(slots=True)
class Discovery:
    """What a tenant holds, for type and attribute discovery. All names are expanded IRIs."""

    #: entity type -> number of entities of that type
    types: dict[str, int]
    #: attribute -> number of entities having it
    attributes: dict[str, int]
    #: (entity type, attribute) -> attribute kinds seen (Property, Relationship, ...)
    type_attributes: dict[tuple[str, str], set[str]]


@dataclass(slots=True)
class NotificationRecord:
    """Delivery outcomes of one subscription since the last record."""

    tenant: str
    sub_id: str
    sent: int = 0
    failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None


@dataclass(slots=True)
class ContextRecord:
    """A JSON-LD context kept by the broker (``/jsonldContexts``)."""

    id: str
    url: str
    kind: str  # Hosted | Cached | ImplicitlyCreated
    document: dict[str, Any]
    created_at: str
    last_usage: str | None = None
    hits: int = 0


@dataclass(slots=True)
class HistoryEntity:
    """An entity as the history knows it: it may since have been deleted."""

    id: str
    types: list[str]
    scope: list[str] | None
    created: int
    modified: int
    deleted: int | None = None


@dataclass(slots=True)
class HistoryQuery:
    """Which instances of the selected entities' history to read (times in µs).

    ``time_property`` is "observedAt" (the instance's time: its observedAt, or its
    write time when it has none), "createdAt" or "modifiedAt". ``timerel`` "before"
    and "after" use ``time_at``; "between" is ``time_at <= t < end_time_at``.
    ``last_n`` keeps the last N instances (by time) of each attribute; ``limit``
    bounds the instances returned per attribute, the earliest first.
    """

    attrs: Sequence[str] | None = None
    time_property: str = "observedAt"
    timerel: str | None = None
    time_at: int | None = None
    end_time_at: int | None = None
    last_n: int | None = None
    limit: int = 1000


#: Per entity, per attribute: the history rows, ordered by time.
History = dict[str, dict[str, list[HistoryRow]]]


@dataclass(slots=True)
class AttrAggregate:
    """Aggregates of one attribute: per method, ``(value, period start, period end)``
    for each period that has instances (times in µs)."""

    kind: str
    values: dict[str, list[tuple[Any, int, int]]] = field(default_factory=dict)


#: Per entity, per attribute.
Aggregates = dict[str, dict[str, AttrAggregate]]


class _AnyDataset:
    def __repr__(self) -> str:
        return "ANY_DATASET"

    def __reduce__(self) -> str:
        return "ANY_DATASET"  # unpickles as this module's one instance


#: ``delete_history`` of every datasetId of an attribute.
ANY_DATASET: Final = _AnyDataset()


def _no_history() -> NotImplementedYet:
    return NotImplementedYet("this store backend does not keep attribute history yet")


class Store(abc.ABC):
    """Async store contract. Tenants are plain strings; "" is the default tenant.

    Every write also appends to the attribute history (``broker.core.history``) in
    the same transaction, for the entity types ``history_policy`` records.
    """

    history_policy: HistoryPolicy = HistoryPolicy()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create schema and indexes (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending writes are committed or rolled back."""

    # -- tenants ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def tenant_exists(self, tenant: str) -> bool:
        """True when the tenant has been written to (the default tenant always exists)."""

    @abc.abstractmethod
    async def tenants(self) -> list[str]:
        """All tenants that hold or held data."""

    # -- entities -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        """The stored entity, or None."""

    @abc.abstractmethod
    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        """Apply mutations, each entity atomically; results in the order given.

        The same id may appear more than once: later mutations see earlier results.
        Creates the tenant on its first successful write. Each successful write also
        appends to the entity's history, in the same transaction: what changed
        (``broker.core.history.changes``), or the rows ``history`` gives for its id
        (the temporal API, which brings its own instances).
        """

    @abc.abstractmethod
    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        """Entities matching ``query`` ordered by ``order_by`` then by id, paged;
        the total number of matches when ``query.count``."""

    # -- discovery ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def discovery(self, tenant: str) -> Discovery:
        """Entity types and attributes in use, with counts (``/types``, ``/attributes``)."""

    # -- subscriptions ------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_subscription(self, tenant: str, sub: dict[str, Any], *, create: bool) -> None:
        """Store a subscription document (its ``id`` member names it).

        ``create``: AlreadyExists when the id is taken; otherwise ResourceNotFound when
        it is missing. Notification status kept by :meth:`record_notifications` is not
        touched by an update.
        """

    @abc.abstractmethod
    async def get_subscription(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        """The subscription document with its current ``notificationStatus`` member."""

    @abc.abstractmethod
    async def list_subscriptions(self, tenant: str) -> list[dict[str, Any]]:
        """All subscriptions of a tenant (with status), oldest first."""

    @abc.abstractmethod
    async def delete_subscription(self, tenant: str, sub_id: str) -> bool: ...

    @abc.abstractmethod
    async def record_notifications(self, records: Sequence[NotificationRecord]) -> None:
        """Add delivery outcomes to subscriptions' status, all in one write.

        Every attempt counts in timesSent, failed ones also in timesFailed; the last*
        times given replace the stored ones. Records of deleted subscriptions are ignored."""

    @abc.abstractmethod
    async def claim_notification(
        self, tenant: str, sub_id: str, *, now: float, min_gap: float
    ) -> bool:
        """Atomically take the right to notify now: true when the last claim is at least
        ``min_gap`` seconds old (or there was none). Several broker processes sharing
        one store use it so throttling and ``timeInterval`` hold across all of them."""

    # -- JSON-LD contexts ---------------------------------------------------------------------

    @abc.abstractmethod
    async def put_context(self, record: ContextRecord) -> None:
        """Insert or replace a context record (by id)."""

    @abc.abstractmethod
    async def get_context(self, context_id: str) -> ContextRecord | None: ...

    @abc.abstractmethod
    async def list_contexts(self) -> list[ContextRecord]: ...

    @abc.abstractmethod
    async def delete_context(self, context_id: str) -> bool:
        """Delete a context record; False when there was none."""

    # -- attribute history (temporal API) ----------------------------------------------------

    async def history_entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None = None
    ) -> tuple[list[HistoryEntity], int | None]:
        """Entities with history matching ``query``'s ids, id pattern, types, attrs and
        selectors (not q, geo, scopes or order: the service evaluates those), ordered by
        id and paged; the number of matches when ``query.count``. With ``window``, only
        entities having an instance it selects (its time range and attributes)."""
        raise _no_history()

    async def history(self, tenant: str, entity_ids: Sequence[str], query: HistoryQuery) -> History:
        """The history rows of these entities that ``query`` selects."""
        raise _no_history()

    async def aggregate_history(
        self,
        tenant: str,
        entity_ids: Sequence[str],
        query: HistoryQuery,
        methods: Sequence[str],
        period: Duration | None,
    ) -> Aggregates:
        """Aggregates (``broker.core.history.AGGR_METHODS``) of the instances ``query``
        selects, computed in the store, per ``period`` starting at each entity's first
        instance (one period for the whole range without it). Periods without
        instances, and entities or attributes without any, are left out. Numeric
        methods skip non-numeric values; the stddev is the population one."""
        raise _no_history()

    async def delete_history(
        self,
        tenant: str,
        entity_id: str,
        *,
        attr: str | None = None,
        dataset_id: str | _AnyDataset | None = ANY_DATASET,
        instance_id: str | None = None,
    ) -> int:
        """Delete history: a whole entity's, an attribute's (one datasetId or all) or one
        instance. Returns how many instances (or, for a whole entity, entries) went."""
        raise _no_history()

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        """Replace one instance's content, keeping its id and creation time."""
        raise _no_history()

    async def expire_history(self, now: int) -> int:
        """Drop instances older than ``history_policy`` keeps; returns how many."""
        raise _no_history()
