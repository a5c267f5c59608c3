"""``/ngsi-ld/v1/jsonldContexts``: list, serve, add and delete contexts (clause 5.13).

A tenant's Hosted and ImplicitlyCreated contexts are listed, served and deleted only
with its ``NGSILD-Tenant``; Cached ones are shared.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, check_content_type, negotiate, read_body
from broker.api.deps import HubDep, TenantDep
from broker.core.contexts import PATH, ContextRegistry

router = APIRouter(prefix="/ngsi-ld/v1")


def _json(data: object, status: int = 200, kind: str = JSON) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=kind)


@router.get("/jsonldContexts")
async def list_contexts(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.CONTEXTS)
    negotiate(request)
    details = P.bool_param(request, "details")
    records = hub.contexts.list(request.query_params.get("kind"), tenant)
    if details:
        return _json([ContextRegistry.details(r) for r in records])
    return _json([r.url for r in records])


@router.post("/jsonldContexts")
async def add_context(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, frozenset())
    check_content_type(request)
    s = hub.settings
    body = await read_body(request, max_bytes=s.max_body_bytes, max_depth=s.max_json_depth)
    rec = await hub.contexts.add_hosted(body, tenant)
    return Response(status_code=201, headers={"Location": PATH + rec.id})


@router.get("/jsonldContexts/{context_id:path}")
async def serve_context(
    context_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.CONTEXTS)
    kind = negotiate(request, (JSON, LD_JSON))
    details = P.bool_param(request, "details")
    rec = hub.contexts.get(context_id, tenant)
    response = _json(ContextRegistry.details(rec)) if details else _json(rec.document, kind=kind)
    hub.contexts.touch(rec.url)
    return response


@router.delete("/jsonldContexts/{context_id:path}")
async def delete_context(
    context_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.CONTEXTS)
    reload = P.bool_param(request, "reload")
    await hub.contexts.delete(context_id, reload=reload, tenant=tenant)
    return Response(status_code=204)
