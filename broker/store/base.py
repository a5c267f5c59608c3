"""The store contract: what every backend (SQLite, MongoDB) provides to the services.

Backends keep entities in the broker's internal form (``broker.model.entity``):
expanded IRIs for types and attribute names. They know nothing of HTTP or JSON-LD.

The contract is a few narrow protocols, one per concern, so a service asks only for
what it uses: :class:`EntityStore` (entities, queries and discovery),
:class:`HistoryStore` (attribute history), :class:`SubscriptionStore`,
:class:`ContextStore` and :class:`RegistrationStore` (context source registrations and
their subscriptions). A backend implements them all; :class:`Store` is their union
with the connection lifecycle. The values passed and returned are
``broker.model.store``'s.

Writes go through one primitive, :meth:`EntityStore.write`: a list of ``(entity_id,
mutation)`` pairs for one tenant. Each entity is written atomically and
independently: a rejected or failed mutation writes nothing for its entity and does
not stop the others. A backend applies the whole list in as few transactions as it
can (one, for SQLite), which is what makes batch operations cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from broker.model.entity import Entity
from broker.model.history import Duration, HistoryPolicy, HistoryRow
from broker.model.store import (
    ANY_DATASET,
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


class EntityStore(Protocol):
    """Entities of every tenant, their queries and discovery. Tenants are plain
    strings; "" is the default tenant."""

    async def tenant_exists(self, tenant: str) -> bool:
        """True when the tenant has been written to (the default tenant always exists)."""

    async def tenants(self) -> list[str]:
        """All tenants that hold or held data."""

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        """The stored entity, or None."""

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
        (``broker.model.history.changes``), or the rows ``history`` gives for its id
        (the temporal API, which brings its own instances).
        """

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        """Entities matching ``query`` ordered by ``order_by`` then by id, paged;
        the total number of matches when ``query.count``."""

    async def discovery(self, tenant: str) -> Discovery:
        """Entity types and attributes in use, with counts (``/types``, ``/attributes``)."""

    async def expired_entities(self, now: int, limit: int = 1000) -> list[tuple[str, str]]:
        """(tenant, id) of up to ``limit`` transient entities whose ``expiresAt`` is at or
        before ``now`` (µs), soonest first. Every other read already leaves them out
        (``get_entity`` gives None, ``query`` skips them) and ``write`` hands mutations
        None for them; this is what the background purge deletes."""


class HistoryStore(Protocol):
    """Attribute history (the temporal API). Every entity write also appends to it in
    the same transaction, for the entity types ``history_policy`` records."""

    history_policy: HistoryPolicy = HistoryPolicy()

    async def history_entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None = None
    ) -> tuple[list[HistoryEntity], int | None]:
        """Entities with history matching ``query``'s ids, id pattern, types, attrs and
        selectors (not q, geo, scopes or order: the service evaluates those), ordered by
        id and paged; the number of matches when ``query.count``. With ``window``, only
        entities having an instance it selects (its time range and attributes)."""

    async def history(self, tenant: str, entity_ids: Sequence[str], query: HistoryQuery) -> History:
        """The history rows of these entities that ``query`` selects."""

    async def aggregate_history(
        self,
        tenant: str,
        entity_ids: Sequence[str],
        query: HistoryQuery,
        methods: Sequence[str],
        period: Duration | None,
    ) -> Aggregates:
        """Aggregates (``broker.model.history.AGGR_METHODS``) of the instances ``query``
        selects, computed in the store, per ``period`` starting at each entity's first
        instance (one period for the whole range without it). Periods without
        instances, and entities or attributes without any, are left out. Numeric
        methods skip non-numeric values; the stddev is the population one."""

    async def delete_history(
        self,
        tenant: str,
        entity_id: str,
        *,
        attr: str | None = None,
        dataset_id: str | AnyDataset | None = ANY_DATASET,
        instance_id: str | None = None,
    ) -> int:
        """Delete history: a whole entity's, an attribute's (one datasetId or all) or one
        instance. Returns how many instances (or, for a whole entity, entries) went."""

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        """Replace one instance's content, keeping its id and creation time."""

    async def expire_history(self, now: int) -> int:
        """Drop instances older than ``history_policy`` keeps; returns how many."""


