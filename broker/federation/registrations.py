"""Context source registrations (clauses 5.2.9, 5.9, 5.10 and 4.3.6).

A registration says that a context source (another broker, a city's hub) can answer for
some entities: ``information`` lists, per group, entity selectors (id, idPattern, type)
and attribute names (``propertyNames``, ``relationshipNames``); none means "any". Its
``mode`` says how the sources' data mixes with what this hub holds (clause 4.3.6.2):

* ``inclusive`` (the default): the source adds to what is held here;
* ``exclusive``: the attributes it names for an entity id live only at the source;
* ``redirect``: the entities live only at the source(s); nothing is held here;
* ``auxiliary``: the source is only asked for what nobody else has, and never written to.

``operations`` (names or groups, clause 6.3.17 table) says which operations may be
forwarded; ``management`` carries ``localOnly``, ``timeout`` (ms) and ``cooldown`` (ms).

A registration is stored as the client wrote it (terms as given) with the context it was
written under, like a subscription, and compiled (terms expanded) into a
:class:`Registration` for matching. Registrations are few: the service keeps each
tenant's compiled list, read again after ``cache_ttl`` and after every change made here.

Conflict rules (clause 4.3.6.2): an exclusive registration of an entity id and
attributes conflicts with an exclusive or redirect registration naming the same entity
id and one of the same attributes, and with an entity held here that has one of those
attributes; a redirect registration conflicts with an exclusive one the same way. A
conflicting registration is refused with 409 ``Conflict``, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from broker.auth.masking import MASK, mask_pairs, mask_uri
from broker.errors import BadRequestData, Conflict, NgsiLdError, ResourceNotFound
from broker.jsonld.context import ContextValue, TermMap
from broker.model.entity import NGSI_LD, Entity, check_entity_id, check_name, now_iso
from broker.model.geo import looks_like_geometry
from broker.model.query import GeoQuery, Node
from broker.outbound import OutboundPolicy, OutboundRefused
from broker.query.evaluate import matches_geo, matches_q
from broker.query.patterns import check_pattern, search
from broker.store.base import RegistrationStore

CSR_TYPE = "ContextSourceRegistration"
MODES = ("inclusive", "exclusive", "redirect", "auxiliary")

#: Operation groups (clause 4.20, table 4.20-2). The temporal writes (upsertTemporal,
#: appendAttrsTemporal, deleteAttrsTemporal, updateAttrInstanceTemporal,
#: deleteAttrInstanceTemporal, deleteTemporal) are in no group: a registration lists them
#: by name to receive them.
GROUPS: dict[str, frozenset[str]] = {
    "retrieveOps": frozenset({"retrieveEntity", "queryEntity"}),
    "updateOps": frozenset({"updateEntity", "updateAttrs", "replaceEntity", "replaceAttrs"}),
    "federationOps": frozenset(
        {
            "retrieveEntity",
            "queryEntity",
            "queryBatch",
            "retrieveTemporal",
            "queryTemporal",
            "retrieveEntityTypes",
            "retrieveEntityTypeDetails",
            "retrieveEntityTypeInfo",
            "retrieveAttrTypes",
            "retrieveAttrTypeDetails",
            "retrieveAttrTypeInfo",
            "createSubscription",
            "updateSubscription",
            "retrieveSubscription",
            "querySubscription",
            "deleteSubscription",
        }
    ),
    "redirectionOps": frozenset(
        {
            "createEntity",
            "updateEntity",
            "appendAttrs",
            "updateAttrs",
            "deleteAttrs",
            "deleteEntity",
            "createBatch",
            "upsertBatch",
            "updateBatch",
            "deleteBatch",
            "mergeEntity",
            "replaceEntity",
            "replaceAttrs",
            "mergeBatch",
            "retrieveEntity",
            "queryEntity",
            "queryBatch",
            "retrieveTemporal",
            "queryTemporal",
            "retrieveEntityTypes",
            "retrieveEntityTypeDetails",
            "retrieveEntityTypeInfo",
            "retrieveAttrTypes",
            "retrieveAttrTypeDetails",
            "retrieveAttrTypeInfo",
            "purgeEntity",
        }
    ),
}
#: Members the broker sets; a client's values for them are ignored.
READ_ONLY = ("status", "timesSent", "timesFailed", "lastSuccess", "lastFailure")
SYSTEM = ("createdAt", "modifiedAt")
#: Members of the registration itself; any other member is a context source property.
MEMBERS = frozenset(
    {
        "id",
        "type",
        "registrationName",
        "description",
        "information",
        "tenant",
        "observationInterval",
        "managementInterval",
        "location",
        "observationSpace",
        "operationSpace",
        "expiresAt",
        "endpoint",
        "contextSourceInfo",
        "scope",
        "mode",
        "operations",
        "refreshRate",
        "management",
        "@context",
        *READ_ONLY,
        *SYSTEM,
    }
)
GEO_MEMBERS = ("location", "observationSpace", "operationSpace")


class ResolveContext(Protocol):
    """The term map of a stored ``@context`` (None: the core context)."""

    async def __call__(self, context: ContextValue | None, /) -> TermMap: ...


def _epoch(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise BadRequestData(f"{what} must be a date-time string")
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestData(f"{what} is not a valid date-time: {text!r}") from None
    if text != text.strip():
        raise BadRequestData(f"{what} is not a valid date-time: {text!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _interval(value: Any, what: str) -> tuple[float, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "startAt" not in value:
        raise BadRequestData(f"{what} must be an object with startAt (and endAt)")
    start = _epoch(value["startAt"], f"{what}.startAt")
    end = _epoch(value["endAt"], f"{what}.endAt") if value.get("endAt") is not None else None
    if end is not None and end < start:
        raise BadRequestData(f"{what}.endAt is before its startAt")
    return start, end


def _names(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequestData(f"{what} must be an array of attribute names")
    return frozenset(check_name(v, "attribute name") for v in value)


def _positive(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequestData(f"{what} must be a positive number")
    return float(value)


def operations_of(names: Iterable[str]) -> frozenset[str]:
    """Operation names with the groups among them replaced by their members."""
    out: set[str] = set()
    for name in names:
        out |= GROUPS.get(name, {name})
    return frozenset(out)


# -- compiled form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityInfo:
    """One entity selector of a registration: expanded types, an id or an id pattern."""

    types: tuple[str, ...]
    id: str | None = None
    pattern: str | None = None

    def holds(self, entity_id: str) -> bool:
        if self.id is not None:
            return self.id == entity_id
        return self.pattern is None or search(self.pattern, entity_id)

    def typed(self, alternatives: Sequence[Sequence[str]]) -> bool:
        """Whether some alternative is satisfied by a type of this selector: a source
        registered for A answers a query for A, and for ``A;B`` (either may be among
        its entities' types)."""
        return any(any(t in self.types for t in alt) for alt in alternatives)

    def overlaps_pattern(self, pattern: str) -> bool:
        if self.id is not None:
            return search(pattern, self.id)
        return True  # two patterns, or no pattern: they may select the same ids


@dataclass(frozen=True, slots=True)
class Info:
    """One ``information`` group: entity selectors (none: any entity) and attribute
    names (none: any attribute), expanded."""

    entities: tuple[EntityInfo, ...] = ()
    properties: frozenset[str] = frozenset()
    relationships: frozenset[str] = frozenset()

    @property
    def attrs(self) -> frozenset[str] | None:
        """The attributes this group is for; None for any."""
        names = self.properties | self.relationships
        return names or None

    def selects(
        self,
        *,
        types: Sequence[Sequence[str]] | None = None,
        ids: Sequence[str] | None = None,
        id_pattern: str | None = None,
        attrs: Iterable[str] | None = None,
    ) -> bool:
        """Whether this group may answer for entities selected so (clause 5.10.2)."""
        if self.entities:

            def fits(e: EntityInfo) -> bool:
                if types and not e.typed(types):
                    return False
                if ids and not any(e.holds(i) for i in ids):
                    return False
                return not (id_pattern and not e.overlaps_pattern(id_pattern))

            if not any(fits(e) for e in self.entities):
                return False
        wanted = set(attrs or ())
        return not wanted or self.attrs is None or bool(wanted & self.attrs)


@dataclass(slots=True)
class Registration:
    """A registration compiled for matching and forwarding."""

    id: str
    doc: dict[str, Any]
    tm: TermMap
    endpoint: str
    infos: tuple[Info, ...]
    mode: str = "inclusive"
    operations: frozenset[str] = GROUPS["federationOps"]
    expires_at: float | None = None
    #: seconds to wait for the source, and to leave it alone after it failed
    timeout: float | None = None
    cooldown: float | None = None
    local_only: bool = False
    #: ``contextSourceInfo`` key/value pairs, sent as headers when forwarding
    source_info: tuple[tuple[str, str], ...] = ()
    #: the tenant to ask the source for (its ``tenant`` member)
    tenant: str | None = None
    observation: tuple[float, float | None] | None = None
    management: tuple[float, float | None] | None = None
    #: a pseudo-entity of the registration's own members and context source
    #: properties (expanded), which ``q``, ``csf`` and geo-queries are evaluated on
    subject: Entity = field(default_factory=dict)

    def active(self, now: float | None = None) -> bool:
        return self.expires_at is None or self.expires_at > (now or time.time())

    def supports(self, operation: str) -> bool:
        return operation in self.operations

    def infos_for(
        self,
        *,
        types: Sequence[Sequence[str]] | None = None,
        ids: Sequence[str] | None = None,
        id_pattern: str | None = None,
        attrs: Iterable[str] | None = None,
    ) -> list[Info]:
        wanted = list(attrs) if attrs else None
        return [
            i
            for i in self.infos
            if i.selects(types=types, ids=ids, id_pattern=id_pattern, attrs=wanted)
        ]

    def attrs_for(self, infos: Sequence[Info]) -> frozenset[str] | None:
        """The attributes these groups are for together; None for any."""
        out: set[str] = set()
        for info in infos:
            if info.attrs is None:
                return None
            out |= info.attrs
        return frozenset(out)

    def types_for(self, infos: Sequence[Info]) -> frozenset[str] | None:
        """The entity types these groups name; None when one is for any entity."""
        out: set[str] = set()
        for info in infos:
            if not info.entities:
                return None
            for e in info.entities:
                out.update(e.types)
        return frozenset(out)


def check_document(doc: dict[str, Any]) -> None:
    """Raise BadRequestData unless ``doc`` is a valid registration (clause 5.2.9)."""
    if doc.get("type") != CSR_TYPE:
        raise BadRequestData(f"a context source registration must have type {CSR_TYPE}")
    check_entity_id(doc.get("id"), "registration id")
    endpoint = doc.get("endpoint")
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise BadRequestData("endpoint must be the URI of the context source")
    info = doc.get("information")
    if not isinstance(info, list) or not info:
        raise BadRequestData("information must be a non-empty array of RegistrationInfo")
    for n, item in enumerate(info):
        what = f"information[{n}]"
        if not isinstance(item, dict):
            raise BadRequestData(f"{what} must be an object")
        unknown = set(item) - {"entities", "propertyNames", "relationshipNames"}
        if unknown:
            raise BadRequestData(f"{what} has unknown members: {', '.join(sorted(unknown))}")
        if not any(item.get(k) for k in ("entities", "propertyNames", "relationshipNames")):
            raise BadRequestData(
                f"{what} needs entities, propertyNames or relationshipNames (not empty)"
            )
        for key in ("propertyNames", "relationshipNames"):
            if key in item:
                _names(item[key], f"{what}.{key}")
        if "entities" in item:
            ents = item["entities"]
            if not isinstance(ents, list) or not ents:
                raise BadRequestData(f"{what}.entities must be a non-empty array")
            for e in ents:
                if not isinstance(e, dict) or not isinstance(e.get("type"), str | list):
                    raise BadRequestData(f"{what}.entities: each needs a type")
                types = e["type"] if isinstance(e["type"], list) else [e["type"]]
                if not types:
                    raise BadRequestData(f"{what}.entities: each needs a type")
                for t in types:
                    check_name(t, "entity type")
                if "id" in e:
                    check_entity_id(e["id"])
                if "idPattern" in e:
                    if not isinstance(e["idPattern"], str):
                        raise BadRequestData(f"{what}.entities: idPattern must be a string")
                    check_pattern(e["idPattern"])
    mode = doc.get("mode", "inclusive")
    if mode not in MODES:
        raise BadRequestData(f"mode must be one of {', '.join(MODES)}")
    ops = doc.get("operations")
    if ops is not None and (
        not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops)
    ):
        raise BadRequestData("operations must be a non-empty array of operation names")
    for key in ("registrationName", "description", "tenant", "refreshRate"):
        if key in doc and not isinstance(doc[key], str):
            raise BadRequestData(f"{key} must be a string")
    if "expiresAt" in doc:
        _epoch(doc["expiresAt"], "expiresAt")
    _interval(doc.get("observationInterval"), "observationInterval")
    _interval(doc.get("managementInterval"), "managementInterval")
    for key in GEO_MEMBERS:
        if key in doc and not looks_like_geometry(doc[key]):
            raise BadRequestData(f"{key} must be a GeoJSON geometry")
    info_pairs = doc.get("contextSourceInfo")
    if info_pairs is not None and not (
        isinstance(info_pairs, list)
        and all(
            isinstance(p, dict)
            and isinstance(p.get("key"), str)
            and isinstance(p.get("value"), str)
            for p in info_pairs
        )
    ):
        raise BadRequestData("contextSourceInfo must be an array of {key, value} strings")
    scope = doc.get("scope")
    if scope is not None and not (
        isinstance(scope, str)
        or (isinstance(scope, list) and all(isinstance(s, str) for s in scope))
    ):
        raise BadRequestData("scope must be a string or an array of strings")
    management = doc.get("management")
    if management is not None:
        if not isinstance(management, dict):
            raise BadRequestData("management must be an object")
        if "localOnly" in management and not isinstance(management["localOnly"], bool):
            raise BadRequestData("management.localOnly must be true or false")
        for key in ("timeout", "cooldown", "cacheDuration"):
            _positive(management.get(key), f"management.{key}")


