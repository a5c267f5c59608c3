"""``/ngsi-ld/v1/subscriptions``: create, list, retrieve, update and delete subscriptions."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request

from broker.api import params as P
from broker.api.collection import ListedCollection, Names, Texts, declare, subscription_id
from broker.api.common import Payload
from broker.api.deps import Hub, Operation
from broker.api.entities import forward_call
from broker.auth.access import current as current_access
from broker.federation.forward import Forwarder
from broker.jsonld.context import TermMap
from broker.query import parse_q, resolve_q

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["subscriptions"])


class Subscriptions(ListedCollection):
    """Subscriptions are mirrored to the context sources registered for them (unless
    ``local=true``), and listed a page at a time with ``Link`` headers to the others."""

    async def created(
        self, op: Operation, doc_id: str, payload: Payload, tm: TermMap
    ) -> dict[str, str]:
        if P.bool_param(op.local, "local"):
            return {}
        body = {**payload.body, "id": doc_id}
        return await _mirror(op.request, op.hub, op.tenant, "POST", "/subscriptions", tm, body)

    async def changed(self, op: Operation, doc_id: str, patch: Payload | None) -> dict[str, str]:
        if P.bool_param(op.local, "local"):
            return {}
        path = f"/subscriptions/{Forwarder.segment(doc_id)}"
        if patch is None:
            return await _mirror(op.request, op.hub, op.tenant, "DELETE", path)
        return await _mirror(
            op.request, op.hub, op.tenant, "PATCH", path, body=patch.body, context=patch.context
        )

    def page_links(self, op: Operation, limit: int, offset: int, total: int) -> list[str]:
        return page_links(op.request, limit, offset, total)


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


declare(
    router,
    Subscriptions("/subscriptions", lambda hub: hub.subscriptions),
    doc_id=subscription_id,
    texts=Texts(
        create="Create subscription (clause 6.10.3.1)",
        query="Query subscriptions (clause 6.10.3.2)",
        retrieve="Retrieve subscription (clause 6.11.3.1)",
        update="Update subscription (clause 6.11.3.2)",
        delete="Delete subscription (clause 6.11.3.3)",
        body="The subscription (clause 5.2.12).",
        patch="The subscription members to change.",
    ),
    names=Names(
        create="create_subscription",
        query="list_subscriptions",
        retrieve="retrieve_subscription",
        update="update_subscription",
        delete="delete_subscription",
    ),
)
