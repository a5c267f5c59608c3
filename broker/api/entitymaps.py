"""``/ngsi-ld/v1/entityMaps``: create entity maps for a query (clauses 5.14.4, 6.34) and
retrieve, update and delete them (clauses 5.14.1-5.14.3, 6.32; the maps themselves:
``broker.core.entitymaps``).

A query makes a map with ``entityMap=true`` (or when the map its ``NGSILD-EntityMap``
header names is gone) and answers with its location in the ``NGSILD-EntityMap`` header
(``broker.api.entities``). Access: these routes go through ``authorize`` like every
other; an anonymous client is refused (401), and a map is visible only to the principal
whose query made it (``broker.api.auth.classify``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.api.entities import checked_q, entity_query, forward_call
from broker.api.entity_operations import BodyQueryParams, body_query
from broker.core.distributed import MapRequest, params_of
from broker.core.entitymaps import lifetime_of, location, public
from broker.model.entity import check_entity_id
from broker.query import resolve_q

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["entity maps"])
ANSWERS = P.answers(JSON, LD_JSON)

EntityMapIdPath = Annotated[str, Path(description="Entity map id (a URI, clause 5.2.39).")]


@router.get(
    "/entityMaps",
    status_code=201,
    summary="Create entity map for a query (clauses 5.14.4, 6.34.3.1)",
    responses=P.answers(JSON, LD_JSON, status=201),
)
async def create_entity_map(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[P.EntityQueryParams, P.group(P.EntityQueryParams)],
) -> Response:
    """Clause 5.14.4: "very similar to the Query Entities operation ... except that it
    does not directly return Entities, but creates and returns an Entity map"; the
    same parameters, some ignored (limit, the representation, ``entityMap`` itself)."""
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    query = entity_query(
        params,
        hub,
        tm,
        attrs=params.attrs,
        local=params.local,
        unfiltered=hub.settings.allow_unfiltered_queries,
    )
    with P.parameter("entityMapLifetime"):
        lifetime = lifetime_of(params.entity_map_lifetime)
    csf = resolve_q(checked_q(params.csf), tm.expand) if params.csf else None
    doc, headers = await hub.distributed.make_map(
        tenant,
        query,
        tm,
        forward_call(request, tenant),
        dict(request.query_params),
        MapRequest(lifetime=lifetime),
        local=P.bool_param(params.local, "local"),
        csf=csf,
    )
    headers["NGSILD-EntityMap"] = location(doc["id"])
    return respond(public(doc), tm=tm, kind=kind, status=201, headers=headers)


@router.post(
    "/entityMaps",
    status_code=201,
    summary="Create entity map for a Query body (clauses 5.14.4, 6.34.3.2)",
    responses=P.answers(JSON, LD_JSON, status=201),
    openapi_extra=P.json_body('A Query (clause 5.2.23): {"type": "Query", "entities": ...}.'),
)
async def create_entity_map_from_body(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
    entity_map_lifetime: P.EntityMapLifetime = None,
) -> Response:
    """Table 6.34.3.2-1: "Payload body in the request contains a JSON-LD object which
    represents the query to be performed"; the map is made as for ``GET /entityMaps``.
    A body with one entity selector at most and no inline ``@context`` is sent on to
    the sources as ``GET /entities`` parameters (as ``POST /entityOperations/query``
    does); any other is answered from this hub's own entities."""
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    payload, tm = await hub.payload(request)
    _view, query = body_query(BodyQueryParams.model_construct(local=local), hub, payload.body, tm)
    text = entity_map_lifetime
    if text is None and isinstance(payload.body.get("entityMapLifetime"), str):
        text = payload.body["entityMapLifetime"]
    with P.parameter("entityMapLifetime"):
        lifetime = lifetime_of(text)
    here_only = P.bool_param(local, "local")
    selectors = query.selectors or []
    forward = None
    if len(selectors) <= 1 and payload.kind != LD_JSON and not here_only:
        sel = selectors[0] if selectors else None
        query = replace(
            query,
            ids=sel.ids if sel else None,
            id_pattern=sel.id_pattern if sel else None,
            types=sel.types if sel else None,
            selectors=None,
        )
        forward = params_of(query, tm)
    doc, headers = await hub.distributed.make_map(
        tenant,
        query,
        tm,
        forward_call(request, tenant),
        forward,
        MapRequest(lifetime=lifetime),
        local=here_only or forward is None,
    )
    headers["NGSILD-EntityMap"] = location(doc["id"])
    return respond(public(doc), tm=tm, kind=kind, status=201, headers=headers)


@router.get(
    "/entityMaps/{map_id:path}",
    summary="Retrieve entity map (clauses 5.14.1, 6.32.3.1)",
    responses=ANSWERS,
)
async def retrieve_entity_map(
    map_id: EntityMapIdPath, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    doc = await hub.entity_maps.get(tenant, map_id)
    return respond(public(doc), tm=tm, kind=kind)


@router.patch(
    "/entityMaps/{map_id:path}",
    status_code=204,
    summary="Update entity map (clauses 5.14.2, 6.32.3.2)",
    openapi_extra=P.json_body("The entity map members to change (expiresAt).", merge_patch=True),
)
async def update_entity_map(
    map_id: EntityMapIdPath, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request)
    check_entity_id(map_id, "entity map id")
    payload, _tm = await hub.payload(request, allow_merge_patch=True)
    await hub.entity_maps.update(tenant, map_id, payload.body)
    return Response(status_code=204)


@router.delete(
    "/entityMaps/{map_id:path}",
    status_code=204,
    summary="Delete entity map (clauses 5.14.3, 6.32.3.3)",
)
async def delete_entity_map(
    map_id: EntityMapIdPath, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request)
    await hub.entity_maps.delete(tenant, map_id)
    return Response(status_code=204)