def compile_document(doc: dict[str, Any], tm: TermMap) -> Registration:
    """A valid registration document (``check_document``) compiled with its term map."""
    infos = []
    for item in doc["information"]:
        ents = []
        for e in item.get("entities") or ():
            types = e["type"] if isinstance(e["type"], list) else [e["type"]]
            ents.append(
                EntityInfo(
                    types=tuple(tm.expand(t) for t in types),
                    id=e.get("id"),
                    pattern=e.get("idPattern") if "id" not in e else None,
                )
            )
        infos.append(
            Info(
                entities=tuple(ents),
                properties=frozenset(tm.expand(p) for p in item.get("propertyNames") or ()),
                relationships=frozenset(tm.expand(r) for r in item.get("relationshipNames") or ()),
            )
        )
    management = doc.get("management") or {}
    timeout = _positive(management.get("timeout"), "management.timeout")
    cooldown = _positive(management.get("cooldown"), "management.cooldown")
    subject: Entity = {"id": doc["id"], "type": [NGSI_LD + CSR_TYPE]}
    for key, value in doc.items():
        if key in ("id", "type", "information", "@context", *READ_ONLY, *SYSTEM):
            continue
        kind = "GeoProperty" if key in GEO_MEMBERS else "Property"
        subject[tm.expand(key)] = [{"type": kind, "value": value}]
    scope = doc.get("scope")
    if scope is not None:
        subject["scope"] = [scope] if isinstance(scope, str) else list(scope)
    return Registration(
        id=doc["id"],
        doc=doc,
        tm=tm,
        endpoint=doc["endpoint"],
        infos=tuple(infos),
        mode=doc.get("mode", "inclusive"),
        operations=operations_of(doc.get("operations") or ["federationOps"]),
        expires_at=_epoch(doc["expiresAt"], "expiresAt") if doc.get("expiresAt") else None,
        timeout=timeout / 1000 if timeout is not None else None,
        cooldown=cooldown / 1000 if cooldown is not None else None,
        local_only=bool(management.get("localOnly", False)),
        source_info=tuple((p["key"], p["value"]) for p in doc.get("contextSourceInfo") or ()),
        tenant=doc.get("tenant"),
        observation=_interval(doc.get("observationInterval"), "observationInterval"),
        management=_interval(doc.get("managementInterval"), "managementInterval"),
        subject=subject,
    )


