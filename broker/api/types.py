"""``/ngsi-ld/v1/types`` and ``/ngsi-ld/v1/attributes``: discovery of what the hub holds."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.model.entity import check_name

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["discovery"])
ANSWERS = P.answers(JSON, LD_JSON)


@router.get(
    "/types", summary="Retrieve available entity types (clause 6.25.3.1)", responses=ANSWERS
)
async def entity_types(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    details: P.Details = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.types(tenant, tm, details=P.bool_param(details, "details"))
    return respond(body, tm=tm, kind=kind)


@router.get(
    "/types/{type_name:path}",
    summary="Details of an entity type (clause 6.26.3.1)",
    responses=ANSWERS,
)
async def entity_type_info(
    type_name: P.TypePath, request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.type_info(tenant, tm, check_name(type_name, "entity type"))
    return respond(body, tm=tm, kind=kind)


@router.get(
    "/attributes", summary="Retrieve available attributes (clause 6.27.3.1)", responses=ANSWERS
)
async def attributes(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    details: P.Details = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.attributes(tenant, tm, details=P.bool_param(details, "details"))
    return respond(body, tm=tm, kind=kind)


@router.get(
    "/attributes/{attr:path}",
    summary="Details of an attribute (clause 6.28.3.1)",
    responses=ANSWERS,
)
async def attribute_info(
    attr: P.AttrPath, request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.attribute_info(tenant, tm, check_name(attr))
    return respond(body, tm=tm, kind=kind)
