"""``/ngsi-ld/v1/entityOperations/{create,upsert,update,merge,delete}``: batch operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, respond
from broker.api.deps import Hub, HubDep, TenantDep
from broker.core.batch import BatchItem, BatchResult, Operation
from broker.errors import BadRequestData, NgsiLdError

router = APIRouter(prefix="/ngsi-ld/v1/entityOperations")


async def _items(
    hub: Hub, request: Request, *, allow_merge_patch: bool = False
) -> tuple[list[BatchItem], Any]:
    payload, tm = await hub.payload(request, shape=list, allow_merge_patch=allow_merge_patch)
    items: list[BatchItem] = []
    for body in payload.body:
        if payload.kind != LD_JSON:
            if isinstance(body, dict) and "@context" in body:
                error = BadRequestData(
                    "@context in an entity needs Content-Type application/ld+json"
                )
                items.append(BatchItem(body, error=error))
            else:
                items.append(BatchItem(body, tm=tm))
            continue
        if not isinstance(body, dict) or "@context" not in body:
            items.append(
                BatchItem(
                    body, error=BadRequestData("application/ld+json entities need an @context")
                )
            )
            continue
        ctx = body.pop("@context")
        try:
            items.append(BatchItem(body, tm=await hub.term_map(ctx)))
        except NgsiLdError as exc:
            items.append(BatchItem(body, error=exc))
    return items, tm


def _result(result: BatchResult, tm: Any, *, ok_status: int, ok_body: Any = None) -> Response:
    if result.errors:
        return respond(result.body(), tm=tm, kind=JSON, status=207)
    if ok_body is None:
        return Response(status_code=ok_status)
    return respond(ok_body, tm=tm, kind=JSON, status=ok_status)


async def _run(op: Operation, request: Request, hub: Hub, tenant: str) -> tuple[BatchResult, Any]:
    P.check_params(request, P.WRITE)
    options = P.options_of(request)
    items, tm = await _items(hub, request, allow_merge_patch=op == "merge")
    return await hub.batch.run(tenant, op, items, options), tm


@router.post("/create")
async def batch_create(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    result, tm = await _run("create", request, hub, tenant)
    return _result(result, tm, ok_status=201, ok_body=result.success)


@router.post("/upsert")
async def batch_upsert(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    result, tm = await _run("upsert", request, hub, tenant)
    if result.created:
        return _result(result, tm, ok_status=201, ok_body=result.created)
    return _result(result, tm, ok_status=204)


@router.post("/update")
async def batch_update(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    result, tm = await _run("update", request, hub, tenant)
    return _result(result, tm, ok_status=204)


@router.post("/merge")
async def batch_merge(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    result, tm = await _run("merge", request, hub, tenant)
    return _result(result, tm, ok_status=204)


@router.post("/delete")
async def batch_delete(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.NONE)
    payload, tm = await hub.payload(request, shape=list)
    result = await hub.batch.delete(tenant, payload.body)
    return _result(result, tm, ok_status=204)
