"""``/ngsi-ld/v1/entityOperations/{create,upsert,update,merge,delete}``: batch operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep, request_tenant
from broker.api.entities import ENTITY_ANSWERS, ENTITY_OFFERS, build_query, query_response
from broker.core.batch import BatchItem, BatchResult, Operation
from broker.core.model import View
from broker.errors import BadRequestData, NgsiLdError
from broker.jsonld.context import TermMap
from broker.model.entity import check_entity_id, check_name
from broker.model.store import EntityQuery, Selector
from broker.query import geo_query_from_json
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

router = APIRouter(
    route_class=P.DeclaredRoute,
    prefix="/ngsi-ld/v1/entityOperations",
    tags=["entityOperations"],
)


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


async def _run(
    op: Operation, request: Request, hub: Hub, tenant: str, options: str | None
) -> tuple[BatchResult, Any]:
    P.check_params(request)
    opts = P.options_of(options)
    items, tm = await _items(hub, request, allow_merge_patch=op == "merge")
    return await hub.batch.run(tenant, op, items, opts), tm


class BodyQueryParams(P.Group):
    """The URL parameters of a query whose selection is in a Query body (clause 6.23.3.1):
    paging and representation; the rest of the Representation comes from the body."""

    limit: P.Limit = None
    offset: P.Offset = None
    count: P.Count = None
    options: P.Options = None
    format: P.Format = None
    lang: P.Lang = None
    local: P.Local = None
    geometry_property: P.GeometryProperty = None
    pick: P.Pick = None
    omit: P.Omit = None
    join: P.Join = None
    join_level: P.JoinLevel = None

    def representation(self) -> P.Representation:
        return P.Representation.model_construct(
            options=self.options,
            format=self.format,
            lang=self.lang,
            local=self.local,
            geometry_property=self.geometry_property,
            pick=self.pick,
            omit=self.omit,
            join=self.join,
            join_level=self.join_level,
        )


@router.post(
    "/query",
    summary="Query entities with a Query body (clause 6.23.3.1)",
    responses=ENTITY_ANSWERS,
    openapi_extra=P.json_body('A Query (clause 5.2.23): {"type": "Query", "entities": ...}.'),
)
async def batch_query(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[BodyQueryParams, P.group(BodyQueryParams)],
) -> Response:
    """Query entities with a Query body (clause 5.7.2's POST form)."""
    P.check_params(request)
    kind = negotiate(request, ENTITY_OFFERS)
    payload, tm = await hub.payload(request)
    view, query = body_query(params, hub, payload.body, tm)
    return await query_response(hub, tenant, request, view, query, kind)


def body_query(
    params: BodyQueryParams,
    hub: Hub,
    body: dict[str, Any],
    tm: TermMap,
    *,
    temporal: bool = False,
) -> tuple[View, EntityQuery]:
    """The view and the EntityQuery of a Query body (also the temporal API's)."""
    if body.get("type") != "Query":
        raise BadRequestData('a query body needs "type": "Query"')
    view = P.view_of(params.representation(), tm, temporal=temporal)
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
        limit=params.limit,
        offset=params.offset,
        count=P.bool_param(params.count, "count") or "count" in P.options_of(params.options),
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


@router.post(
    "/create",
    status_code=201,
    summary="Batch entity creation (clause 6.14.3.1)",
    openapi_extra=P.json_body("The entities to create.", array=True),
)
async def batch_create(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    result, tm = await _run("create", request, hub, tenant, options)
    return _result(result, tm, ok_status=201, ok_body=result.success)


@router.post(
    "/upsert",
    status_code=201,
    summary="Batch entity upsert (clause 6.15.3.1)",
    openapi_extra=P.json_body("The entities to create or update.", array=True),
)
async def batch_upsert(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    result, tm = await _run("upsert", request, hub, tenant, options)
    if result.created:
        return _result(result, tm, ok_status=201, ok_body=result.created)
    return _result(result, tm, ok_status=204)


@router.post(
    "/update",
    status_code=204,
    summary="Batch entity update (clause 6.16.3.1)",
    openapi_extra=P.json_body("The entity fragments to update.", array=True),
)
async def batch_update(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    result, tm = await _run("update", request, hub, tenant, options)
    return _result(result, tm, ok_status=204)


@router.post(
    "/merge",
    status_code=204,
    summary="Batch entity merge (clause 6.31.3.1)",
    openapi_extra=P.json_body("The entity fragments to merge.", array=True, merge_patch=True),
)
async def batch_merge(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    result, tm = await _run("merge", request, hub, tenant, options)
    return _result(result, tm, ok_status=204)


@router.post(
    "/delete",
    status_code=204,
    summary="Batch entity deletion (clause 6.17.3.1)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The ids of the entities to delete.",
            "content": {
                kind: {"schema": {"type": "array", "items": {"type": "string"}}}
                for kind in (JSON, LD_JSON)
            },
        }
    },
)
async def batch_delete(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    payload, tm = await hub.payload(request, shape=list)
    result = await hub.batch.delete(tenant, payload.body)
    return _result(result, tm, ok_status=204)
