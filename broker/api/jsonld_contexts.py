"""``/ngsi-ld/v1/jsonldContexts``: list, serve, add and delete contexts (clause 5.13)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api.common import JSON, LD_JSON, negotiate, read_payload
from broker.api.deps import HubDep
from broker.core.contexts import ContextRegistry

router = APIRouter(prefix="/ngsi-ld/v1")


def _json(data: object, status: int = 200, kind: str = JSON) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=kind)


@router.get("/jsonldContexts")
async def list_contexts(request: Request, hub: HubDep) -> Response:
    negotiate(request)
    params = request.query_params
    records = hub.contexts.list(params.get("kind"))
    if params.get("details") == "true":
        return _json([ContextRegistry.details(r) for r in records])
    return _json([r.url for r in records])


@router.post("/jsonldContexts")
async def add_context(request: Request, hub: HubDep) -> Response:
    s = hub.settings
    payload = await read_payload(request, max_bytes=s.max_body_bytes, max_depth=s.max_json_depth)
    body = payload.body
    if payload.context is not None and isinstance(body, dict):
        body = {"@context": payload.context, **body}
    rec = await hub.contexts.add_hosted(body)
    return Response(status_code=201, headers={"Location": rec.url})


@router.get("/jsonldContexts/{context_id:path}")
async def serve_context(context_id: str, request: Request, hub: HubDep) -> Response:
    kind = negotiate(request, (LD_JSON, JSON))
    rec = hub.contexts.get(context_id)
    if request.query_params.get("details") == "true":
        return _json(ContextRegistry.details(rec))
    hub.contexts.touch(rec.url)
    return _json(rec.document, kind=kind)


@router.delete("/jsonldContexts/{context_id:path}")
async def delete_context(context_id: str, request: Request, hub: HubDep) -> Response:
    reload = request.query_params.get("reload") == "true"
    await hub.contexts.delete(context_id, reload=reload)
    return Response(status_code=204)
