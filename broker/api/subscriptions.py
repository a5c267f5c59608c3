"""``/ngsi-ld/v1/subscriptions``: create, list, retrieve, update and delete subscriptions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep
from broker.api.entities import forward_call
from broker.auth.access import current as current_access
from broker.federation.forward import Forwarder
from broker.jsonld.context import TermMap
from broker.model.entity import id_segment
from broker.query import parse_q, resolve_q

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["subscriptions"])
ANSWERS = P.answers(JSON, LD_JSON)


@router.post(
    "/subscriptions",
    status_code=201,
    summary="Create subscription (clause 6.10.3.1)",
    openapi_extra=P.json_body("The subscription (clause 5.2.12)."),
)
async def create_subscription(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    payload, tm = await hub.payload(request)
    sub_id = await hub.subscriptions.create(tenant, payload.body, payload.context)
    location = f"/ngsi-ld/v1/subscriptions/{id_segment(sub_id)}"
    headers = {"Location": location}
    if not P.bool_param(local, "local"):
        headers.update(
            await _mirror(
                request, hub, tenant, "POST", "/subscriptions", tm, {**payload.body, "id": sub_id}
            )
        )
    return Response(status_code=201, headers=headers)


async def _mirror(
    request: Request,
    hub: Hub,
    tenant: str,
    method: str,
    path: str,
    tm: TermMap | None = None,
    body: dict[str, Any] | None = None,
    context: Any = None,
) -> dict[str, str]:
    """The operation sent on to the context sources registered for it (federationOps):
    they then notify the subscriber of their own changes too."""
    operation = {
        "POST": "createSubscription",
        "PATCH": "updateSubscription",
        "DELETE": "deleteSubscription",
    }[method]
    types = None
    if body is not None and tm is not None and isinstance(body.get("entities"), list):
        named = [e.get("type") for e in body["entities"] if isinstance(e, dict)]
        if named and all(isinstance(t, str) for t in named):
            types = [[tm.expand(str(t))] for t in named]
    csf = None
    if body is not None and tm is not None and isinstance(body.get("csf"), str):
        csf = resolve_q(parse_q(body["csf"]), tm.expand)
    access = current_access()
    if access is not None and method == "POST":
        # the sources notify the subscriber directly, past this hub's read filter: only
        # what the subscriber may read here is subscribed to there
        flat = [t for alt in types or [] for t in alt] or None
        if flat is None or not access.can("read", tenant, flat):
            return {}
    ld = (request.headers.get("content-type") or "").startswith("application/ld+json")
    if ld and body is not None and context is not None:
        body = {**body, "@context": context}
    call = forward_call(request, tenant)
    return await hub.distributed.mirror(
        tenant,
        operation,
        call,
        method,
        path,
        body=body,
        content_type="application/ld+json" if ld else "application/json",
        types=types,
        csf=csf,
    )


@router.get("/subscriptions", summary="Query subscriptions (clause 6.10.3.2)", responses=ANSWERS)
async def list_subscriptions(
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
    docs = await hub.subscriptions.all(tenant)
    page = [
        await hub.subscriptions.render(tenant, d, tm, sys_attrs=sys_attrs)
        for d in docs[offset_n : offset_n + limit_n]
    ]
    headers = {"NGSILD-Results-Count": str(len(docs))} if count == "true" else {}
    response = respond(page, tm=tm, kind=kind, headers=headers)
    for link in page_links(request, limit_n, offset_n, len(docs)):
        response.headers.append("Link", link)
    return response


def page_links(request: Request, limit: int, offset: int, total: int) -> list[str]:
    """The ``Link`` values of a paged listing (clause 6.3.9 pagination): ``rel="prev"``
    and ``rel="next"`` name the neighbouring pages with the request's other parameters."""
    if limit <= 0:
        return []
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "offset")]

    def page(at: int) -> str:
        query = urlencode([*kept, ("limit", str(limit)), ("offset", str(at))])
        return f"<{request.url.path}?{query}>"

    links = []
    if offset > 0:
        links.append(f'{page(max(offset - limit, 0))}; rel="prev"')
    if offset + limit < total:
        links.append(f'{page(offset + limit)}; rel="next"')
    return links


@router.get(
    "/subscriptions/{sub_id:path}",
    summary="Retrieve subscription (clause 6.11.3.1)",
    responses=ANSWERS,
)
async def retrieve_subscription(
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
    doc = await hub.subscriptions.get(tenant, sub_id)
    sys_attrs = "sysAttrs" in P.options_of(options)
    body: Any = await hub.subscriptions.render(tenant, doc, tm, sys_attrs=sys_attrs)
    return respond(body, tm=tm, kind=kind)


@router.patch(
    "/subscriptions/{sub_id:path}",
    status_code=204,
    summary="Update subscription (clause 6.11.3.2)",
    openapi_extra=P.json_body("The subscription members to change.", merge_patch=True),
)
async def update_subscription(
    sub_id: P.SubscriptionIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    payload, _tm = await hub.payload(request, allow_merge_patch=True)
    await hub.subscriptions.update(tenant, sub_id, payload.body, payload.context)
    headers = {}
    if not P.bool_param(local, "local"):
        path = f"/subscriptions/{Forwarder.segment(sub_id)}"
        headers = await _mirror(
            request, hub, tenant, "PATCH", path, body=payload.body, context=payload.context
        )
    return Response(status_code=204, headers=headers)


@router.delete(
    "/subscriptions/{sub_id:path}",
    status_code=204,
    summary="Delete subscription (clause 6.11.3.3)",
)
async def delete_subscription(
    sub_id: P.SubscriptionIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    await hub.subscriptions.delete(tenant, sub_id)
    headers = {}
    if not P.bool_param(local, "local"):
        path = f"/subscriptions/{Forwarder.segment(sub_id)}"
        headers = await _mirror(request, hub, tenant, "DELETE", path)
    return Response(status_code=204, headers=headers)
