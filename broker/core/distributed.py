"""Distributed retrieve and query (clause 4.3.6.3): what this hub holds merged with what
the context sources registered for the same entities answer.

A request is forwarded to each active registration whose ``information`` may hold what
it selects and whose ``operations`` include it (``retrieveEntity``, ``queryEntity``),
narrowed to the types and attributes the registration names. The answers are merged
entity by entity and attribute by attribute (``broker.federation.merge``):

* ``inclusive`` and ``redirect`` sources add to what is held here;
* ``exclusive`` sources own the attributes they name for an entity id: what this hub
  holds of those is left out;
* ``auxiliary`` sources only fill in attributes nobody else has.

Access control comes first: the request went through ``authorize``, its local reads
through the store guard, and what the sources answer is filtered with the same access
(an entity of a type the principal may not read is left out). ``local=true`` asks this
hub only. Paging across sources: every source is asked for the first ``offset + limit``
matches (ordered by id, with their count); the merged list is ordered by id and cut;
the count is the sum of the counts less the entities several sources answered.

With an entity map (``entityMap=true`` or the ``NGSILD-EntityMap`` header, clauses
5.7.2.4, 5.5.9.3; the maps: ``broker.core.entitymaps``) paging is exact instead: the map
records every entity the query matched and who holds it, and each page asks each
source only for the entities of that page it holds, by id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import orjson

from broker.auth.access import current as current_access
from broker.core.entities import EntityService
from broker.core.entitymaps import LOCAL, EntityMapService, location
from broker.core.model import Parser
from broker.errors import (
    Conflict,
    Forbidden,
    InternalError,
    NgsiLdError,
    NonexistentTenant,
    ResourceNotFound,
)
from broker.federation.forward import Answer, Call, Forwarder, join_answers, warning
from broker.federation.merge import merge
from broker.federation.registrations import Info, Registration, RegistrationService
from broker.jsonld.context import TermMap
from broker.model.entity import ENTITY_KEYS, Entity
from broker.model.query import GeoQuery, Node
from broker.model.store import EntityQuery, Selector
from broker.query.evaluate import matches_q
from broker.query.patterns import search
from broker.query.qlang import format_q, resolve_q
from broker.query.scopeq import format_scope_q

#: Query parameters passed on as the client wrote them (terms in the request's context).
PASSED_ON = frozenset(
    {"id", "idPattern", "q", "georel", "geometry", "coordinates", "geoproperty", "geoQ", "scopeQ"}
)


#: Parameters of writes whose value only names the operation's default: ``options=replace``
#: of a batch upsert (clause 5.6.8: entities are replaced unless ``update`` is asked for)
#: and ``deleteAll=false`` of an attribute delete (clause 5.6.5). A forwarded write leaves
#: them out: the source is asked the same thing.
DEFAULT_WRITE_PARAMS = frozenset({("options", "replace"), ("deleteAll", "false")})


def write_params(given: Iterable[tuple[str, str]]) -> dict[str, str] | None:
    """The URL parameters a write is forwarded with: the client's, in its order, less
    ``local`` (it asked this hub) and those naming the operation's default."""
    sent = {k: v for k, v in given if k != "local" and (k, v) not in DEFAULT_WRITE_PARAMS}
    return sent or None


def georel_text(geo: GeoQuery) -> str:
    """A geo-query's ``georel`` as the API writes it, with its distances
    (``near;maxDistance==500``)."""
    rel = str(geo.georel)
    if geo.max_distance is not None:
        rel += f";maxDistance=={geo.max_distance:g}"
    if geo.min_distance is not None:
        rel += f";minDistance=={geo.min_distance:g}"
    return rel


def params_of(query: EntityQuery, tm: TermMap) -> dict[str, str]:
    """The query parameters of ``GET /entities`` that select what ``query`` selects,
    terms compacted with ``tm`` (for requests that did not come with parameters of their
    own: OGC API items, a Query body)."""
    out: dict[str, str] = {}
    if query.ids:
        out["id"] = ",".join(query.ids)
    if query.id_pattern:
        out["idPattern"] = query.id_pattern
    if query.types:
        out["type"] = "|".join(";".join(tm.compact(t) for t in alt) for alt in query.types)
    if query.q is not None:
        out["q"] = format_q(resolve_q(query.q, tm.compact))
    if query.scope_q is not None:
        out["scopeQ"] = format_scope_q(query.scope_q)
    geo = query.geo
    if geo is not None:
        out.update(
            georel=georel_text(geo),
            geometry=str(geo.geometry["type"]),
            coordinates=orjson.dumps(geo.geometry["coordinates"]).decode(),
            geoproperty=tm.compact(geo.geoproperty),
        )
    return out


def parse_remote(body: Any, tm: TermMap) -> Entity | None:
    """A source's entity (normalized, with sysAttrs) in the internal form, keeping the
    source's ``createdAt``/``modifiedAt`` (merging needs them); None if invalid."""
    try:
        ent = Parser(tm).entity(body)
    except NgsiLdError:
        return None
    for key in ("createdAt", "modifiedAt"):
        if isinstance(body.get(key), str):
            ent[key] = body[key]
    names = [n for n in body if n not in ENTITY_KEYS]
    iris = [n for n in ent if n not in ENTITY_KEYS]
    for name, iri in zip(names, iris, strict=False):
        raw = body[name]
        raws = raw if isinstance(raw, list) else [raw]
        for inst, given in zip(ent[iri], raws, strict=False):
            if isinstance(given, dict):
                for key in ("createdAt", "modifiedAt"):
                    if isinstance(given.get(key), str):
                        inst[key] = given[key]
    return ent


@dataclass(slots=True)
class Route:
    """Where the parts of a write go: ``parts`` to sources, ``local_body`` here (when
    ``run_local``)."""

    parts: list[tuple[Registration, Any]]
    local_body: Any
    run_local: bool
    #: exclusive and redirect registrations holding part of what is written that do
    #: not accept the operation: that part is written neither there nor here
    refused: list[Registration] = field(default_factory=list)

    @property
    def refusal(self) -> Conflict | None:
        """The Conflict to answer with when nothing of the write can be done: all of it
        was refused, nothing goes to a source and nothing is written here."""
        if not self.refused or self.parts or self.run_local:
            return None
        names = ", ".join(f"{r.id} ({r.mode})" for r in self.refused)
        return Conflict(
            f"registrations {names} hold what this write would change, and do not accept it"
        )


