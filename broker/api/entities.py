"""``/ngsi-ld/v1/entities``: create, retrieve, query, purge, replace, merge, delete, attributes.

Routes stay thin: check parameters and media types, resolve the context, call one
service method, render. Checks run in the order the specification's common
behaviours test: media types (415/406) and parameters (400) before any look-up (404).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import GEO_JSON, JSON, LD_JSON, csv_param, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep
from broker.core.entities import UpdateResult
from broker.core.model import View
from broker.errors import BadRequestData, NonexistentTenant, ResourceNotFound
from broker.jsonld.context import TermMap
from broker.model.entity import Entity, check_entity_id, check_name
from broker.model.query import And, Comparison, Exists, GeoQuery, Node, Or
from broker.model.store import EntityQuery, Selector
from broker.query import (
    parse_geo_query,
    parse_q,
    parse_scope_q,
    resolve_geo,
    resolve_q,
)
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

#: Characters of an entity id kept as they are in a Location header (others,
#: such as Japanese ids, are percent-encoded: headers are Latin-1).
URI_SAFE = ":/@!$&'()*+,;=-._~"

router = APIRouter(prefix="/ngsi-ld/v1")

ENTITY_OFFERS = (JSON, LD_JSON, GEO_JSON)


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


# -- collection ------------------------------------------------------------------------------


@router.post("/entities")
async def create_entity(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.NONE)
    payload, tm = await hub.payload(request)
    ent = await hub.entities.create(tenant, payload.body, tm)
    return Response(
        status_code=201,
        headers={"Location": f"/ngsi-ld/v1/entities/{quote(ent['id'], safe=URI_SAFE)}"},
    )


def entity_query(request: Request, hub: Hub, tm: TermMap, *, paged: bool = True) -> EntityQuery:
    """The EntityQuery of GET /entities (and of purge) from its query parameters."""
    params = request.query_params
    ids = csv_param(params.get("id"))
    types = type_alternatives(params.get("type"))
    attrs = csv_param(params.get("attrs"))
    geo = parse_geo_query(
        params.get("georel"),
        params.get("geometry"),
        params.get("coordinates"),
        params.get("geoproperty"),
    )
    return build_query(
        hub,
        tm,
        ids=ids,
        id_pattern=params.get("idPattern"),
        types=types,
        attrs=attrs,
        q=params.get("q"),
        geo=geo,
        scope_q=params.get("scopeQ"),
        limit=params.get("limit"),
        offset=params.get("offset"),
        count=params.get("count") == "true" or "count" in P.options_of(request),
        paged=paged,
        everything=P.bool_param(request, "local"),
        order_by=_order_by(params.get("orderBy"), tm),
    )


def _order_by(text: str | None, tm: TermMap) -> list[tuple[Any, bool]] | None:
    """``orderBy=name;desc,type``: entity members or attribute paths, ;asc or ;desc."""
    if text is None:
        return None
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


def _checked_q(text: str) -> Node:
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
) -> EntityQuery:
    """Validate and resolve (expand) the parts of a query against the request context."""
    s = hub.settings
    limit_n, offset_n = P.paging(limit, offset, s, bounded=paged)
    for eid in ids:
        check_entity_id(eid)
    if id_pattern is not None:
        check_pattern(id_pattern)
    # a query must narrow by type, attributes or a filter; a purge may also name ids
    typed = bool(types) or any(sel.types for sel in selectors or ())
    if not paged and (ids or id_pattern):
        typed = True
    if not (typed or attrs or q or geo or scope_q or everything):
        raise BadRequestData(
            "a query needs at least one of type, attrs, q, scopeQ or a geo-query (or local=true)"
        )
    return EntityQuery(
        ids=ids or None,
        id_pattern=id_pattern,
        types=[[tm.expand(check_name(t, "entity type")) for t in alt] for alt in types] or None,
        attrs=[tm.expand(check_name(a)) for a in attrs] or None,
        q=resolve_q(_checked_q(q), tm.expand) if q else None,
        geo=resolve_geo(geo, tm.expand) if geo else None,
        scope_q=parse_scope_q(scope_q) if scope_q else None,
        selectors=selectors,
        order_by=order_by,
        limit=limit_n,
        offset=offset_n,
        count=count,
    )


@router.get("/entities")
async def query_entities(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.QUERY)
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(request, tm)
    query = entity_query(request, hub, tm)
    return await query_response(hub, tenant, request, view, query, kind)


async def query_response(
    hub: Hub, tenant: str, request: Request, view: View, query: EntityQuery, kind: str
) -> Response:
    """Run a query and render the entities (GET /entities, POST /entityOperations/query)."""
    tm = view.tm
    try:
        entities, total = await hub.entities.query(tenant, query)
    except NonexistentTenant:
        entities, total = [], 0
    headers = {"NGSILD-Results-Count": str(total)} if total is not None else {}
    body = await _render(hub, tenant, request, view, entities, kind)
    if view.pick is not None or view.omit is not None:
        body = [b for b in body if b.get("properties", b)]  # what pick/omit emptied is no match
    if kind == GEO_JSON:
        return respond(
            {"type": "FeatureCollection", "features": body}, tm=tm, kind=kind, headers=headers
        )
    return respond(body, tm=tm, kind=kind, headers=headers)


@router.delete("/entities")
async def purge_entities(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.PURGE)
    tm = await hub.link_term_map(request)
    params = request.query_params
    keep, drop = params.get("keep"), params.get("drop")
    if keep is not None and drop is not None:
        raise BadRequestData("keep and drop cannot be used together")
    selectors = ("type", "id", "idPattern", "q", "scopeQ")
    if not any(k in params for k in selectors) and P.bool_param(request, "local"):
        query = EntityQuery()  # local=true with no selector: everything this broker holds
    else:
        query = entity_query(request, hub, tm, paged=False)
    names = csv_param(keep if keep is not None else drop)
    attrs = {tm.expand(check_name(a)) for a in names}
    await hub.entities.purge(
        tenant,
        query,
        keep=attrs if keep is not None else None,
        drop=attrs if drop is not None else None,
    )
    return _no_content()


@router.put("/entities")
@router.patch("/entities")
async def _no_entity_id() -> Response:
    raise BadRequestData("the entity id is missing from the URL")


# -- one entity ------------------------------------------------------------------------------


@router.get("/entities/{entity_id:path}")
async def retrieve_entity(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.REPRESENTATION)
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(request, tm)
    ent = await hub.entities.retrieve(tenant, entity_id)
    rendered = await _render(hub, tenant, request, view, [ent], kind)
    body: Any = rendered if len(rendered) > 1 else rendered[0]
    root = rendered[0]
    if kind != GEO_JSON:
        if view.attrs is not None and not any(k not in ("id", "type", "scope") for k in root):
            raise ResourceNotFound(f"entity {entity_id} has none of the attributes asked for")
        if (view.pick is not None or view.omit is not None) and not root:
            raise ResourceNotFound(f"nothing of entity {entity_id} is left after pick/omit")
    return respond(body, tm=tm, kind=kind)


@router.delete("/entities/{entity_id:path}/attrs/{attr}")
async def delete_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.DELETE_ATTR)
    tm = await hub.link_term_map(request)
    await hub.entities.delete_attr(
        tenant,
        entity_id,
        check_name(attr),
        tm,
        dataset_id=request.query_params.get("datasetId"),
        delete_all=P.bool_param(request, "deleteAll"),
    )
    return _no_content()


@router.delete("/entities/{entity_id:path}/attrs")
async def _delete_no_attr(entity_id: str) -> Response:
    return Response(status_code=405, headers={"Allow": "POST, PATCH"})


@router.delete("/entities/{entity_id:path}")
async def delete_entity(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE | {"type"})
    await hub.entities.delete(tenant, entity_id)
    return _no_content()


@router.put("/entities/{entity_id:path}/attrs/{attr}")
async def replace_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    payload, tm = await hub.payload(request)
    await hub.entities.update_attr(
        tenant, entity_id, check_name(attr), payload.body, tm, replace=True
    )
    return _no_content()


@router.patch("/entities/{entity_id:path}/attrs/{attr}")
async def update_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    payload, tm = await hub.payload(request, allow_merge_patch=True)
    await hub.entities.update_attr(
        tenant, entity_id, check_name(attr), payload.body, tm, replace=False
    )
    return _no_content()


@router.post("/entities/{entity_id:path}/attrs")
async def append_attributes(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    no_overwrite = "noOverwrite" in P.options_of(request)
    payload, tm = await hub.payload(request)
    result = await hub.entities.append_attrs(
        tenant, entity_id, payload.body, tm, no_overwrite=no_overwrite
    )
    return _update_response(result, tm)


@router.patch("/entities/{entity_id:path}/attrs")
async def update_attributes(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    payload, tm = await hub.payload(request, allow_merge_patch=True)
    result = await hub.entities.update_attrs(tenant, entity_id, payload.body, tm)
    return _update_response(result, tm)


@router.put("/entities/{entity_id:path}")
async def replace_entity(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    payload, tm = await hub.payload(request)
    await hub.entities.replace(tenant, entity_id, payload.body, tm)
    return _no_content()


@router.patch("/entities/{entity_id:path}")
async def merge_entity(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.WRITE)
    payload, tm = await hub.payload(request, allow_merge_patch=True)
    await hub.entities.merge(tenant, entity_id, payload.body, tm)
    return _no_content()
