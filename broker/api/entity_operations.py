"""``/ngsi-ld/v1/entityOperations/{create,upsert,update,merge,delete}``: batch operations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep, request_tenant
from broker.api.entities import ENTITY_OFFERS, build_query, query_response
from broker.core.batch import BatchItem, BatchResult, Operation
from broker.core.model import View
from broker.errors import BadRequestData, NgsiLdError
from broker.jsonld.context import TermMap
from broker.model.entity import check_entity_id, check_name
from broker.model.store import EntityQuery, Selector
from broker.query import geo_query_from_json
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

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
            items.append(BatchItem(body, tm=await hub.term_map(ctx, request_tenant(request))))
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


QUERY_PARAMS = frozenset(
    {
        "limit",
        "offset",
        "count",
        "options",
        "format",
        "lang",
        "local",
        "geometryProperty",
        "pick",
        "omit",
        "join",
        "joinLevel",
    }
)


@router.post("/query")
async def batch_query(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    """Query entities with a Query body (clause 5.7.2's POST form)."""
    P.check_params(request, QUERY_PARAMS)
    kind = negotiate(request, ENTITY_OFFERS)
    payload, tm = await hub.payload(request)
    view, query = body_query(request, hub, payload.body, tm)
    return await query_response(hub, tenant, request, view, query, kind)


def body_query(
    request: Request, hub: Hub, body: dict[str, Any], tm: TermMap, *, temporal: bool = False
) -> tuple[View, EntityQuery]:
    """The view and the EntityQuery of a Query body (also the temporal API's)."""
    if body.get("type") != "Query":
        raise BadRequestData('a query body needs "type": "Query"')
    view = P.view_of(request, tm, temporal=temporal)
    attrs = body.get("attrs") or []
    if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
        raise BadRequestData("attrs must be an array of attribute names")
    if attrs:
        view.attrs = {tm.expand(check_name(a)) for a in attrs}
    if isinstance(body.get("lang"), str):
        view.lang = body["lang"]
    if isinstance(body.get("geometryProperty"), str):
        view.geometry_property = tm.expand(check_name(body["geometryProperty"], "geometryProperty"))
    if "join" in body:
        if body["join"] not in ("inline", "flat", "@none"):
            raise BadRequestData("join must be inline, flat or @none")
        view.join = None if body["join"] == "@none" else body["join"]
    if "joinLevel" in body:
        level = body["joinLevel"]
        if isinstance(level, str) and level.isdigit():
            level = int(level)
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise BadRequestData("joinLevel must be a positive integer")
        view.join_level = level
    selectors = [_selector(item, tm) for item in _list(body.get("entities"), "entities")]
    for key in ("q", "scopeQ"):
        if key in body and not isinstance(body[key], str):
            raise BadRequestData(f"{key} must be a string")
    params = request.query_params
    query = build_query(
        hub,
        tm,
        ids=[],
        id_pattern=None,
        types=[],
        attrs=attrs,
        q=body.get("q"),
        geo=geo_query_from_json(body["geoQ"]) if body.get("geoQ") is not None else None,
        scope_q=body.get("scopeQ"),
        limit=params.get("limit"),
        offset=params.get("offset"),
        count=params.get("count") == "true" or "count" in P.options_of(request),
        selectors=selectors or None,
    )
    return view, query


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestData(f"{name} must be an array")
    return value


def _selector(item: Any, tm: TermMap) -> Selector:
    if not isinstance(item, dict):
        raise BadRequestData("each element of entities must be an object")
    ids = item.get("id")
    ids_list = ids if isinstance(ids, list) else [ids] if ids is not None else []
    for eid in ids_list:
        check_entity_id(eid)
    pattern = item.get("idPattern")
    if pattern is not None:
        check_pattern(str(pattern))
    types = type_alternatives(item["type"]) if isinstance(item.get("type"), str) else []
    return Selector(
        ids=ids_list or None,
        id_pattern=pattern,
        types=[[tm.expand(check_name(t, "entity type")) for t in alt] for alt in types] or None,
    )


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
