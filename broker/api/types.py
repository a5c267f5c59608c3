"""``/ngsi-ld/v1/types`` and ``/ngsi-ld/v1/attributes``: discovery of what the hub holds."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.model.entity import check_name

router = APIRouter(prefix="/ngsi-ld/v1")
DISCOVERY = frozenset({"details", "local"})


@router.get("/types")
async def entity_types(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, DISCOVERY)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.types(tenant, tm, details=P.bool_param(request, "details"))
    return respond(body, tm=tm, kind=kind)


@router.get("/types/{type_name:path}")
async def entity_type_info(
    type_name: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, frozenset({"local"}))
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.type_info(tenant, tm, check_name(type_name, "entity type"))
    return respond(body, tm=tm, kind=kind)


@router.get("/attributes")
async def attributes(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, DISCOVERY)
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.attributes(tenant, tm, details=P.bool_param(request, "details"))
    return respond(body, tm=tm, kind=kind)


@router.get("/attributes/{attr:path}")
async def attribute_info(attr: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, frozenset({"local"}))
    kind = negotiate(request)
    tm = await hub.link_term_map(request)
    body = await hub.discovery.attribute_info(tenant, tm, check_name(attr))
    return respond(body, tm=tm, kind=kind)
