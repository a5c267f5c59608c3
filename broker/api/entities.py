"""``/ngsi-ld/v1/entities``: create, retrieve, query, purge, replace, merge, delete, attributes.

Routes stay thin: check parameters and media types, resolve the context, call one
service method, render. Checks run in the order the specification's common
behaviours test: media types (415/406) and parameters (400) before any look-up (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import GEO_JSON, JSON, LD_JSON, csv_param, negotiate, page_links, respond
from broker.api.deps import Hub, HubDep, Operation, OperationDep, TenantDep
from broker.api.prefer import amend, preferences
from broker.core.distributed import MapRequest, write_params
from broker.core.entities import UpdateResult
from broker.core.entitymaps import lifetime_of, map_id_of
from broker.core.model import Parser, View
from broker.errors import (
    BadRequestData,
    Conflict,
    NgsiLdError,
    NonexistentTenant,
    ResourceNotFound,
)
from broker.federation.forward import Answer, Call
from broker.federation.registrations import Registration
from broker.jsonld.context import TermMap
from broker.model.entity import Entity, check_entity_id, check_name, id_segment, is_uri
from broker.model.query import And, Comparison, Exists, GeoQuery, Node, Or
from broker.model.store import EntityQuery, Selector
from broker.query import (
    expand_q_values,
    geo_query_from_json,
    parse_geo_query,
    parse_q,
    parse_scope_q,
    resolve_geo,
    resolve_q,
)
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["entities"])

ENTITY_OFFERS = (JSON, LD_JSON, GEO_JSON)
ENTITY_ANSWERS = P.answers(*ENTITY_OFFERS)


def _no_content() -> Response:
    return Response(status_code=204)


def _update_response(result: UpdateResult, tm: TermMap) -> Response:
    if result.not_updated:
        return respond(result.body(), tm=tm, kind=JSON, status=207)
    return _no_content()


async def _render(
    hub: Hub, tenant: str, request: Request, view: View, entities: list[Entity], kind: str
) -> Any:
    """Render entities, joining linked entities when ``join`` asks for it."""
    if kind == GEO_JSON:
        return [view.feature(e, view.geometry_property) for e in entities]
    if view.join is None:
        return [view.entity(e) for e in entities]
    linked = await hub.entities.linked(tenant, entities, view.join_level)
    flat: list[dict[str, Any]] = []
    roots = [view.entity(ent, linked, flat) for ent in entities]
    if view.join != "flat" or not flat:
        return roots
    seen = {e["id"] for e in entities}
    return [*roots, *(f for f in flat if f.get("id") not in seen)]


# -- distributed writes ----------------------------------------------------------------------

LocalWrite = Callable[[Any], Awaitable[Response]]


def _source_error(entity_id: str, answer: Answer) -> dict[str, Any]:
    body = answer.body if isinstance(answer.body, dict) else {}
    problem = {
        "type": body.get("type", "https://uri.etsi.org/ngsi-ld/errors/InternalError"),
        "title": body.get("title", "Context source error"),
        "status": answer.status or 504,
        "detail": f"{answer.reg.endpoint}: {answer.error or body.get('detail', '')}".strip(),
    }
    return {"entityId": entity_id, "registrationId": answer.reg.id, "error": problem}


def refused_error(entity_id: str, reg: Registration, operation: str) -> dict[str, Any]:
    """The BatchOperationResult error of the part of a write ``reg`` holds and does not
    accept (clause 5.6.1.4: a Conflict, or a partial success)."""
    problem = Conflict(
        f"registration {reg.id} ({reg.mode}) holds part of what this {operation} would "
        "change, and does not accept it"
    ).problem()
    return {"entityId": entity_id, "registrationId": reg.id, "error": problem}


def named_types(body: dict[str, Any]) -> list[str]:
    """The type names an entity in a request body gives (``type`` or ``@type``, one or a
    list), as written: what a write is routed to context sources by."""
    raw = body.get("type", body.get("@type"))
    return [t for t in (raw if isinstance(raw, list) else [raw]) if isinstance(t, str)]


async def write_through(
    request: Request,
    hub: Hub,
    tenant: str,
    operation: str,
    entity_id: str,
    local_write: LocalWrite,
    *,
    tm: TermMap,
    body: Any = None,
    context: Any = None,
    types: list[str] | None = None,
    attr: str | None = None,
    whole: bool = False,
    created: bool = False,
    location: str | None = None,
) -> Response:
    """A write of one entity here and at the context sources registered for it
    (``broker.core.distributed``: what goes where). When every part succeeds the answer
    is the operation's own; otherwise 207 with a BatchOperationResult naming each
    failure, this hub's and the sources'."""
    if P.bool_param(request.query_params.get("local"), "local"):
        return await local_write(body)
    ld = (request.headers.get("content-type") or "").startswith("application/ld+json")
    params = write_params(request.query_params.items())
    plan = await hub.distributed.forward_write(
        tenant,
        operation,
        forward_call(request, tenant),
        request.method,
        str(request.scope["path"]).removeprefix("/ngsi-ld/v1"),
        entity_id=entity_id,
        tm=tm,
        body=body,
        types=types,
        attr=attr,
        params=params,
        context=context,
        content_type="application/ld+json" if ld else "application/json",
        whole=whole,
    )
    if not plan.answers and not plan.refused:
        return await local_write(plan.local_body) if plan.run_local else _no_content()
    errors: list[dict[str, Any]] = []
    answer: Response | None = None
    if plan.run_local:
        try:
            answer = await local_write(plan.local_body)
        except NgsiLdError as exc:
            errors.append({"entityId": entity_id, "error": exc.problem()})
    errors += [_source_error(entity_id, a) for a in plan.answers if not a.ok]
    errors += [refused_error(entity_id, reg, operation) for reg in plan.refused]
    if errors:
        done = answer is not None or any(a.ok for a in plan.answers)
        result = {"success": [entity_id] if done else [], "errors": errors}
        return respond(result, tm=tm, kind=JSON, status=207)
    if answer is not None:
        return answer
    if created:
        location = location or f"/ngsi-ld/v1/entities/{id_segment(entity_id)}"
        return Response(status_code=201, headers={"Location": location})
    return _no_content()


EntityWrite = Callable[[Any, TermMap], Awaitable[UpdateResult | None]]


async def write_body(
    op: Operation,
    operation: str,
    entity_id: str,
    write: EntityWrite,
    *,
    merge_patch: bool = False,
    attr: str | None = None,
    whole: bool = False,
) -> Response:
    """A write of one entity with the request's body (replace, merge, append or update
    the entity, replace or update one attribute ``attr``): the body read and its context
    resolved, then the attribute name and the id checked (the order the common behaviours
    test), then ``write(body, tm)`` (the service call) here and the parts registered
    elsewhere sent there (``write_through``). 204, or 207 when ``write`` names attributes
    it did not update."""
    request, hub, tenant = op.request, op.hub, op.tenant
    payload, tm = await hub.payload(request, allow_merge_patch=merge_patch)
    if attr is not None:
        check_name(attr)
    check_entity_id(entity_id)

    async def here(body: Any) -> Response:
        result = await write(body, tm)
        return _no_content() if result is None else _update_response(result, tm)

    return await write_through(
        request,
        hub,
        tenant,
        operation,
        entity_id,
        here,
        tm=tm,
        body=payload.body,
        context=payload.context,
        attr=attr,
        whole=whole,
    )


# -- collection ------------------------------------------------------------------------------


@router.post(
    "/entities",
    status_code=201,
    summary="Create entity (clause 6.4.3.1)",
    openapi_extra=P.json_body("The entity to create (clause 5.6.1)."),
)
async def create_entity(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    payload, tm = await hub.payload(request)

    async def here(body: Any) -> Response:
        ent = await hub.entities.create(tenant, body, tm)
        location = f"/ngsi-ld/v1/entities/{id_segment(ent['id'])}"
        return Response(status_code=201, headers={"Location": location})

    body = payload.body
    eid = body.get("id", body.get("@id")) if isinstance(body, dict) else None
    if not isinstance(eid, str) or not is_uri(eid):
        return await here(body)  # invalid: refused here, sent nowhere
    if await hub.registrations.active(tenant):
        Parser(tm, max_attributes=hub.settings.max_attributes).entity(body)  # 400 before sending
    types = named_types(body)
    return await write_through(
        request,
        hub,
        tenant,
        "createEntity",
        eid,
        here,
        tm=tm,
        body=body,
        context=payload.context,
        types=types or None,
        whole=True,
        created=True,
    )


def entity_query(
    sel: P.Selection,
    hub: Hub,
    tm: TermMap,
    *,
    attrs: str | None = None,
    options: str | None = None,
    local: str | None = None,
    paged: bool = True,
    unfiltered: bool = False,
) -> EntityQuery:
    """The EntityQuery of GET /entities (and of purge) from its query parameters.

    ``unfiltered``: a query that names no type, attribute or filter selects every
    entity (``RENKEI_ALLOW_UNFILTERED_QUERIES``) instead of being refused."""
    with P.parameter("jsonKeys"):
        for name in csv_param(sel.json_keys):
            check_name(name)
    return build_query(
        hub,
        tm,
        ids=csv_param(sel.id),
        id_pattern=sel.id_pattern,
        types=type_alternatives(sel.type),
        attrs=csv_param(attrs),
        q=sel.q,
        geo=_geo(sel),
        scope_q=sel.scope_q,
        limit=sel.limit,
        offset=sel.offset,
        count=P.bool_param(sel.count, "count") or "count" in P.options_of(options),
        paged=paged,
        everything=P.bool_param(local, "local") or unfiltered,
        order_by=_order_by(sel.order_by, tm),
        expand_values=csv_param(sel.expand_values),
    )


_GEO_PARTS = ("georel", "geometry", "coordinates", "geoproperty")


def _geo(sel: P.Selection) -> GeoQuery | None:
    """The geo-query of the four parameters, or of ``geoQ``, which carries them in one:
    a JSON object (as in a Query body, clause 5.2.13) or ``georel=...&geometry=...``."""
    parts = (sel.georel, sel.geometry, sel.coordinates, sel.geoproperty)
    if sel.geo_q is None:
        with P.parameter(*(n for n, v in zip(_GEO_PARTS, parts, strict=True) if v is not None)):
            return parse_geo_query(*parts)
    with P.parameter("geoQ"):
        return _geo_q(sel.geo_q, parts)


def _geo_q(geo_q: str, parts: tuple[str | None, ...]) -> GeoQuery | None:
    if any(p is not None for p in parts):
        raise BadRequestData(
            "geoQ cannot be combined with georel, geometry, coordinates or geoproperty"
        )
    text = geo_q.strip()
    if text.startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadRequestData(f"geoQ is not valid JSON: {exc}") from exc
        return geo_query_from_json(obj)
    given: dict[str, str] = {}
    for item in text.split("&"):
        key, eq, value = item.partition("=")
        if not eq or key not in _GEO_PARTS:
            raise BadRequestData(
                "geoQ must be a JSON object or georel=...&geometry=...&coordinates=..."
                "[&geoproperty=...]"
            )
        given[key] = value
    return parse_geo_query(*(given.get(k) for k in _GEO_PARTS))


def _order_by(text: str | None, tm: TermMap) -> list[tuple[Any, bool]] | None:
    """``orderBy=name;desc,type``: entity members or attribute paths, ;asc or ;desc."""
    if text is None:
        return None
    with P.parameter("orderBy"):
        return _order_keys(text, tm)


def _order_keys(text: str, tm: TermMap) -> list[tuple[Any, bool]]:
    keys: list[tuple[Any, bool]] = []
    for part in text.split(","):
        name, _, direction = part.strip().partition(";")
        if direction not in ("", "asc", "desc") or not name:
            raise BadRequestData(f"invalid orderBy term {part!r}: use name, name;asc or name;desc")
        if name in ("id", "type", "createdAt", "modifiedAt"):
            keys.append((name, direction == "desc"))
            continue
        node = resolve_q(parse_q(name), tm.expand)
        if not isinstance(node, Exists) or node.negated:
            raise BadRequestData(f"invalid orderBy attribute path {name!r}")
        keys.append((node.path, direction == "desc"))
    return keys


def checked_q(text: str) -> Node:
    node = parse_q(text)
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, And | Or):
            stack.extend(n.items)
        elif isinstance(n, Comparison) and n.op in ("~=", "!~=") and isinstance(n.value, str):
            check_pattern(n.value)
    return node


def build_query(
    hub: Hub,
    tm: TermMap,
    *,
    ids: list[str],
    id_pattern: str | None,
    types: list[list[str]],
    attrs: list[str],
    q: str | None,
    geo: GeoQuery | None,
    scope_q: str | None,
    limit: str | None,
    offset: str | None,
    count: bool,
    paged: bool = True,
    selectors: list[Selector] | None = None,
    everything: bool = False,
    order_by: list[tuple[Any, bool]] | None = None,
    expand_values: list[str] | None = None,
) -> EntityQuery:
    """Validate and resolve (expand) the parts of a query against the request context.

    ``expand_values`` names the attributes whose values in ``q`` are terms to expand
    (clause 6.3.x, ``expandValues``: a VocabProperty holds IRIs)."""
    s = hub.settings
    limit_n, offset_n = P.paging(limit, offset, s, bounded=paged)
    with P.parameter("id"):
        for eid in ids:
            check_entity_id(eid)
    if id_pattern is not None:
        with P.parameter("idPattern"):
            check_pattern(id_pattern)
    # a query must narrow by type, attributes or a filter; a purge may also name ids
    typed = bool(types) or any(sel.types for sel in selectors or ())
    if not paged and (ids or id_pattern):
        typed = True
    if not (typed or attrs or q or geo or scope_q or everything):
        raise BadRequestData(
            "a query needs at least one of type, attrs, q, scopeQ or a geo-query (or local=true)"
        )
    with P.parameter("type"):
        type_iris = [[tm.expand(check_name(t, "entity type")) for t in alt] for alt in types]
    with P.parameter("attrs"):
        attr_iris = [tm.expand(check_name(a)) for a in attrs]
    with P.parameter("q"):
        q_node = resolve_q(checked_q(q), tm.expand) if q else None
        if q_node is not None and expand_values:
            q_node = expand_q_values(q_node, {tm.expand(a) for a in expand_values}, tm.expand)
    with P.parameter("scopeQ"):
        scope = parse_scope_q(scope_q) if scope_q else None
    return EntityQuery(
        ids=ids or None,
        id_pattern=id_pattern,
        types=type_iris or None,
        attrs=attr_iris or None,
        q=q_node,
        geo=resolve_geo(geo, tm.expand) if geo else None,
        scope_q=scope,
        selectors=selectors,
        order_by=order_by,
        limit=limit_n,
        offset=offset_n,
        count=count,
    )


@router.get("/entities", summary="Query entities (clause 6.4.3.2)", responses=ENTITY_ANSWERS)
async def query_entities(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[P.EntityQueryParams, P.group(P.EntityQueryParams)],
) -> Response:
    P.check_params(request)
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(params, tm)
    query = entity_query(
        params,
        hub,
        tm,
        attrs=params.attrs,
        options=params.options,
        local=params.local,
        unfiltered=hub.settings.allow_unfiltered_queries,
    )
    local = P.bool_param(params.local, "local")
    csf = resolve_q(checked_q(params.csf), tm.expand) if params.csf else None
    return await query_response(
        hub,
        tenant,
        request,
        view,
        query,
        kind,
        forward=dict(request.query_params),
        local=local,
        csf=csf,
        entity_map=map_request(request, params),
    )


def map_request(request: Request, params: P.Representation) -> MapRequest | None:
    """What a request asks of entity maps (Table 6.4.3.2-1/-2): ``entityMap=true`` or a
    map named by the ``NGSILD-EntityMap`` header; None when neither."""
    wanted = P.bool_param(params.entity_map, "entityMap")
    with P.parameter("entityMapLifetime"):
        lifetime = lifetime_of(params.entity_map_lifetime)
    named = request.headers.get("ngsild-entitymap")
    if named is not None:
        return MapRequest(ref=map_id_of(named), lifetime=lifetime)
    return MapRequest(lifetime=lifetime) if wanted else None


def forward_call(request: Request, tenant: str) -> Call:
    """What of a request goes along when it is forwarded to context sources."""
    headers = request.headers
    return Call(
        tenant=tenant,
        link=headers.get("link"),
        via=headers.get("via"),
        request=headers,
        params=dict(request.query_params),
    )


async def query_response(
    hub: Hub,
    tenant: str,
    request: Request,
    view: View,
    query: EntityQuery,
    kind: str,
    *,
    forward: dict[str, str] | None = None,
    local: bool = False,
    csf: Node | None = None,
    entity_map: MapRequest | None = None,
    batch: Call | None = None,
) -> Response:
    """Run a query and render the entities (GET /entities, POST /entityOperations/query).

    With ``forward`` (the request's query parameters), the query is also sent to the
    context sources registered for what it selects (``broker.core.distributed``); so
    is a query with a Query body (``batch``: what of the request goes along); with
    ``entity_map``, through an entity map (``broker.core.entitymaps``): 201 when the
    map was made for this request (Table 6.4.3.2-3)."""
    tm = view.tm
    headers: dict[str, str] = {}
    created = False
    mapped_more: bool | None = None  # what the map says follows this page
    # one more than a page tells whether a next page exists (clause 5.5.9)
    probe = replace(query, limit=query.limit + 1) if query.limit > 0 else query
    if entity_map is not None:
        # the map tells whether entities follow: no need to fetch one more
        entities, total, headers, created, mapped_more = await hub.distributed.query_mapped(
            tenant,
            query,
            tm,
            forward_call(request, tenant),
            forward,
            entity_map,
            local=local,
            csf=csf,
        )
    elif forward is not None or batch is not None:
        entities, total, headers = await hub.distributed.query(
            tenant,
            probe,
            tm,
            batch or forward_call(request, tenant),
            forward,
            local=local,
            csf=csf,
            batch=batch is not None,
        )
    else:
        try:
            entities, total = await hub.entities.query(tenant, probe)
        except NonexistentTenant:
            entities, total = [], 0
    more = len(entities) > query.limit if mapped_more is None else mapped_more and query.limit > 0
    del entities[query.limit :]
    links = page_links(request, offset=query.offset, limit=query.limit, more=more, kind=kind)
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    body = await _render(hub, tenant, request, view, entities, kind)
    if view.pick is not None or view.omit is not None:
        body = [b for b in body if b.get("properties", b)]  # what pick/omit emptied is no match
    if kind == GEO_JSON:
        body = {"type": "FeatureCollection", "features": body}
    return _answer(request, view, body, kind, headers=headers, links=links, created=created)


def _answer(
    request: Request,
    view: View,
    body: Any,
    kind: str,
    *,
    headers: dict[str, str] | None = None,
    links: list[str] | None = None,
    created: bool = False,
) -> Response:
    """Respond with entities as the request's ``Prefer`` headers ask (``broker.api.prefer``);
    ``created``: an entity map was made for the request (201, Table 6.4.3.2-3)."""
    prefs = preferences(request)
    status = 201 if created else 200
    headers = dict(headers or {})
    applied = prefs.applied
    if prefs.version is not None and applied is not None:
        headers["Preference-Applied"] = applied
        if view.format != "keyValues" and amend(body, prefs.version):
            status = 203
    return respond(
        body,
        tm=view.tm,
        kind=kind,
        status=status,
        headers=headers,
        links=links,
        geo_context_in_body=not prefs.body_json,
    )


@router.delete("/entities", status_code=204, summary="Purge entities (clause 6.4.3.3)")
async def purge_entities(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    type: P.EntityTypes = None,
    id: P.EntityIds = None,
    id_pattern: P.IdPattern = None,
    q: P.Q = None,
    scope_q: P.ScopeQ = None,
    local: P.Local = None,
    keep: P.Keep = None,
    drop: P.Drop = None,
) -> Response:
    P.check_params(request)
    tm = await hub.link_term_map(request)
    if keep is not None and drop is not None:
        raise BadRequestData("keep and drop cannot be used together")
    sel = P.Selection.model_construct(id=id, type=type, id_pattern=id_pattern, q=q, scope_q=scope_q)
    if all(v is None for v in (type, id, id_pattern, q, scope_q)) and P.bool_param(local, "local"):
        query = EntityQuery()  # local=true with no selector: everything this broker holds
    else:
        query = entity_query(sel, hub, tm, local=local, paged=False)
    names = csv_param(keep if keep is not None else drop)
    attrs = {tm.expand(check_name(a)) for a in names}
    sent: list[Answer] = []
    if not P.bool_param(local, "local"):
        params = {k: v for k, v in request.query_params.items() if k != "local"}
        sent = await hub.distributed.forward_purge(
            tenant, query, forward_call(request, tenant), params
        )
    await hub.entities.purge(
        tenant,
        query,
        keep=attrs if keep is not None else None,
        drop=attrs if drop is not None else None,
    )
    errors = [_source_error("", a) for a in sent if not a.ok]
    if errors:
        return respond({"success": [], "errors": errors}, tm=tm, kind=JSON, status=207)
    return _no_content()


@router.put("/entities", include_in_schema=False)
@router.patch("/entities", include_in_schema=False)
async def _no_entity_id() -> Response:
    raise BadRequestData("the entity id is missing from the URL")


# -- one entity ------------------------------------------------------------------------------


def _has_type(ent: Entity, types: list[list[str]]) -> bool:
    """Whether the entity's types satisfy one of the alternatives (expanded IRIs)."""
    held = ent.get("type")
    have = set(held) if isinstance(held, list) else {held}
    return any(all(t in have for t in alt) for alt in types)


@router.get(
    "/entities/{entity_id:path}",
    summary="Retrieve entity (clause 6.5.3.1)",
    responses=ENTITY_ANSWERS,
)
async def retrieve_entity(
    entity_id: P.EntityIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[P.RetrieveParams, P.group(P.RetrieveParams)],
) -> Response:
    P.check_params(request)
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(params, tm)
    types = [
        [tm.expand(check_name(t, "entity type")) for t in alt]
        for alt in type_alternatives(params.type)
    ]
    wanted = view.attrs if view.attrs is not None else None
    ent, headers, created = await hub.distributed.retrieve(
        tenant,
        entity_id,
        tm,
        forward_call(request, tenant),
        attrs=sorted(wanted) if wanted else None,
        local=P.bool_param(params.local, "local"),
        asked=map_request(request, params),
    )
    if types and not _has_type(ent, types):
        raise ResourceNotFound(f"entity {entity_id} is not of type {params.type}")
    rendered = await _render(hub, tenant, request, view, [ent], kind)
    body: Any = rendered if len(rendered) > 1 else rendered[0]
    root = rendered[0]
    if kind != GEO_JSON:
        if view.attrs is not None and not any(k not in ("id", "type", "scope") for k in root):
            raise ResourceNotFound(f"entity {entity_id} has none of the attributes asked for")
        if (view.pick is not None or view.omit is not None) and not root:
            raise ResourceNotFound(f"nothing of entity {entity_id} is left after pick/omit")
    return _answer(request, view, body, kind, headers=headers, created=created)


@router.delete(
    "/entities/{entity_id:path}/attrs/{attr:attr}",
    status_code=204,
    summary="Delete attribute (clause 6.7.3.2)",
)
async def delete_attribute(
    entity_id: P.EntityIdPath,
    attr: P.AttrPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    dataset_id: P.DatasetId = None,
    delete_all: P.DeleteAll = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    tm = await hub.link_term_map(request)
    name = check_name(attr)
    check_entity_id(entity_id)

    async def here(_body: Any) -> Response:
        await hub.entities.delete_attr(
            tenant,
            entity_id,
            name,
            tm,
            dataset_id=dataset_id,
            delete_all=P.bool_param(delete_all, "deleteAll"),
        )
        return _no_content()

    return await write_through(
        request, hub, tenant, "deleteAttrs", entity_id, here, tm=tm, attr=name
    )


@router.delete("/entities/{entity_id:path}/attrs", include_in_schema=False)
async def _delete_no_attr(entity_id: P.EntityIdPath) -> Response:
    return Response(status_code=405, headers={"Allow": "POST, PATCH"})


@router.delete(
    "/entities/{entity_id:path}", status_code=204, summary="Delete entity (clause 6.5.3.2)"
)
async def delete_entity(
    entity_id: P.EntityIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    type: P.EntityTypes = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    check_entity_id(entity_id)
    tm = hub.resolver.core  # nothing to expand: no need to read the Link header

    async def here(_body: Any) -> Response:
        await hub.entities.delete(tenant, entity_id)
        return _no_content()

    return await write_through(request, hub, tenant, "deleteEntity", entity_id, here, tm=tm)


@router.put(
    "/entities/{entity_id:path}/attrs/{attr:attr}",
    status_code=204,
    summary="Replace attribute (clause 6.7.3.3)",
    openapi_extra=P.json_body("The attribute to replace (clause 5.6.19)."),
)
async def replace_attribute(
    entity_id: P.EntityIdPath, attr: P.AttrPath, op: OperationDep, options: P.Options = None
) -> Response:
    write = partial(op.hub.entities.update_attr, op.tenant, entity_id, attr, replace=True)
    return await write_body(op, "replaceAttrs", entity_id, write, attr=attr)


@router.patch(
    "/entities/{entity_id:path}/attrs/{attr:attr}",
    status_code=204,
    summary="Partial attribute update (clause 6.7.3.1)",
    openapi_extra=P.json_body("The attribute fragment to update (clause 5.6.4).", merge_patch=True),
)
async def update_attribute(
    entity_id: P.EntityIdPath, attr: P.AttrPath, op: OperationDep, options: P.Options = None
) -> Response:
    write = partial(op.hub.entities.update_attr, op.tenant, entity_id, attr, replace=False)
    return await write_body(op, "updateAttrs", entity_id, write, merge_patch=True, attr=attr)


@router.post(
    "/entities/{entity_id:path}/attrs",
    status_code=204,
    summary="Append attributes (clause 6.6.3.1)",
    openapi_extra=P.json_body("Attributes to append (clause 5.6.3)."),
)
async def append_attributes(
    entity_id: P.EntityIdPath, op: OperationDep, options: P.Options = None
) -> Response:
    no_overwrite = "noOverwrite" in P.options_of(options)
    write = partial(op.hub.entities.append_attrs, op.tenant, entity_id, no_overwrite=no_overwrite)
    return await write_body(op, "appendAttrs", entity_id, write)


@router.patch(
    "/entities/{entity_id:path}/attrs",
    status_code=204,
    summary="Update attributes (clause 6.6.3.2)",
    openapi_extra=P.json_body("Attributes to update (clause 5.6.2).", merge_patch=True),
)
async def update_attributes(
    entity_id: P.EntityIdPath, op: OperationDep, options: P.Options = None
) -> Response:
    write = partial(op.hub.entities.update_attrs, op.tenant, entity_id)
    return await write_body(op, "updateAttrs", entity_id, write, merge_patch=True)


@router.put(
    "/entities/{entity_id:path}",
    status_code=204,
    summary="Replace entity (clause 6.5.3.3)",
    openapi_extra=P.json_body("The new content of the entity (clause 5.6.18)."),
)
async def replace_entity(
    entity_id: P.EntityIdPath, op: OperationDep, options: P.Options = None
) -> Response:
    write = partial(op.hub.entities.replace, op.tenant, entity_id)
    return await write_body(op, "replaceEntity", entity_id, write, whole=True)


@router.patch(
    "/entities/{entity_id:path}",
    status_code=204,
    summary="Merge entity (clause 6.5.3.4)",
    openapi_extra=P.json_body(
        "The fragment to merge into the entity (clause 5.6.17).", merge_patch=True
    ),
)
async def merge_entity(
    entity_id: P.EntityIdPath, op: OperationDep, options: P.Options = None
) -> Response:
    write = partial(op.hub.entities.merge, op.tenant, entity_id)
    return await write_body(op, "mergeEntity", entity_id, write, merge_patch=True)