# -- queries ---------------------------------------------------------------------------------


@dataclass(slots=True)
class TemporalFilter:
    """``timerel``/``timeAt``/``endTimeAt`` on ``observationInterval`` (timeproperty
    observedAt, the default) or ``managementInterval`` (createdAt, modifiedAt)."""

    timerel: str
    time_at: float
    end_time_at: float | None = None
    management: bool = False

    def admits(self, reg: Registration) -> bool:
        interval = reg.management if self.management else reg.observation
        if interval is None:
            return False
        start, end = interval
        if self.timerel == "before":
            return start < self.time_at
        if self.timerel == "after":
            return end is None or end > self.time_at
        stop = self.end_time_at if self.end_time_at is not None else self.time_at
        return start < stop and (end is None or end > self.time_at)


@dataclass(slots=True)
class RegistrationQuery:
    """What ``GET /csourceRegistrations`` selects (clause 5.10.2), expanded."""

    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    types: Sequence[Sequence[str]] | None = None
    attrs: Sequence[str] | None = None
    q: Node | None = None
    csf: Node | None = None
    geo: GeoQuery | None = None
    temporal: TemporalFilter | None = None

    def admits(self, reg: Registration) -> bool:
        if (self.types or self.ids or self.id_pattern or self.attrs) and not reg.infos_for(
            types=self.types, ids=self.ids, id_pattern=self.id_pattern, attrs=self.attrs
        ):
            return False
        for node in (self.q, self.csf):
            if node is not None and not matches_q(node, reg.subject):
                return False
        if self.geo is not None and not matches_geo(self.geo, reg.subject):
            return False
        return self.temporal is None or self.temporal.admits(reg)


