"""``/ngsi-ld/v1/csourceSubscriptions``: create, list, retrieve, update and delete
subscriptions to context source registrations (clauses 5.11, 6.10 and 6.11 as applied
to registrations; ``broker.core.csubscriptions``). Every operation needs ``admin``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.model.entity import id_segment

router = APIRouter(
    route_class=P.DeclaredRoute,
    prefix="/ngsi-ld/v1",
    tags=["context source registration subscriptions"],
)
ANSWERS = P.answers(JSON, LD_JSON)


@router.post(
    "/csourceSubscriptions",
    status_code=201,
    summary="Create context source registration subscription (clause 6.10.3.1)",
    openapi_extra=P.json_body("The subscription (clause 5.2.12)."),
)
async def create_csource_subscription(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    payload, _tm = await hub.payload(request)
    sub_id = await hub.csubscriptions.create(tenant, payload.body, payload.context)
    location = f"/ngsi-ld/v1/csourceSubscriptions/{id_segment(sub_id)}"
    return Response(status_code=201, headers={"Location": location})


@router.get(
    "/csourceSubscriptions",
    summary="Query context source registration subscriptions (clause 6.10.3.2)",
    responses=ANSWERS,
)
async def list_csource_subscriptions(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    limit: P.Limit = None,
    offset: P.Offset = None,
    count: P.Count = None,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    limit_n, offset_n = P.paging(limit, offset, hub.settings)
    sys_attrs = "sysAttrs" in P.options_of(options)
    docs = await hub.csubscriptions.all(tenant)
    page = [
        await hub.csubscriptions.render(tenant, d, tm, sys_attrs=sys_attrs)
        for d in docs[offset_n : offset_n + limit_n]
    ]
    headers = {"NGSILD-Results-Count": str(len(docs))} if count == "true" else {}
    return respond(page, tm=tm, kind=kind, headers=headers)


@router.get(
    "/csourceSubscriptions/{sub_id:path}",
    summary="Retrieve context source registration subscription (clause 6.11.3.1)",
    responses=ANSWERS,
)
async def retrieve_csource_subscription(
    sub_id: P.SubscriptionIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    doc = await hub.csubscriptions.get(tenant, sub_id)
    sys_attrs = "sysAttrs" in P.options_of(options)
    body: Any = await hub.csubscriptions.render(tenant, doc, tm, sys_attrs=sys_attrs)
    return respond(body, tm=tm, kind=kind)


@router.patch(
    "/csourceSubscriptions/{sub_id:path}",
    status_code=204,
    summary="Update context source registration subscription (clause 6.11.3.2)",
    openapi_extra=P.json_body("The subscription members to change.", merge_patch=True),
)
async def update_csource_subscription(
    sub_id: P.SubscriptionIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    payload, _tm = await hub.payload(request, allow_merge_patch=True)
    await hub.csubscriptions.update(tenant, sub_id, payload.body, payload.context)
    return Response(status_code=204)


@router.delete(
    "/csourceSubscriptions/{sub_id:path}",
    status_code=204,
    summary="Delete context source registration subscription (clause 6.11.3.3)",
)
async def delete_csource_subscription(
    sub_id: P.SubscriptionIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    await hub.csubscriptions.delete(tenant, sub_id)
    return Response(status_code=204)
