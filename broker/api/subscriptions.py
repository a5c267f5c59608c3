"""``/ngsi-ld/v1/subscriptions``: create, list, retrieve, update and delete subscriptions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.model.entity import id_segment

router = APIRouter(prefix="/ngsi-ld/v1")
LIST_PARAMS = frozenset({"limit", "offset", "count", "options", "local"})


@router.post("/subscriptions")
async def create_subscription(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.NONE)
    payload, _tm = await hub.payload(request)
    sub_id = await hub.subscriptions.create(tenant, payload.body, payload.context)
    location = f"/ngsi-ld/v1/subscriptions/{id_segment(sub_id)}"
    return Response(status_code=201, headers={"Location": location})


@router.get("/subscriptions")
async def list_subscriptions(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, LIST_PARAMS)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    params = request.query_params
    limit, offset = P.paging(params.get("limit"), params.get("offset"), hub.settings)
    sys_attrs = "sysAttrs" in P.options_of(request)
    docs = await hub.subscriptions.all(tenant)
    page = [
        await hub.subscriptions.render(tenant, d, tm, sys_attrs=sys_attrs)
        for d in docs[offset : offset + limit]
    ]
    headers = {"NGSILD-Results-Count": str(len(docs))} if params.get("count") == "true" else {}
    return respond(page, tm=tm, kind=kind, headers=headers)


@router.get("/subscriptions/{sub_id:path}")
async def retrieve_subscription(
    sub_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, frozenset({"options", "local"}))
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    doc = await hub.subscriptions.get(tenant, sub_id)
    sys_attrs = "sysAttrs" in P.options_of(request)
    body: Any = await hub.subscriptions.render(tenant, doc, tm, sys_attrs=sys_attrs)
    return respond(body, tm=tm, kind=kind)


@router.patch("/subscriptions/{sub_id:path}")
async def update_subscription(
    sub_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    payload, _tm = await hub.payload(request, allow_merge_patch=True)
    await hub.subscriptions.update(tenant, sub_id, payload.body, payload.context)
    return Response(status_code=204)


@router.delete("/subscriptions/{sub_id:path}")
async def delete_subscription(
    sub_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    await hub.subscriptions.delete(tenant, sub_id)
    return Response(status_code=204)