def keep_masked_pairs(stored: Any, new: list[Any]) -> list[Any]:
    """``new`` contextSourceInfo pairs, a ``***`` value (as answered) keeping the
    stored value of its key, so reading and writing back a registration keeps its
    credentials."""
    old = {p.get("key"): p.get("value") for p in stored or [] if isinstance(p, dict)}
    return [
        {**p, "value": old[p["key"]]}
        if isinstance(p, dict) and p.get("value") == MASK and p.get("key") in old
        else p
        for p in new
    ]


# -- the service -----------------------------------------------------------------------------

#: ``(tenant, before, after)`` after a registration changed (None: created / deleted).
Listener = Callable[[str, Registration | None, Registration | None], Awaitable[None]]
#: ``(tenant, entity id) -> the entity held here, or None`` (for the conflict rules).
LocalEntity = Callable[[str, str], Awaitable[Entity | None]]


class RegistrationService:
    """Registrations of every tenant: CRUD with the conflict rules, queries, and the
    compiled list of active ones that forwarding reads."""

    def __init__(
        self,
        store: RegistrationStore,
        resolve: ResolveContext,
        *,
        outbound: OutboundPolicy | None = None,
        local_entity: LocalEntity | None = None,
        cache_ttl: float = 1.0,
    ) -> None:
        self.store = store
        self.resolve = resolve
        self.outbound = outbound or OutboundPolicy()
        self.local_entity = local_entity
        self.cache_ttl = cache_ttl
        self.listeners: list[Listener] = []
        self._cache: dict[str, tuple[float, list[Registration]]] = {}
        self._lock = asyncio.Lock()

    async def compile(self, doc: dict[str, Any]) -> Registration:
        check_document(doc)
        return compile_document(doc, await self.resolve(doc.get("@context")))

    async def _check_endpoint(self, uri: str) -> None:
        try:
            await self.outbound.check_url(uri, ("http", "https"))
        except (OutboundRefused, ValueError) as exc:
            raise BadRequestData(f"context source endpoint {uri}: {exc}") from None

    async def _check_conflicts(self, tenant: str, reg: Registration) -> None:
        if reg.mode not in ("exclusive", "redirect"):
            return
        others = [r for r in await self.active(tenant) if r.id != reg.id]
        rivals = ("exclusive", "redirect") if reg.mode == "exclusive" else ("exclusive",)
        for info in reg.infos:
            ids = [e.id for e in info.entities if e.id is not None]
            attrs = info.attrs
            if not ids or attrs is None:
                continue  # only an entity id with attribute names can be checked
            for other in others:
                if other.mode not in rivals:
                    continue
                for o in other.infos:
                    o_ids = {e.id for e in o.entities if e.id is not None}
                    if o_ids & set(ids) and o.attrs is not None and o.attrs & attrs:
                        raise Conflict(
                            f"registration {other.id} ({other.mode}) already covers "
                            f"attributes of {sorted(o_ids & set(ids))[0]}"
                        )
            if reg.mode == "exclusive" and self.local_entity is not None:
                for eid in ids:
                    held = await self.local_entity(tenant, eid)
                    if held is not None and any(a in held for a in attrs):
                        raise Conflict(
                            f"entity {eid} is held here with attributes an exclusive "
                            "registration would move to the context source"
                        )

    def _forget(self, tenant: str) -> None:
        self._cache.pop(tenant, None)

    async def _notify(
        self, tenant: str, before: Registration | None, after: Registration | None
    ) -> None:
        for listener in self.listeners:
            await listener(tenant, before, after)

    async def create(self, tenant: str, body: dict[str, Any], context: ContextValue | None) -> str:
        doc = {k: v for k, v in body.items() if k not in (*READ_ONLY, *SYSTEM)}
        doc.setdefault("id", f"urn:ngsi-ld:ContextSourceRegistration:{uuid.uuid4()}")
        if context is not None:
            doc["@context"] = context
        reg = await self.compile(doc)
        if reg.expires_at is not None and reg.expires_at <= time.time():
            raise BadRequestData("expiresAt is in the past")
        await self._check_endpoint(reg.endpoint)
        async with self._lock:
            await self._check_conflicts(tenant, reg)
            doc["createdAt"] = doc["modifiedAt"] = now_iso()
            await self.store.put_registration(tenant, "registration", doc, create=True)
            self._forget(tenant)
        await self._notify(tenant, None, reg)
        return reg.id

    async def get(self, tenant: str, reg_id: str) -> dict[str, Any]:
        check_entity_id(reg_id, "registration id")
        doc = await self.store.get_registration(tenant, "registration", reg_id)
        if doc is None:
            raise ResourceNotFound(f"context source registration {reg_id} not found")
        return doc

    async def update(
        self, tenant: str, reg_id: str, patch: dict[str, Any], context: ContextValue | None
    ) -> None:
        """Merge ``patch`` into the registration (clause 5.9.3): members given replace
        the stored ones, null removes one; the result must still be valid."""
        check_entity_id(reg_id, "registration id")
        if "id" in patch and patch["id"] != reg_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        if "type" in patch and patch["type"] != CSR_TYPE:
            raise BadRequestData(f"a context source registration must have type {CSR_TYPE}")
        async with self._lock:
            doc = await self.get(tenant, reg_id)
            before = await self.compile(doc)
            for key, value in patch.items():
                if key in ("id", "type", *READ_ONLY, *SYSTEM):
                    continue
                if key == "contextSourceInfo" and isinstance(value, list):
                    value = keep_masked_pairs(doc.get(key), value)
                if (
                    key == "endpoint"
                    and isinstance(doc.get(key), str)
                    and value == mask_uri(doc[key])
                ):
                    continue  # echoed back masked: the stored endpoint stays
                if value is None or value == "urn:ngsi-ld:null":
                    doc.pop(key, None)
                else:
                    doc[key] = value
            if context is not None:
                doc["@context"] = context
            reg = await self.compile(doc)
            if "expiresAt" in patch and reg.expires_at is not None and not reg.active():
                raise BadRequestData("expiresAt is in the past")
            if "endpoint" in patch:
                await self._check_endpoint(reg.endpoint)
            await self._check_conflicts(tenant, reg)
            doc["modifiedAt"] = now_iso()
            await self.store.put_registration(tenant, "registration", doc, create=False)
            self._forget(tenant)
        await self._notify(tenant, before, reg)

    async def delete(self, tenant: str, reg_id: str) -> None:
        check_entity_id(reg_id, "registration id")
        doc = await self.store.get_registration(tenant, "registration", reg_id)
        if doc is None or not await self.store.delete_registration(tenant, "registration", reg_id):
            raise ResourceNotFound(f"context source registration {reg_id} not found")
        self._forget(tenant)
        try:
            before: Registration | None = await self.compile(doc)
        except NgsiLdError:
            before = None
        await self._notify(tenant, before, None)

    async def all(self, tenant: str) -> list[Registration]:
        """Every registration of the tenant, compiled (expired ones too), oldest first."""
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1]
        now = time.monotonic()
        regs = []
        for doc in await self.store.list_registrations(tenant, "registration"):
            try:
                regs.append(await self.compile(doc))
            except NgsiLdError:
                continue  # stored by an older release under rules it no longer meets
        self._cache[tenant] = (now, regs)
        return regs

    async def active(self, tenant: str) -> list[Registration]:
        """The tenant's registrations that have not expired."""
        now = time.time()
        return [r for r in await self.all(tenant) if r.active(now)]

    async def query(self, tenant: str, query: RegistrationQuery) -> list[Registration]:
        return [r for r in await self.all(tenant) if query.admits(r)]

    def render(self, reg: Registration, tm: TermMap, *, sys_attrs: bool = False) -> dict[str, Any]:
        """The registration as a client sees it: terms compacted with the request's
        context (clause 5.10.1), defaults filled in."""
        doc = reg.doc
        src = reg.tm
        out: dict[str, Any] = {"id": reg.id, "type": CSR_TYPE}
        infos = []
        for item in doc["information"]:
            rendered: dict[str, Any] = {}
            if "entities" in item:
                ents = []
                for e in item["entities"]:
                    ent = dict(e)
                    if isinstance(e["type"], list):
                        ent["type"] = [tm.compact(src.expand(t)) for t in e["type"]]
                    else:
                        ent["type"] = tm.compact(src.expand(e["type"]))
                    ents.append(ent)
                rendered["entities"] = ents
            for key in ("propertyNames", "relationshipNames"):
                if key in item:
                    rendered[key] = [tm.compact(src.expand(n)) for n in item[key]]
            infos.append(rendered)
        for key, value in doc.items():
            if key in ("id", "type", "@context", *READ_ONLY, *SYSTEM):
                continue
            if key == "information":
                out[key] = infos
            elif key == "contextSourceInfo":
                out[key] = mask_pairs(value)  # the hub's credentials for the source
            elif key == "endpoint":
                out[key] = mask_uri(value)
            elif key in MEMBERS:
                out[key] = value
            else:
                out[tm.compact(src.expand(key))] = value
        out.setdefault("mode", "inclusive")
        out.setdefault("operations", ["federationOps"])
        if sys_attrs:
            out.update({k: doc[k] for k in SYSTEM if k in doc})
        return out
