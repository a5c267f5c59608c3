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
from broker.api.deps import ContextsTenantDep, HubDep
from broker.core.contexts import PATH, ContextRegistry

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["jsonldContexts"])


def _json(data: object, status: int = 200, kind: str = JSON) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=kind)


# Each operation accepts details, kind and reload: the spec gives details and kind to the
# list (6.32.3.1), details to retrieve (6.33.3.1) and reload to delete (6.33.3.2); the
# others are accepted and ignored, as they always were.


@router.get(
    "/jsonldContexts",
    summary="List @contexts (clause 6.32.3.1)",
    responses=P.answers(JSON),
)
async def list_contexts(
    request: Request,
    hub: HubDep,
    tenant: ContextsTenantDep,
    details: P.Details = None,
    kind: P.ContextKind = None,
    reload: P.Reload = None,
) -> Response:
    P.check_params(request)
    negotiate(request)
    show_details = P.bool_param(details, "details")
    records = hub.contexts.list(kind, tenant)
    if show_details:
        return _json([ContextRegistry.details(r) for r in records])
    return _json([r.url for r in records])


@router.post(
    "/jsonldContexts",
    status_code=201,
    summary="Add @context (clause 6.32.3.2)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": 'A JSON-LD context document: {"@context": ...}.',
            "content": {
                JSON: {"schema": {"type": "object"}},
                LD_JSON: {"schema": {"type": "object"}},
            },
        }
    },
)
async def add_context(request: Request, hub: HubDep, tenant: ContextsTenantDep) -> Response:
    P.check_params(request)
    check_content_type(request)
    s = hub.settings
    body = await read_body(request, max_bytes=s.max_body_bytes, max_depth=s.max_json_depth)
    rec = await hub.contexts.add_hosted(body, tenant)
    return Response(status_code=201, headers={"Location": PATH + rec.id})


@router.get(
    "/jsonldContexts/{context_id:path}",
    summary="Serve @context (clause 6.33.3.1)",
    responses=P.answers(JSON, LD_JSON),
)
async def serve_context(
    context_id: P.ContextIdPath,
    request: Request,
    hub: HubDep,
    tenant: ContextsTenantDep,
    details: P.Details = None,
    kind: P.ContextKind = None,
    reload: P.Reload = None,
) -> Response:
    P.check_params(request)
    media = negotiate(request, (JSON, LD_JSON))
    show_details = P.bool_param(details, "details")
    rec = hub.contexts.get(context_id, tenant)
    response = (
        _json(ContextRegistry.details(rec)) if show_details else _json(rec.document, kind=media)
    )
    hub.contexts.touch(rec.url)
    return response


@router.delete(
    "/jsonldContexts/{context_id:path}",
    status_code=204,
    summary="Delete @context (clause 6.33.3.2)",
)
async def delete_context(
    context_id: P.ContextIdPath,
    request: Request,
    hub: HubDep,
    tenant: ContextsTenantDep,
    details: P.Details = None,
    kind: P.ContextKind = None,
    reload: P.Reload = None,
) -> Response:
    P.check_params(request)
    await hub.contexts.delete(context_id, reload=P.bool_param(reload, "reload"), tenant=tenant)
    return Response(status_code=204)
