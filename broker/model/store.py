"""The value types the services hand the stores, and the stores hand back.

Writes go through one primitive, a store's ``write``: a list of ``(entity_id,
mutation)`` pairs for one tenant. A mutation receives the stored entity (or None) and
returns the entity to store, :data:`DELETE`, or raises an ``NgsiLdError`` to reject
that entity. Mutations must be pure functions of their input, and raise nothing but
``NgsiLdError`` for an entity they cannot apply to: a backend may call one more than
once (optimistic retries), and on the state it expects the entity to have, which only
the call on the state actually stored turns into a write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from broker.errors import AlreadyExists, NgsiLdError
from broker.model.entity import Entity, live
from broker.model.history import HistoryRow
from broker.model.query import AttrPath, GeoQuery, Node, ScopeQuery


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
        if live(current) is not None:
            raise AlreadyExists(f"entity {self.entity['id']} already exists")
        return self.entity  # the store serialises it; nothing mutates it afterwards


@dataclass(slots=True)
class WriteResult:
    """The outcome for one entity of a store's ``write`` call."""

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

    ``q``, ``geo`` and ``scope_q`` are resolved (attribute names expanded) query
    nodes; ``broker.query.evaluate`` defines what they match.
    ``selectors`` (POST /entityOperations/query) are ORed, and ANDed with the rest.
    """

    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    #: Disjunction of conjunctions of expanded type IRIs: [[A], [B, C]] = A | (B ; C).
    types: Sequence[Sequence[str]] | None = None
    #: Entities must have at least one of these attributes (expanded IRIs).
    attrs: Sequence[str] | None = None
    q: Node | None = None
    geo: GeoQuery | None = None
    scope_q: ScopeQuery | None = None
    selectors: Sequence[Selector] | None = None
    #: Sort keys, each (key, descending): key is "id", "type", "createdAt", "modifiedAt"
    #: or a resolved ``AttrPath`` (an attribute's smallest value sorts it).
    order_by: Sequence[tuple[str | AttrPath, bool]] | None = None
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
    #: HTTP status the endpoint answered the last successful delivery with
    last_success_code: int | None = None
    #: why the last failed delivery failed (an NGSI v2 subscription shows it)
    last_failure_reason: str | None = None
    #: failures since the last success recorded here; ``reset``: a success came in this
    #: record, so the stored run of consecutive failures ends and ``trailing_failures``
    #: starts the new one (else they add to it)
    trailing_failures: int = 0
    reset: bool = False


@dataclass(slots=True)
class PendingNotification:
    """Changes matched for a subscription and not yet delivered when a broker process
    stopped: handed to the store, so that another process sharing it (a replica, or
    the same one restarted) sends them. ``data`` is the notification's rendered
    entities, in the order they changed."""

    tenant: str
    sub_id: str
    data: list[dict[str, Any]]


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


class AnyDataset:
    def __repr__(self) -> str:
        return "ANY_DATASET"

    def __reduce__(self) -> str:
        return "ANY_DATASET"  # unpickles as this module's one instance


#: ``delete_history`` of every datasetId of an attribute.
ANY_DATASET: Final = AnyDataset()
