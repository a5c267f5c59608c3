"""``/v2/subscriptions``: list, create, retrieve, update and delete NGSI v2 subscriptions.

Orion's ``orion-api.md`` ("Subscriptions Operations"). The subscriptions live in the same
store as the NGSI-LD ones and share their matching, delivery, retries and status
(``broker.core.subscriptions``, the v2 specifics in ``broker.core.subscriptions.v2``).
A subscription belongs to its tenant (``Fiware-Service``); the ``Fiware-ServicePath``
it is created under selects the entities it watches, and narrows the list to the
subscriptions created under exactly that path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.requests import Request
from starlette.responses import Response

from broker.api.common import JSON, negotiate
from broker.api.v2.common import (
    ServiceDep,
    V2Route,
    json_body,
    no_content,
    ok,
    options_of,
)
from broker.api.v2.entities import paging
from broker.core.subscriptions import SubscriptionService

router = APIRouter(prefix="/v2", route_class=V2Route, tags=["NGSI v2"])

PathHeader = Annotated[
    str | None,
    Header(
        alias="Fiware-ServicePath",
        description="Service path(s) of the entities the subscription selects (default /#)",
    ),
]


def _subscriptions(request: Request) -> SubscriptionService:
    service: SubscriptionService = request.app.state.hub.subscriptions
    return service


@router.get("/subscriptions", summary="List subscriptions")
async def list_subscriptions(
    request: Request,
    tenant: ServiceDep,
    service_path: PathHeader = None,
    limit: Annotated[str | None, Query()] = None,
    offset: Annotated[str | None, Query()] = None,
    options: Annotated[str | None, Query(description="count")] = None,
) -> Response:
    negotiate(request, (JSON,))
    opts = options_of(options, frozenset({"count"}))
    limit_n, offset_n = paging(limit, offset)
    subs = _subscriptions(request)
    docs = await subs.all_v2(tenant, service_path)
    body = [subs.render_v2(tenant, d) for d in docs[offset_n : offset_n + limit_n]]
    headers = {"Fiware-Total-Count": str(len(docs))} if "count" in opts else None
    return ok(body, headers=headers)


@router.post("/subscriptions", summary="Create subscription", status_code=201)
async def create_subscription(
    request: Request, tenant: ServiceDep, service_path: PathHeader = None
) -> Response:
    body = await json_body(request)
    sub_id = await _subscriptions(request).create_v2(tenant, body, service_path)
    return Response(status_code=201, headers={"Location": f"/v2/subscriptions/{sub_id}"})


@router.get("/subscriptions/{sub_id}", summary="Retrieve subscription")
async def retrieve_subscription(request: Request, sub_id: str, tenant: ServiceDep) -> Response:
    negotiate(request, (JSON,))
    subs = _subscriptions(request)
    return ok(subs.render_v2(tenant, await subs.get_v2(tenant, sub_id)))


@router.patch("/subscriptions/{sub_id}", summary="Update subscription", status_code=204)
async def update_subscription(request: Request, sub_id: str, tenant: ServiceDep) -> Response:
    body = await json_body(request)
    await _subscriptions(request).update_v2(tenant, sub_id, body)
    return no_content()


@router.delete("/subscriptions/{sub_id}", summary="Delete subscription", status_code=204)
async def delete_subscription(request: Request, sub_id: str, tenant: ServiceDep) -> Response:
    await _subscriptions(request).delete_v2(tenant, sub_id)
    return no_content()