def route_write(
    registrations: Sequence[Registration],
    operation: str,
    *,
    entity_id: str,
    tm: TermMap,
    body: Any = None,
    types: Sequence[str] | None = None,
    attr: str | None = None,
    whole: bool = False,
    may_write: Callable[[list[str] | None], bool] | None = None,
) -> Route:
    """What of a write of one entity goes to which source, and what is written here.

    Each registration supporting ``operation`` gets the attributes it is registered for
    (all, when it names none); ``auxiliary`` ones are never written to. What
    ``exclusive`` and ``redirect`` registrations hold is not written here; a redirect
    registration of the whole entity leaves nothing here. An exclusive or redirect
    registration of attributes in the write that does not support ``operation`` is
    ``refused``: what it holds is written neither there nor here, and the rest goes on
    (clause 5.6.1.4: "an error of type Conflict if the complete ... operation failed or
    ... a partial success if some parts of it succeeded"). ``whole``: the write names
    the whole entity (create, replace, upsert), so the entity is written here when
    attributes are left for it, or when nothing went to a source or was refused. ``may_write(types)`` says whether
    the caller may write entities of these types (None: of any type); a part it may
    not write is Forbidden, as a local write would be."""
    attrs: list[str] | None = None
    if attr is not None:
        attrs = [tm.expand(attr)]
    elif isinstance(body, dict):
        attrs = [tm.expand(k) for k in body if k not in ENTITY_KEYS] or None
    expanded_types = [[tm.expand(t)] for t in types] if types else None
    matched = []
    for reg in registrations:
        if reg.mode == "auxiliary":
            continue
        infos = reg.infos_for(types=expanded_types, ids=[entity_id], attrs=attrs)
        if infos:
            matched.append((reg, infos))
    if not matched:
        return Route([], body, True)
    owned: set[str] = set()
    everything = False
    refused: list[Registration] = []
    for reg, infos in matched:
        if reg.mode not in ("exclusive", "redirect"):
            continue
        held = reg.attrs_for(infos)
        touched = attrs is None or held is None or bool(set(attrs) & held)
        if not reg.supports(operation) and touched:
            refused.append(reg)  # "the matching Attributes are then removed"
            everything = everything or held is None
        if held is None:
            everything = everything or reg.mode == "redirect"
        else:
            owned |= held
    parts: list[tuple[Registration, Any]] = []
    for reg, infos in matched:
        if not reg.supports(operation):
            continue
        held = reg.attrs_for(infos)
        part = body  # a write of one attribute (``attr``): its body is that attribute
        if isinstance(body, dict) and held is not None and attr is None:
            part = {k: v for k, v in body.items() if k in ENTITY_KEYS or tm.expand(k) in held}
        partial = attr is None and not whole and isinstance(body, dict)
        if partial and isinstance(part, dict) and all(k in ENTITY_KEYS for k in part):
            continue  # none of the attributes written is held there
        if may_write is not None:
            named = [t[0] for t in expanded_types] if expanded_types else None
            held_types = reg.types_for(infos)
            if not may_write(named or (sorted(held_types) if held_types else None)):
                raise Forbidden(f"not allowed to change these entities at {reg.id}")
        parts.append((reg, part))
    if everything:
        return Route(parts, None, False, refused)
    if attr is not None:
        return Route(parts, body, tm.expand(attr) not in owned, refused)
    if isinstance(body, dict) and owned:
        local = {k: v for k, v in body.items() if k in ENTITY_KEYS or tm.expand(k) not in owned}
        left = any(k not in ENTITY_KEYS for k in local)
        return Route(parts, local, left or (whole and not parts and not refused), refused)
    return Route(parts, body, True, refused)


@dataclass(slots=True)
class WritePlan:
    """What a distributed write sent to sources (``answers``), and what is left to
    write here: ``local_body`` when ``run_local``."""

    local_body: Any
    run_local: bool
    answers: list[Answer]
    #: the registrations that refused their part (see :class:`Route`)
    refused: list[Registration] = field(default_factory=list)


#: Characters of (percent-encoded) entity ids sent in one forwarded request (``id=``):
#: URLs stay short enough for every server's request line limit.
ID_CHARS = 4000


def _chunks(ids: list[str]) -> list[list[str]]:
    """``ids`` in runs whose encoded, comma-joined length stays under :data:`ID_CHARS`."""
    out: list[list[str]] = [[]]
    size = 0
    for eid in ids:
        n = len(quote(eid, safe=":")) + 1
        if out[-1] and size + n > ID_CHARS:
            out.append([])
            size = 0
        out[-1].append(eid)
        size += n
    return out


def _fill(base: Entity, other: Entity) -> Entity:
    """``other``'s attributes that ``base`` lacks added to a copy of ``base``."""
    out = dict(base)
    for name, value in other.items():
        if name not in ENTITY_KEYS and name not in out:
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class MapRequest:
    """What a query asks of entity maps (Table 6.4.3.2-1/-2): a map to use (the id the
    ``NGSILD-EntityMap`` header names), or a new one (``entityMap=true``), living
    ``lifetime`` seconds (``entityMapLifetime``) if the hub allows as much."""

    ref: str | None = None
    lifetime: float | None = None


