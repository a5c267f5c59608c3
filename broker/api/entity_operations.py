"""``/ngsi-ld/v1/entityOperations/{create,upsert,update,merge,delete}``: batch operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import deps
from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep, request_tenant
from broker.api.entities import (
    ENTITY_ANSWERS,
    ENTITY_OFFERS,
    build_query,
    forward_call,
    query_response,
    refused_error,
)
from broker.core.batch import BatchItem, BatchResult, Operation
from broker.core.distributed import write_params
from broker.core.model import View
from broker.errors import BadRequestData, NgsiLdError
from broker.federation.forward import context_link
from broker.jsonld.context import TermMap
from broker.model.entity import check_entity_id, check_name, is_uri
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


#: The operation name (clause 4.3.6.3 table) of each batch operation.
BATCH_OPERATIONS = {
    "create": "createBatch",
    "upsert": "upsertBatch",
    "update": "updateBatch",
    "merge": "mergeBatch",
    "delete": "deleteBatch",
}


def _item_ident(op: Operation, item: BatchItem) -> str | None:
    """The entity id of a batch item that can be sent on, or None."""
    if item.error is not None or item.tm is None:
        return None
    raw = (
        item.body
        if op == "delete"
        else item.body.get("id")
        if isinstance(item.body, dict)
        else None
    )
    return raw if isinstance(raw, str) and is_uri(raw) else None


async def _run(op: Operation, call: deps.Operation, options: str | None) -> tuple[BatchResult, Any]:
    """Create, upsert, update or merge a batch (the query parameters are checked by the
    ``Operation`` dependency): here only, or here and at the context sources."""
    request, hub, tenant = call.request, call.hub, call.tenant
    opts = P.options_of(options)
    items, tm = await _items(hub, request, allow_merge_patch=op == "merge")
    if P.bool_param(request.query_params.get("local"), "local") or not (
        await hub.registrations.active(tenant)
    ):
        return await hub.batch.run(tenant, op, items, opts), tm
    hub.batch.check_size(len(items))
    return await _run_distributed(op, request, hub, tenant, items, opts, tm), tm


async def _run_distributed(
    op: Operation,
    request: Request,
    hub: Hub,
    tenant: str,
    items: list[BatchItem],
    opts: set[str],
    tm: TermMap,
) -> BatchResult:
    """A batch written here and sent on to the context sources registered for its
    entities (``broker.core.distributed.route_write`` for each entity), the results
    joined: an entity succeeds where every part of it succeeded."""
    sendable = [(n, eid) for n, item in enumerate(items) if (eid := _item_ident(op, item))]
    forward = []
    for n, eid in sendable:
        item = items[n]
        assert item.tm is not None
        body = None if op == "delete" else item.body
        raw_type = item.body.get("type") if isinstance(item.body, dict) else None
        types = [
            t
            for t in (raw_type if isinstance(raw_type, list) else [raw_type])
            if isinstance(t, str)
        ]
        forward.append((eid, types or None, body, item.tm))
    call = forward_call(request, tenant)
    params = write_params(request.query_params.items())
    left, sent, refusals = await hub.distributed.forward_batch(
        tenant,
        BATCH_OPERATIONS[op],
        call,
        f"/entityOperations/{op}",
        forward,
        params=params,
    )
    refused: dict[str, NgsiLdError] = {}
    remote_only: list[str] = []
    for (n, eid), what in zip(sendable, left, strict=True):
        if isinstance(what, NgsiLdError):
            refused[eid] = what
            items[n] = BatchItem(items[n].body, error=what)
            continue
        body, run_here = what
        if not run_here:
            remote_only.append(eid)
            items[n] = BatchItem(None)  # dropped below
        elif op != "delete":
            items[n] = BatchItem(body, tm=items[n].tm)
    here = [i for i in items if not (i.body is None and i.error is None and i.tm is None)]
    if op == "delete":
        result = BatchResult()
        for item in here:
            if item.error is not None:
                result.fail(str(item.body), item.error)
        ids = [i.body for i in here if i.error is None]
        if ids:
            deleted = await hub.batch.delete(tenant, ids)
            result.success += deleted.success
            result.errors += deleted.errors
    else:
        result = await hub.batch.run(tenant, op, here, opts) if here else BatchResult()
    failed = {e["entityId"] for e in result.errors}
    for reg, ids, answer in sent:
        errors: list[dict[str, Any]] = []
        if answer.ok and answer.status == 207 and isinstance(answer.body, dict):
            errors = [e for e in answer.body.get("errors") or [] if isinstance(e, dict)]
        elif not answer.ok:
            body = answer.body if isinstance(answer.body, dict) else {}
            problem = {
                "type": body.get("type", "https://uri.etsi.org/ngsi-ld/errors/InternalError"),
                "title": body.get("title", "Context source error"),
                "status": answer.status or 504,
                "detail": f"{reg.endpoint}: {answer.error or body.get('detail', '')}".strip(),
            }
            errors = [{"entityId": eid, "error": problem} for eid in ids]
        for error in errors:
            result.errors.append({**error, "registrationId": reg.id})
            failed.add(str(error.get("entityId")))
    for eid, reg in refusals:
        result.errors.append(refused_error(eid, reg, BATCH_OPERATIONS[op]))
        failed.add(eid)
    result.success = [e for e in dict.fromkeys([*result.success, *remote_only]) if e not in failed]
    if op in ("create", "upsert"):
        result.created = [
            e for e in dict.fromkeys([*result.created, *remote_only]) if e not in failed
        ]
    return result


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
    call = forward_call(request, tenant)
    if payload.kind == LD_JSON:
        # the @context is in the body: sent on in Query bodies, named by a Link header
        # in GET /entities (clause 4.3.6.1: sources may allow queryEntity only)
        call.context = payload.context
        call.link = context_link(payload.context, tm.implicit_url)
    return await query_response(
        hub,
        tenant,
        request,
        view,
        query,
        kind,
        local=P.bool_param(params.local, "local"),
        batch=call,
    )


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
async def batch_create(call: deps.OperationDep, options: P.Options = None) -> Response:
    result, tm = await _run("create", call, options)
    return _result(result, tm, ok_status=201, ok_body=result.success)


@router.post(
    "/upsert",
    status_code=201,
    summary="Batch entity upsert (clause 6.15.3.1)",
    openapi_extra=P.json_body("The entities to create or update.", array=True),
)
async def batch_upsert(call: deps.OperationDep, options: P.Options = None) -> Response:
    result, tm = await _run("upsert", call, options)
    if result.created:
        return _result(result, tm, ok_status=201, ok_body=result.created)
    return _result(result, tm, ok_status=204)


@router.post(
    "/update",
    status_code=204,
    summary="Batch entity update (clause 6.16.3.1)",
    openapi_extra=P.json_body("The entity fragments to update.", array=True),
)
async def batch_update(call: deps.OperationDep, options: P.Options = None) -> Response:
    result, tm = await _run("update", call, options)
    return _result(result, tm, ok_status=204)


@router.post(
    "/merge",
    status_code=204,
    summary="Batch entity merge (clause 6.31.3.1)",
    openapi_extra=P.json_body("The entity fragments to merge.", array=True, merge_patch=True),
)
async def batch_merge(call: deps.OperationDep, options: P.Options = None) -> Response:
    result, tm = await _run("merge", call, options)
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
    if P.bool_param(local, "local") or not await hub.registrations.active(tenant):
        result = await hub.batch.delete(tenant, payload.body)
    else:
        hub.batch.check_size(len(payload.body))
        items = [BatchItem(eid, tm=tm) for eid in payload.body]
        result = await _run_distributed("delete", request, hub, tenant, items, set(), tm)
    return _result(result, tm, ok_status=204)