class SubscriptionStore(Protocol):
    """Subscription documents and their notification status."""

    async def put_subscription(self, tenant: str, sub: dict[str, Any], *, create: bool) -> None:
        """Store a subscription document (its ``id`` member names it).

        ``create``: AlreadyExists when the id is taken; otherwise ResourceNotFound when
        it is missing. Notification status kept by :meth:`record_notifications` is not
        touched by an update.
        """

    async def get_subscription(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        """The subscription document with its current ``notificationStatus`` member."""

    async def list_subscriptions(self, tenant: str) -> list[dict[str, Any]]:
        """All subscriptions of a tenant (with status), oldest first."""

    async def delete_subscription(self, tenant: str, sub_id: str) -> bool: ...

    async def record_notifications(self, records: Sequence[NotificationRecord]) -> None:
        """Add delivery outcomes to subscriptions' status, all in one write.

        Every attempt counts in timesSent, failed ones also in timesFailed; the last*
        times, ``lastSuccessCode`` and ``lastFailureReason`` given replace the stored
        ones; ``failsCounter`` (consecutive failures) is replaced by a record's
        ``trailing_failures`` when it has ``reset``, else grows by them. The status
        shows ``failsCounter``, ``lastSuccessCode`` and ``lastFailureReason`` only when
        set (and not 0). Records of deleted subscriptions are ignored."""

    async def claim_notification(
        self, tenant: str, sub_id: str, *, now: float, min_gap: float
    ) -> bool:
        """Atomically take the right to notify now: true when the last claim is at least
        ``min_gap`` seconds old (or there was none). Several broker processes sharing
        one store use it so throttling and ``timeInterval`` hold across all of them."""

    async def hand_over(self, pending: Sequence[PendingNotification]) -> None:
        """Keep notifications a stopping process has not delivered, in one write, for
        whichever process sharing the store takes them (:meth:`take_over`)."""

    async def take_over(self, limit: int) -> list[PendingNotification]:
        """Remove and return up to ``limit`` handed-over notifications, oldest first.
        Each goes to one caller only, however many processes ask at once."""


class ContextStore(Protocol):
    """JSON-LD contexts kept by the broker (``/jsonldContexts``); not per tenant."""

    async def put_context(self, record: ContextRecord) -> None:
        """Insert or replace a context record (by id)."""

    async def get_context(self, context_id: str) -> ContextRecord | None: ...

    async def list_contexts(self) -> list[ContextRecord]: ...

    async def delete_context(self, context_id: str) -> bool:
        """Delete a context record; False when there was none."""


#: What a :class:`RegistrationStore` keeps: context source registrations (clause 5.2.9),
#: context source registration subscriptions (clause 5.2.12, ``csourceSubscriptions``)
#: or the entity maps of distributed queries (clause 5.2.39, ``broker.core.entitymaps``).
RegistrationKind = Literal["registration", "subscription", "entityMap"]


class RegistrationStore(Protocol):
    """Context source registrations and the subscriptions to them, per tenant: documents
    named by their ``id`` member, listed in the order they were created. They are few
    (one per context source and data set), so the federation layer reads a tenant's
    whole list and matches it in memory; the store only keeps them. Entity maps are kept
    here too (a bounded number per tenant, ``broker.core.entitymaps``)."""

    async def put_registration(
        self, tenant: str, kind: RegistrationKind, doc: dict[str, Any], *, create: bool
    ) -> None:
        """Store a document. ``create``: AlreadyExists when the id is taken; otherwise
        ResourceNotFound when it is missing."""

    async def get_registration(
        self, tenant: str, kind: RegistrationKind, reg_id: str
    ) -> dict[str, Any] | None: ...

    async def list_registrations(self, tenant: str, kind: RegistrationKind) -> list[dict[str, Any]]:
        """All documents of a tenant, oldest first."""

    async def delete_registration(self, tenant: str, kind: RegistrationKind, reg_id: str) -> bool:
        """Delete a document; False when there was none (its delivery status goes too)."""

    async def record_registration_notifications(
        self, records: Sequence[NotificationRecord]
    ) -> None:
        """Add delivery outcomes to registration subscriptions' status (``kind``
        ``subscription``), all in one write, as :meth:`SubscriptionStore.record_notifications`
        does for subscriptions: attempts add to timesSent, failed ones to timesFailed,
        the ``last*`` times given replace the stored ones. Kept in the store, so every
        process sharing it, and the same one restarted, shows the same counts. Records
        of deleted subscriptions are ignored."""

    async def registration_status(self, tenant: str, sub_id: str) -> dict[str, Any]:
        """The delivery status of a registration subscription: ``timesSent``,
        ``timesFailed`` and those of ``lastNotification``, ``lastSuccess`` and
        ``lastFailure`` that are set; empty when it is missing."""

    async def hub_identity(self, proposed: str) -> str:
        """The name this store's hub gives itself (``Via``, loop detection): the one
        kept, or ``proposed``, kept from now on, when there is none yet. Several
        processes starting at once on one store all get the same name."""


class Store(
    EntityStore, HistoryStore, SubscriptionStore, ContextStore, RegistrationStore, Protocol
):
    """A whole backend: every concern, and the connection lifecycle."""

    async def open(self) -> None:
        """Connect, create schema and indexes (idempotent)."""

    async def close(self) -> None:
        """Release connections; pending writes are committed or rolled back."""