class DistributedService:
    """Distributed retrieve and query (see the module docstring)."""

    def __init__(
        self,
        entities: EntityService,
        registrations: RegistrationService,
        forwarder: Forwarder,
        *,
        max_limit: int = 1000,
        maps: EntityMapService | None = None,
    ) -> None:
        self.entities = entities
        self.registrations = registrations
        self.forwarder = forwarder
        self.max_limit = max_limit
        self.maps = maps

    async def sources(
        self,
        tenant: str,
        operation: str,
        *,
        types: Sequence[Sequence[str]] | None = None,
        ids: Sequence[str] | None = None,
        id_pattern: str | None = None,
        attrs: Sequence[str] | None = None,
        csf: Node | None = None,
    ) -> list[tuple[Registration, list[Info]]]:
        """The active registrations that may answer ``operation`` for this selection
        (and whose own properties match the context source filter ``csf``)."""
        selection = Selector(ids=ids, id_pattern=id_pattern, types=types)
        return await self._matching(tenant, (operation,), [selection], attrs, csf)

    async def _matching(
        self,
        tenant: str,
        operations: Sequence[str],
        selections: Sequence[Selector],
        attrs: Sequence[str] | None,
        csf: Node | None,
    ) -> list[tuple[Registration, list[Info]]]:
        """The active registrations allowing one of ``operations`` whose information
        groups may hold what one of ``selections`` selects (with ``attrs``), each with
        those groups, and whose own properties match ``csf``."""
        out = []
        for reg in await self.registrations.active(tenant):
            if not any(reg.supports(op) for op in operations):
                continue
            if csf is not None and not matches_q(csf, reg.subject):
                continue
            infos: list[Info] = []
            for sel in selections:
                for info in reg.infos_for(
                    types=sel.types, ids=sel.ids, id_pattern=sel.id_pattern, attrs=attrs
                ):
                    if info not in infos:
                        infos.append(info)
            if infos:
                out.append((reg, infos))
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _sent(
        self,
        reg: Registration,
        infos: list[Info],
        query: EntityQuery,
        tm: TermMap,
        given: dict[str, str],
        ids: Sequence[str] | None = None,
        limit: str | None = None,
    ) -> dict[str, str]:
        """The parameters of a query forwarded to ``reg`` (with ``limit`` in place of
        the client's ``limit``/``offset`` when given, else without its page): the
        client's selection as it wrote it (its terms, its order), narrowed to what the
        registration holds (clause 4.3.6.1: "all constraints specified in the
        registration shall be respected"): the registration's types when the client
        named none, ``ids`` when the client named none, and the attributes it is
        registered for. Nothing the client did not ask for is added (no ``options``
        but ``sysAttrs`` when the client asked for it, no ``count``): the source is
        asked the same question."""
        held = reg.attrs_for(infos)
        attrs = self._attrs(reg, infos, query.attrs)
        attrs_text = ",".join(tm.compact(a) for a in attrs) if attrs else None
        sent: dict[str, str] = {}
        for key, value in given.items():
            if key in PASSED_ON or key in ("type", "count"):
                sent[key] = value
            elif key == "attrs" and attrs_text:
                sent[key] = value if held is None else attrs_text
            elif key == "options" and "sysAttrs" in value.split(","):
                sent[key] = "sysAttrs"  # the hub renders the rest itself
            elif key in ("limit", "offset") and limit is not None and "limit" not in sent:
                sent["limit"] = limit
        if "type" not in sent:
            types = reg.types_for(infos)
            if types:
                sent["type"] = ",".join(sorted(tm.compact(t) for t in types))
        if ids and "id" not in sent and "idPattern" not in sent:
            sent["id"] = ",".join(ids)
        if attrs_text and "attrs" not in sent:
            sent["attrs"] = attrs_text
        if reg.local_only:
            sent["local"] = "true"  # management.localOnly: its own data, not its sources'
        return sent

    @staticmethod
    def _page_params(call: Call, want: int | None) -> dict[str, str]:
        """The URL parameters of a forwarded request whose selection is not in its URL
        (a Query body, a retrieve): of the client's, its page (``limit`` as the first
        ``want``, when it asked for a page), ``count`` and ``options=sysAttrs``; nothing
        it did not ask for."""
        given = call.params or {}
        sent: dict[str, str] = {}
        for key, value in given.items():
            if key in ("limit", "offset") and want is not None and "limit" not in sent:
                sent["limit"] = str(max(want, 1))
            elif key == "count" and want is not None:
                sent[key] = value
            elif key == "options" and "sysAttrs" in value.split(","):
                sent[key] = "sysAttrs"
        return sent

    @staticmethod
    def _attrs(
        reg: Registration, infos: list[Info], wanted: Sequence[str] | None
    ) -> list[str] | None:
        held = reg.attrs_for(infos)
        if held is None:
            return list(wanted) if wanted else None
        return sorted(held & set(wanted)) if wanted else sorted(held)

    @staticmethod
    def _held_ids(
        infos: list[Info], types: Sequence[Sequence[str]] | None = None
    ) -> list[str] | None:
        """The entity ids these groups are for, when each of their selectors (of the
        types asked for) names one; None when some selector is for any id of a type or
        a pattern. A forwarded query names them (clause 4.3.6.1: "all constraints
        specified in the registration shall be respected", Entity IDs among them)."""
        out: list[str] = []
        for info in infos:
            if not info.entities:
                return None
            for e in info.entities:
                if types and not e.typed(types):
                    continue
                if e.id is None:
                    return None
                if e.id not in out:
                    out.append(e.id)
        return out or None

    @staticmethod
    def _holds(infos: list[Info], ent: Entity) -> bool:
        """Whether the registration's groups may hold this entity (a source registered
        for some ids answers only for those)."""
        for info in infos:
            if not info.entities:
                return True
            types = ent.get("type") or []
            for e in info.entities:
                if e.holds(ent["id"]) and any(t in types for t in e.types):
                    return True
        return False

    @staticmethod
    def _may_write(tenant: str) -> Callable[[list[str] | None], bool] | None:
        """The caller's write check for parts sent to sources (None: access control is
        off). Nothing at a source passes this hub's store guard, so it is checked here."""
        access = current_access()
        if access is None:
            return None
        return lambda types: access.can("write", tenant, types)

    @staticmethod
    def _readable(tenant: str, entities: list[Entity]) -> list[Entity]:
        access = current_access()
        if access is None:
            return entities
        return [e for e in entities if access.can("read", tenant, e.get("type") or [])]

    def _combine(
        self,
        tenant: str,
        local: list[Entity],
        answered: list[tuple[Registration, list[Info], list[Entity]]],
    ) -> dict[str, Entity]:
        """Local and remote entities merged by id (see the module docstring)."""
        owned: dict[str, set[str]] = {}  # entity id -> attributes an exclusive source owns
        for reg, infos, _ents in answered:
            if reg.mode != "exclusive":
                continue
            for info in infos:
                if info.attrs is None:
                    continue
                for e in info.entities:
                    if e.id is not None:
                        owned.setdefault(e.id, set()).update(info.attrs)
        out: dict[str, Entity] = {}
        for ent in local:
            drop = owned.get(ent["id"])
            out[ent["id"]] = {k: v for k, v in ent.items() if k not in drop} if drop else ent
        ordered = sorted(answered, key=lambda a: a[0].mode == "auxiliary")
        for reg, infos, ents in ordered:
            for ent in self._readable(tenant, ents):
                if not self._holds(infos, ent):
                    continue
                eid = ent["id"]
                if eid not in out:
                    out[eid] = ent
                elif reg.mode == "auxiliary":
                    out[eid] = _fill(out[eid], ent)
                else:
                    out[eid] = merge(out[eid], ent)
        return out

    # -- query -----------------------------------------------------------------------------

    async def query_sources(
        self,
        tenant: str,
        query: EntityQuery,
        csf: Node | None = None,
        operations: Sequence[str] = ("queryEntity", "queryBatch"),
    ) -> list[tuple[Registration, list[Info]]]:
        """The active registrations that may answer a query (with one of
        ``operations``) for what ``query`` selects: its own selection, or any of its
        entity selectors (a Query body's ``entities``)."""
        selections = query.selectors or [
            Selector(ids=query.ids, id_pattern=query.id_pattern, types=query.types)
        ]
        return await self._matching(tenant, operations, selections, query.attrs, csf)

    def _get_params(
        self,
        reg: Registration,
        infos: list[Info],
        given: dict[str, str],
        query: EntityQuery,
        tm: TermMap,
        want: int,
    ) -> dict[str, str]:
        """The parameters of ``GET /entities`` asking ``reg`` for what ``given`` (the
        query's parameters, in the client's terms) selects, narrowed to the types and
        attributes it is registered for (see :meth:`_sent`). A page the client asked
        for (``limit``, ``offset``) is asked of each source as its first ``want``
        entities, since the merged list is cut here; without either, the source's own
        default page is the same as this hub's."""
        held_ids = self._held_ids(infos, query.types)
        return self._sent(reg, infos, query, tm, given, held_ids, str(max(want, 1)))

    def _query_body(
        self, reg: Registration, infos: list[Info], query: EntityQuery, tm: TermMap
    ) -> dict[str, Any]:
        """The Query (clause 5.2.23) of ``POST /entityOperations/query`` asking ``reg``
        for what ``query`` selects, in the request's terms, narrowed to the types and
        attributes it is registered for."""
        held = reg.types_for(infos)
        entities: list[dict[str, Any]] = []
        selections = query.selectors or [
            Selector(ids=query.ids, id_pattern=query.id_pattern, types=query.types)
        ]
        for sel in selections:
            if not reg.infos_for(types=sel.types, ids=sel.ids, id_pattern=sel.id_pattern):
                continue
            alternatives = [list(a) for a in sel.types] if sel.types else None
            if alternatives is None and held:
                alternatives = [[t] for t in sorted(held)]
            item: dict[str, Any] = {}
            ids = list(sel.ids or ())
            if not ids and not sel.id_pattern:
                ids = self._held_ids(infos, sel.types) or []
            if ids:
                item["id"] = ids[0] if len(ids) == 1 else ids
            if sel.id_pattern:
                item["idPattern"] = sel.id_pattern
            if alternatives:
                item["type"] = "|".join(";".join(tm.compact(t) for t in a) for a in alternatives)
            if item:
                entities.append(item)
        body: dict[str, Any] = {"type": "Query"}
        if entities:
            body["entities"] = entities
        attrs = self._attrs(reg, infos, query.attrs)
        if attrs:
            body["attrs"] = [tm.compact(a) for a in attrs]
        if query.q is not None:
            body["q"] = format_q(resolve_q(query.q, tm.compact))
        if query.scope_q is not None:
            body["scopeQ"] = format_scope_q(query.scope_q)
        geo = query.geo
        if geo is not None:
            body["geoQ"] = {
                "georel": georel_text(geo),
                "geometry": geo.geometry["type"],
                "coordinates": geo.geometry["coordinates"],
                "geoproperty": tm.compact(geo.geoproperty),
            }
        return body

    async def query(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        params: dict[str, str] | None = None,
        *,
        local: bool = False,
        csf: Node | None = None,
        batch: bool = False,
    ) -> tuple[list[Entity], int | None, dict[str, str]]:
        """The entities matching ``query`` here and at the sources, with the count and
        the headers to answer with (``NGSILD-Warning``). ``params`` are the request's
        own query parameters (passed on in its terms); without them, parameters are made
        from ``query`` (:func:`params_of`).

        Each source is asked with an operation its registration allows (clause 4.3.6.1:
        sources "may indicate that they are only willing to respond to a limited subset
        of API operations"): a query with a Query body (``batch``) as ``POST
        /entityOperations/query`` when it allows ``queryBatch``, else as ``GET
        /entities`` (one per entity selector); a ``GET`` query as ``GET /entities`` when
        it allows ``queryEntity``, else as a Query body."""
        sources = [] if local else await self.query_sources(tenant, query, csf)
        if not sources:
            try:
                found, total = await self.entities.query(tenant, query)
            except NonexistentTenant:
                found, total = [], (0 if query.count else None)
            return found, total, {}
        want = min(query.offset + query.limit, self.max_limit)
        local_query = replace(query, offset=0, limit=want, count=True)

        async def ask_local() -> tuple[list[Entity], int]:
            try:
                found, total = await self.entities.query(tenant, local_query)
            except NonexistentTenant:
                return [], 0
            return found, total or 0

        async def ask(reg: Registration, infos: list[Info]) -> Answer:
            post = reg.supports("queryBatch") and (batch or not reg.supports("queryEntity"))
            if post:
                body = self._query_body(reg, infos, query, tm)
                sent = self._page_params(call, want)
                if reg.local_only:
                    sent["local"] = "true"
                inline = call.context is not None
                return await self.forwarder.send(
                    reg,
                    call,
                    "POST",
                    "/entityOperations/query",
                    params=sent,
                    body={**body, "@context": call.context} if inline else body,
                    content_type="application/ld+json" if inline else "application/json",
                )
            if params is not None and not query.selectors:
                given = params
                return await self.forwarder.send(
                    reg,
                    call,
                    "GET",
                    "/entities",
                    params=self._get_params(reg, infos, given, query, tm, want),
                )
            # a Query body asked as GET /entities: one request per entity selector
            asked = []
            selections: Sequence[Selector | None] = query.selectors or [None]
            for sel in selections:
                if sel is None:
                    one = query
                elif reg.infos_for(types=sel.types, ids=sel.ids, id_pattern=sel.id_pattern):
                    one = replace(
                        query,
                        ids=sel.ids,
                        id_pattern=sel.id_pattern,
                        types=sel.types,
                        selectors=None,
                    )
                else:
                    continue
                given = params_of(one, tm)
                asked.append(
                    self.forwarder.send(
                        reg,
                        call,
                        "GET",
                        "/entities",
                        params=self._get_params(reg, infos, given, one, tm, want),
                    )
                )
            return join_answers(reg, list(await asyncio.gather(*asked)))

        mine = asyncio.ensure_future(ask_local())
        try:
            answers: list[Answer] = await asyncio.gather(
                *(ask(reg, infos) for reg, infos in sources)
            )
        finally:
            found, local_total = await mine
        answered: list[tuple[Registration, list[Info], list[Entity]]] = []
        total = local_total
        failed: list[Answer] = []
        for (reg, infos), answer in zip(sources, answers, strict=True):
            if not answer.ok or not isinstance(answer.body, list):
                if answer.error is None:
                    answer.error = f"answered {answer.status}"
                failed.append(answer)
                continue
            ents = [
                e
                for e in (parse_remote(b, tm) for b in answer.body if isinstance(b, dict))
                if e is not None
            ]
            answered.append((reg, infos, ents))
            header = answer.headers.get("NGSILD-Results-Count") if answer.headers else None
            total += int(header) if header and header.isdigit() else len(ents)
        merged = self._combine(tenant, found, answered)
        seen = len(found) + sum(len(a[2]) for a in answered)
        total -= seen - len(merged)  # the same entity from several sources counts once
        page = sorted(merged.values(), key=lambda e: e["id"])
        page = page[query.offset : query.offset + query.limit]
        return page, (total if query.count else None), warning(failed)

    # -- query with an entity map (clauses 5.7.2.4, 5.5.9.3) -------------------------------

    async def query_mapped(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        params: dict[str, str] | None,
        asked: MapRequest,
        *,
        local: bool = False,
        csf: Node | None = None,
    ) -> tuple[list[Entity], int | None, dict[str, str], bool, bool]:
        """A query that uses an entity map (``broker.core.entitymaps``): the one the
        request names if it is still there, else a new one made of every entity the
        query matches here and at the sources (clause 5.7.2.4: "If the resource cannot
        be found, or the data has expired, a new EntityMap shall be created"). The page
        is taken from the map (clause 5.5.9.3), asking each source only for the
        entities the map says it holds, with the filters checked again; an entity no
        longer found is removed from the map. Returns the page, the count, the headers
        (``NGSILD-EntityMap`` with the map's location, ``NGSILD-Warning``), whether the
        map was created (201, Table 6.4.3.2-3) and whether the map has entities after
        this page (the next page's link)."""
        maps = self.maps
        if maps is None:
            raise InternalError("entity maps are not set up")
        doc = await maps.find(tenant, asked.ref) if asked.ref is not None else None
        given, sources = await self._map_sources(tenant, query, tm, params, local, csf)
        failed: list[Answer] = []
        created = doc is None
        if doc is None:
            doc = await self._make_map(tenant, query, tm, call, given, sources, failed, asked)
        page, total, more = await self._map_page(
            tenant, doc, query, tm, call, given, sources, failed
        )
        headers = warning(failed)
        headers["NGSILD-EntityMap"] = location(doc["id"])
        return page, (total if query.count else None), headers, created, more

    async def make_map(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        params: dict[str, str] | None,
        asked: MapRequest,
        *,
        local: bool = False,
        csf: Node | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Create EntityMap for Query Entities (clause 5.14.4.4): the map of every
        entity the query matches here and at the sources ("For each matching Context
        Source Registration, the request is forwarded ... The mapping between the
        Context Source Registration and the EntityMap Id is added to the linkedMaps
        element"), stored; with the ``NGSILD-Warning`` header for sources that failed."""
        given, sources = await self._map_sources(tenant, query, tm, params, local, csf)
        failed: list[Answer] = []
        doc = await self._make_map(tenant, query, tm, call, given, sources, failed, asked)
        return doc, warning(failed)

    async def _map_sources(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        params: dict[str, str] | None,
        local: bool,
        csf: Node | None,
    ) -> tuple[dict[str, str], list[tuple[Registration, list[Info]]]]:
        """The query's parameters (the request's own, else made from ``query``) and the
        sources a query through an entity map asks: those allowing ``queryEntity``,
        since the map's pages are asked as ``GET /entities`` by id."""
        given = params if params is not None else params_of(query, tm)
        if local:
            return given, []
        return given, await self.query_sources(tenant, query, csf, ("queryEntity",))

    async def _make_map(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        given: dict[str, str],
        sources: list[tuple[Registration, list[Info]]],
        failed: list[Answer],
        asked: MapRequest,
    ) -> dict[str, Any]:
        maps = self.maps
        if maps is None:
            raise InternalError("entity maps are not set up")
        entries, linked = await self._candidates(
            tenant, query, tm, call, given, sources, failed, maps.max_entries
        )
        return await maps.create(tenant, entries, linked, lifetime=asked.lifetime)

    async def _candidates(
        self,
        tenant: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        given: dict[str, str],
        sources: list[tuple[Registration, list[Info]]],
        failed: list[Answer],
        cap: int,
    ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Every entity the query matches (at most ``cap``), with who holds it, and the
        entity maps the sources made of their part (``linkedMaps``)."""

        async def ask_local() -> list[Entity]:
            try:
                found, _total = await self.entities.query(
                    tenant, replace(query, offset=0, limit=cap, count=False)
                )
            except NonexistentTenant:
                return []
            return found

        async def ask(reg: Registration, infos: list[Info]) -> tuple[list[Entity], str | None]:
            sent = self._sent(reg, infos, query, tm, given)
            sent.update(entityMap="true", count="true")
            held: list[Entity] = []
            linked: str | None = None
            offset = 0
            while len(held) < cap:
                size = min(self.max_limit, cap - len(held))
                sent.update(limit=str(size), offset=str(offset))
                answer = await self.forwarder.send(
                    reg,
                    call,
                    "GET",
                    "/entities",
                    params=sent,
                    extra={"NGSILD-EntityMap": linked} if linked else None,
                )
                if answer.status == 400 and offset == 0 and "entityMap" in sent:
                    # a source that knows no entity maps may refuse the parameter
                    del sent["entityMap"]
                    continue
                if not answer.ok or not isinstance(answer.body, list):
                    if answer.error is None:
                        answer.error = f"answered {answer.status}"
                    failed.append(answer)
                    break
                headers = answer.headers
                if linked is None and headers is not None:
                    linked = headers.get("NGSILD-EntityMap")
                held += [e for e in (parse_remote(b, tm) for b in answer.body) if e is not None]
                offset += len(answer.body)
                count = headers.get("NGSILD-Results-Count") if headers is not None else None
                if len(answer.body) < size or (count and count.isdigit() and offset >= int(count)):
                    break
            return held, linked

        mine = asyncio.ensure_future(ask_local())
        try:
            answers = await asyncio.gather(*(ask(reg, infos) for reg, infos in sources))
        finally:
            found = await mine
        holders: dict[str, list[str]] = {e["id"]: [LOCAL] for e in found}
        linked: dict[str, str] = {}
        for (reg, infos), (held, link) in zip(sources, answers, strict=True):
            if link:
                linked[reg.id] = link
            for ent in self._readable(tenant, held):
                if self._holds(infos, ent):
                    ids = holders.setdefault(ent["id"], [])
                    if reg.id not in ids:
                        ids.append(reg.id)
        return dict(sorted(holders.items())[:cap]), linked

    async def _map_page(
        self,
        tenant: str,
        doc: dict[str, Any],
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        given: dict[str, str],
        sources: list[tuple[Registration, list[Info]]],
        failed: list[Answer],
    ) -> tuple[list[Entity], int, bool]:
        """One page of a query over the entities of a map (clause 5.5.9.3): "filters
        shall be rechecked before returning results", "Entities not or no longer
        fitting the query shall be removed from the Entity map during pagination",
        "Pages shall always be filled to the maximum, as long as Entities are
        available". The request's own ids and id pattern narrow the map's entities
        without removing any (a page forwarded by id is no reason to forget the rest);
        an entity whose source failed is left in the map. The map's entities are
        ordered by id; ``offset`` counts them."""
        entries: dict[str, list[str]] = doc["entityMap"]
        linked: dict[str, str] = doc.get("linkedMaps") or {}
        wanted = set(query.ids) if query.ids else None
        candidates = [
            eid
            for eid in sorted(entries)
            if (wanted is None or eid in wanted)
            and (query.id_pattern is None or search(query.id_pattern, eid))
        ]
        by_id = {reg.id: (reg, infos) for reg, infos in sources}
        page: list[Entity] = []
        removed = 0
        pos = query.offset
        while len(page) < query.limit and pos < len(candidates):
            batch = candidates[pos : pos + query.limit - len(page)]
            pos += len(batch)
            here = [eid for eid in batch if LOCAL in entries[eid]]
            per_source: dict[str, list[str]] = {}
            for eid in batch:
                for holder in entries[eid]:
                    if holder != LOCAL and holder in by_id:
                        per_source.setdefault(holder, []).append(eid)
            asking = [
                (by_id[rid], chunk) for rid, ids in per_source.items() for chunk in _chunks(ids)
            ]

            async def ask_local(here: list[str] = here) -> list[Entity]:
                if not here:
                    return []
                try:
                    found, _total = await self.entities.query(
                        tenant, replace(query, ids=here, offset=0, limit=len(here), count=False)
                    )
                except NonexistentTenant:
                    return []
                return found

            async def ask(reg: Registration, infos: list[Info], ids: list[str]) -> Answer:
                sent = self._sent(reg, infos, query, tm, given)
                sent.update(id=",".join(ids), limit=str(len(ids)))
                link = linked.get(reg.id)
                return await self.forwarder.send(
                    reg,
                    call,
                    "GET",
                    "/entities",
                    params=sent,
                    extra={"NGSILD-EntityMap": link} if link else None,
                )

            mine = asyncio.ensure_future(ask_local())
            try:
                answers: list[Answer] = await asyncio.gather(
                    *(ask(reg, infos, ids) for (reg, infos), ids in asking)
                )
            finally:
                found = await mine
            answered: list[tuple[Registration, list[Info], list[Entity]]] = []
            unsure: set[str] = set()
            for ((reg, infos), ids), answer in zip(asking, answers, strict=True):
                if not answer.ok or not isinstance(answer.body, list):
                    if answer.error is None:
                        answer.error = f"answered {answer.status}"
                    failed.append(answer)
                    unsure.update(ids)
                    continue
                ents = [e for e in (parse_remote(b, tm) for b in answer.body) if e is not None]
                answered.append((reg, infos, ents))
            merged = self._combine(tenant, found, answered)
            for eid in batch:
                if eid in merged:
                    page.append(merged[eid])
                elif eid not in unsure:
                    del entries[eid]  # no longer fits the query (or is gone)
                    removed += 1
        if removed and self.maps is not None:
            await self.maps.save(tenant, doc)
        return page, len(candidates) - removed, pos < len(candidates)

    async def registered_types(self, tenant: str) -> set[str]:
        """The entity types the tenant's active registrations name (expanded)."""
        out: set[str] = set()
        for reg in await self.registrations.active(tenant):
            if reg.supports("queryEntity"):
                out.update(t for info in reg.infos for e in info.entities for t in e.types)
        return out

    # -- other reads, merged as JSON -------------------------------------------------------

    async def query_json(
        self,
        tenant: str,
        operation: str,
        query: EntityQuery,
        tm: TermMap,
        call: Call,
        path: str,
        params: dict[str, str],
    ) -> tuple[list[dict[str, Any]], int, dict[str, str]]:
        """Forward a read the sources answer with a list of entities in a representation
        this hub does not parse (temporal evolutions): the request's own parameters are
        passed on in its order, its page as the first ``offset + limit``; nothing is
        added. Returns the entities the
        sources answered (each only if the registration may hold it and the caller may
        read its type), the sum of their counts, and the ``NGSILD-Warning`` header."""
        sources = await self.sources(
            tenant,
            operation,
            types=query.types,
            ids=query.ids,
            id_pattern=query.id_pattern,
            attrs=query.attrs,
        )
        if not sources:
            return [], 0, {}
        want = min(query.offset + query.limit, self.max_limit)
        sent: dict[str, str] = {}
        for key, value in params.items():
            if key in ("limit", "offset"):  # the first offset + limit: the page is cut here
                sent.setdefault("limit", str(max(want, 1)))
            elif key != "local":
                sent[key] = value
        answers: list[Answer] = await asyncio.gather(
            *(self.forwarder.send(reg, call, "GET", path, params=sent) for reg, _i in sources)
        )
        access = current_access()
        found: list[dict[str, Any]] = []
        total = 0
        failed: list[Answer] = []
        for (_reg, infos), answer in zip(sources, answers, strict=True):
            if not answer.ok or not isinstance(answer.body, list):
                if answer.error is None:
                    answer.error = f"answered {answer.status}"
                failed.append(answer)
                continue
            header = answer.headers.get("NGSILD-Results-Count") if answer.headers else None
            total += int(header) if header and header.isdigit() else len(answer.body)
            for item in answer.body:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    continue
                raw = item.get("type")
                types = [
                    tm.expand(t)
                    for t in (raw if isinstance(raw, list) else [raw])
                    if isinstance(t, str)
                ]
                probe = {"id": item["id"], "type": types}
                if not self._holds(infos, probe):
                    continue
                if access is not None and not access.can("read", tenant, types):
                    continue
                found.append(item)
        return found, total, warning(failed)

    async def retrieve_json(
        self,
        tenant: str,
        entity_id: str,
        tm: TermMap,
        call: Call,
        path: str,
        params: dict[str, str],
        *,
        operation: str = "retrieveTemporal",
        attrs: Sequence[str] | None = None,
    ) -> tuple[list[tuple[Registration, dict[str, Any]]], dict[str, str]]:
        """Forward a retrieve of one entity the sources answer in a representation this
        hub does not parse (its temporal evolution, clause 5.7.3): to each source whose
        registration matches the id and allows ``operation``, with the request's own
        parameters, ``attrs`` narrowed to what it is registered for. Returns what each
        source answered for the entity (a 404 is no answer, and no failure; the entity
        only if the caller may read its type), and the ``NGSILD-Warning`` header."""
        sources = await self.sources(tenant, operation, ids=[entity_id], attrs=attrs)
        if not sources:
            return [], {}
        sent = {k: v for k, v in params.items() if k != "local"}

        async def ask(reg: Registration, infos: list[Info]) -> Answer:
            asked = dict(sent)
            wanted = self._attrs(reg, infos, attrs)
            if wanted:
                asked["attrs"] = ",".join(tm.compact(a) for a in wanted)
            if reg.local_only:
                asked["local"] = "true"
            return await self.forwarder.send(reg, call, "GET", path, params=asked)

        answers: list[Answer] = await asyncio.gather(*(ask(r, i) for r, i in sources))
        access = current_access()
        found: list[tuple[Registration, dict[str, Any]]] = []
        failed: list[Answer] = []
        for (reg, infos), answer in zip(sources, answers, strict=True):
            if answer.status == 404:
                continue
            if not answer.ok or not isinstance(answer.body, dict):
                if answer.error is None:
                    answer.error = f"answered {answer.status}"
                failed.append(answer)
                continue
            body = answer.body
            if body.get("id", entity_id) != entity_id:
                continue
            raw = body.get("type")
            types = [
                tm.expand(t)
                for t in (raw if isinstance(raw, list) else [raw])
                if isinstance(t, str)
            ]
            if types and not self._holds(infos, {"id": entity_id, "type": types}):
                continue
            if access is not None and not access.can("read", tenant, types):
                continue
            found.append((reg, body))
        return found, warning(failed)

    # -- writes ------------------------------------------------------------------------------

    async def forward_write(
        self,
        tenant: str,
        operation: str,
        call: Call,
        method: str,
        path: str,
        *,
        entity_id: str,
        tm: TermMap,
        body: Any = None,
        types: Sequence[str] | None = None,
        attr: str | None = None,
        params: dict[str, str] | None = None,
        context: Any = None,
        content_type: str = "application/json",
        whole: bool = False,
    ) -> WritePlan:
        """Send a write of one entity on to the sources registered for it (clause
        4.3.6.3; :func:`route_write` says what goes where) and say what is left to
        write here."""
        route = route_write(
            await self.registrations.active(tenant),
            operation,
            entity_id=entity_id,
            tm=tm,
            body=body,
            types=types,
            attr=attr,
            whole=whole,
            may_write=self._may_write(tenant),
        )
        refusal = route.refusal
        if refusal is not None:
            raise refusal
        ld = content_type.endswith("ld+json")
        answers: list[Answer] = await asyncio.gather(
            *(
                self.forwarder.send(
                    reg,
                    call,
                    method,
                    path,
                    params=params,
                    body={**part, "@context": context}
                    if ld and isinstance(part, dict) and context is not None
                    else part,
                    content_type=content_type,
                )
                for reg, part in route.parts
            )
        )
        return WritePlan(route.local_body, route.run_local, list(answers), route.refused)

    async def forward_batch(
        self,
        tenant: str,
        operation: str,
        call: Call,
        path: str,
        items: Sequence[tuple[str, Sequence[str] | None, Any, TermMap]],
        *,
        params: dict[str, str] | None = None,
    ) -> tuple[
        list[tuple[Any, bool] | NgsiLdError],
        list[tuple[Registration, list[str], Answer]],
        list[tuple[str, Registration]],
    ]:
        """A batch write (``items``: entity id, types, body, term map; a delete's body is
        None) sent on to the sources, one batch request per source holding part of it.
        Returns, per item, what is left to write here (body, whether to) or the error
        refusing it (a Conflict when all of it was refused, or Forbidden), per source the
        ids it was sent and its answer, and the (entity id, registration) pairs of the
        parts refused by registrations that do not accept the operation."""
        regs = await self.registrations.active(tenant)
        left: list[tuple[Any, bool] | NgsiLdError] = []
        refusals: list[tuple[str, Registration]] = []
        per_source: dict[str, tuple[Registration, list[str], list[Any]]] = {}
        for entity_id, types, body, tm in items:
            try:
                route = route_write(
                    regs,
                    operation,
                    entity_id=entity_id,
                    tm=tm,
                    body=body,
                    types=types,
                    whole=operation in ("createBatch", "upsertBatch"),
                    may_write=self._may_write(tenant),
                )
            except NgsiLdError as exc:
                left.append(exc)
                continue
            refusal = route.refusal
            if refusal is not None:
                left.append(refusal)
                continue
            refusals += [(entity_id, reg) for reg in route.refused]
            left.append((route.local_body, route.run_local))
            for reg, part in route.parts:
                held = per_source.setdefault(reg.id, (reg, [], []))
                held[1].append(entity_id)
                held[2].append(entity_id if part is None else part)
        sources = list(per_source.values())
        answers: list[Answer] = await asyncio.gather(
            *(
                self.forwarder.send(reg, call, "POST", path, params=params, body=parts)
                for reg, _ids, parts in sources
            )
        )
        sent = [(reg, ids, a) for (reg, ids, _p), a in zip(sources, answers, strict=True)]
        return left, sent, refusals

    async def forward_purge(
        self, tenant: str, query: EntityQuery, call: Call, params: dict[str, str]
    ) -> list[Answer]:
        """``DELETE /entities`` (purge) sent on, with the request's own parameters, to
        the sources registered for ``purgeEntity`` and for what it selects."""
        sources = await self.sources(
            tenant, "purgeEntity", types=query.types, ids=query.ids, id_pattern=query.id_pattern
        )
        answers: list[Answer] = await asyncio.gather(
            *(
                self.forwarder.send(reg, call, "DELETE", "/entities", params=params)
                for reg, _infos in sources
            )
        )
        return answers

    # -- subscriptions -----------------------------------------------------------------------

    async def mirror(
        self,
        tenant: str,
        operation: str,
        call: Call,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        types: Sequence[Sequence[str]] | None = None,
        csf: Node | None = None,
    ) -> dict[str, str]:
        """Send a subscription operation on to the sources registered for it, so that a
        subscription made here also hears of changes at the sources (clause 4.3.6.3,
        ``federationOps``): the source notifies the subscriber's endpoint directly,
        under the same subscription id. Returns the ``NGSILD-Warning`` header for the
        sources that failed (a source that does not know the subscription is no
        failure)."""
        sources = await self.sources(tenant, operation, types=types, csf=csf)
        if not sources:
            return {}
        answers: list[Answer] = await asyncio.gather(
            *(
                self.forwarder.send(reg, call, method, path, body=body, content_type=content_type)
                for reg, _i in sources
            )
        )
        failed = []
        for answer in answers:
            if answer.error is None and answer.status is not None and answer.status >= 400:
                if answer.status == 404 and method != "POST":
                    continue
                answer.error = f"answered {answer.status}"
            if answer.error is not None:
                failed.append(answer)
        return warning(failed)

    # -- retrieve --------------------------------------------------------------------------

    async def retrieve(
        self,
        tenant: str,
        entity_id: str,
        tm: TermMap,
        call: Call,
        *,
        attrs: Sequence[str] | None = None,
        local: bool = False,
        asked: MapRequest | None = None,
    ) -> tuple[Entity, dict[str, str], bool]:
        """The entity as this hub and the sources registered for it hold it, with the
        headers to answer with and whether an entity map was made for the request;
        ResourceNotFound when nobody has it. A source registered for ``queryEntity`` but
        not ``retrieveEntity`` is asked with a query by id (``GET /entities?id=...``),
        one registered for ``queryBatch`` only with a Query body naming the id.

        ``asked`` (clause 5.7.1.4): "If the data has not expired, only the retrieved
        Entity Map shall be used to determine which Context Source Registrations match
        the Entity ID"; otherwise a new map of who answered for the entity is made."""
        doc = None
        if asked is not None and asked.ref is not None and self.maps is not None:
            doc = await self.maps.find(tenant, asked.ref)
        sources: list[tuple[Registration, list[Info]]] = []
        if not local:
            for op in ("retrieveEntity", "queryEntity", "queryBatch"):
                for reg, infos in await self.sources(tenant, op, ids=[entity_id], attrs=attrs):
                    if all(reg.id != r.id for r, _i in sources):
                        sources.append((reg, infos))
        linked: dict[str, str] = {}
        if doc is not None:
            holders = doc["entityMap"].get(entity_id, [])
            sources = [(reg, infos) for reg, infos in sources if reg.id in holders]
            linked = doc.get("linkedMaps") or {}
        if not sources and asked is None:
            return await self.entities.retrieve(tenant, entity_id), {}, False

        async def ask_local() -> list[Entity]:
            try:
                return [await self.entities.retrieve(tenant, entity_id)]
            except ResourceNotFound:
                return []

        async def ask(reg: Registration, infos: list[Info]) -> Answer:
            sent = self._page_params(call, None)
            if reg.local_only:
                sent["local"] = "true"
            wanted = self._attrs(reg, infos, attrs)
            if wanted:
                sent["attrs"] = ",".join(tm.compact(a) for a in wanted)
            link = linked.get(reg.id)
            extra = {"NGSILD-EntityMap": link} if link else None
            if reg.supports("retrieveEntity"):
                path = f"/entities/{Forwarder.segment(entity_id)}"
                return await self.forwarder.send(reg, call, "GET", path, params=sent, extra=extra)
            types = reg.types_for(infos)
            if reg.supports("queryEntity"):
                sent["id"] = entity_id
                if types:
                    sent["type"] = ",".join(sorted(tm.compact(t) for t in types))
                answer = await self.forwarder.send(
                    reg, call, "GET", "/entities", params=sent, extra=extra
                )
            else:  # queryBatch only: a Query body naming the id
                selector: dict[str, Any] = {"id": entity_id}
                if types:
                    selector["type"] = ",".join(sorted(tm.compact(t) for t in types))
                query: dict[str, Any] = {"type": "Query", "entities": [selector]}
                if "attrs" in sent:
                    query["attrs"] = sent.pop("attrs").split(",")
                answer = await self.forwarder.send(
                    reg,
                    call,
                    "POST",
                    "/entityOperations/query",
                    params=sent,
                    body=query,
                    extra=extra,
                )
            if answer.ok and isinstance(answer.body, list | dict):  # a query's answer
                listed = answer.body if isinstance(answer.body, list) else [answer.body]
                found = [e for e in listed if isinstance(e, dict) and e.get("id") == entity_id]
                answer.body = found[0] if found else None
                answer.status = 200 if found else 404
            return answer

        mine = asyncio.ensure_future(ask_local())
        try:
            answers: list[Answer] = await asyncio.gather(
                *(ask(reg, infos) for reg, infos in sources)
            )
        finally:
            found = await mine
        answered: list[tuple[Registration, list[Info], list[Entity]]] = []
        failed: list[Answer] = []
        for (reg, infos), answer in zip(sources, answers, strict=True):
            if answer.status == 404:
                continue
            if not answer.ok or not isinstance(answer.body, dict):
                if answer.error is None:
                    answer.error = f"answered {answer.status}"
                failed.append(answer)
                continue
            ent = parse_remote(answer.body, tm)
            if ent is not None and ent.get("id") == entity_id:
                answered.append((reg, infos, [ent]))
        merged = self._combine(tenant, found, answered)
        if entity_id not in merged:
            missing = ResourceNotFound(f"entity {entity_id} not found")
            missing.headers.update(warning(failed))
            raise missing
        headers = warning(failed)
        created = False
        if asked is not None and self.maps is not None:
            if doc is None:
                holders = [LOCAL] if found else []
                holders += [reg.id for reg, _infos, _ents in answered]
                doc = await self.maps.create(
                    tenant, {entity_id: holders}, {}, lifetime=asked.lifetime
                )
                created = True
            headers["NGSILD-EntityMap"] = location(doc["id"])
        return merged[entity_id], headers, created
