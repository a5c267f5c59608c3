"""The temporal API: ``/ngsi-ld/v1/temporal/entities`` and ``/temporal/entityOperations/query``
(plus ``/temporal/entityOperations/upsert``, a Renkei extension for batched history writes).

Routes parse the request into an entity selection (the same parser as ``GET
/entities``), a ``HistoryQuery`` and a representation, call ``TemporalService`` and
render the temporal representation: normalized (each attribute an array of instances),
``temporalValues`` (``[value, time]`` pairs per datasetId) or ``aggregatedValues``
(``[value, start, end]`` per method).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, csv_param, negotiate, respond
from broker.api.deps import Hub, HubDep, OperationDep, TenantDep
from broker.api.entities import entity_query, forward_call, named_types, write_through
from broker.api.entity_operations import BodyQueryParams, body_query
from broker.api.entity_operations import _items as batch_items
from broker.core.model import View
from broker.core.temporal import Aggregation, TemporalEntity, TemporalResult, time_query
from broker.errors import BadRequestData, ResourceNotFound
from broker.federation.forward import Forwarder
from broker.federation.merge import fill_rendered, merge_rendered
from broker.federation.registrations import Registration
from broker.jsonld.context import TermMap
from broker.model.entity import ENTITY_KEYS, check_entity_id, check_name, id_segment, is_uri
from broker.model.history import AGGR_METHODS, Duration, check_aggr_methods, from_us, instance_value
from broker.model.store import EntityQuery, HistoryQuery

router = APIRouter(
    route_class=P.DeclaredRoute,
    prefix="/ngsi-ld/v1/temporal",
    tags=["temporal"],
)

OFFERS = (JSON, LD_JSON)
ANSWERS = P.answers(*OFFERS)


def _text(name: str, description: str) -> Any:
    return Query(alias=name, description=description)


class TemporalParams(P.Group):
    """The temporal query (clause 4.11) and the temporal representation (clause 4.5.7)."""

    timerel: Annotated[str | None, _text("timerel", "before, after or between (clause 4.11).")] = (
        None
    )
    time_at: Annotated[str | None, _text("timeAt", "DateTime the relation refers to.")] = None
    end_time_at: Annotated[str | None, _text("endTimeAt", "End DateTime of timerel=between.")] = (
        None
    )
    timeproperty: Annotated[
        str | None,
        _text("timeproperty", "observedAt (default), createdAt, modifiedAt or deletedAt."),
    ] = None
    last_n: Annotated[
        str | None, _text("lastN", "Only the last N instances of each attribute (6.3.10).")
    ] = None
    aggr_methods: Annotated[
        str | None,
        _text("aggrMethods", "Comma-separated aggregation methods of aggregatedValues (4.5.19)."),
    ] = None
    aggr_period_duration: Annotated[
        str | None,
        _text("aggrPeriodDuration", "ISO 8601 duration of the aggregation periods."),
    ] = None


class TemporalQueryParams(TemporalParams, P.EntityQueryParams):
    """``GET /temporal/entities`` (clause 6.18.3.2)."""


class TemporalRetrieveParams(TemporalParams, P.Representation):
    """``GET /temporal/entities/{entityId}`` (clause 6.19.3.1)."""


#: temporalValues: the member holding the pairs, and what a pair's first element is
_SIMPLIFIED = {
    "Property": ("values", None),
    "GeoProperty": ("values", None),
    "Relationship": ("objects", None),
    "LanguageProperty": ("languageMaps", "languageMap"),
    "JsonProperty": ("jsons", "json"),
    "VocabProperty": ("vocabs", "vocab"),
    "ListProperty": ("valueLists", "valueList"),
    "ListRelationship": ("objectLists", "objectList"),
}


def _history_query(
    hub: Hub, tp: TemporalParams, temporal_q: dict[str, Any] | None = None
) -> HistoryQuery:
    src: Any = (
        temporal_q
        if temporal_q is not None
        else {
            "timerel": tp.timerel,
            "timeAt": tp.time_at,
            "endTimeAt": tp.end_time_at,
            "timeproperty": tp.timeproperty,
        }
    )
    for key in ("timerel", "timeAt", "endTimeAt", "timeproperty"):
        value = src.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequestData(f"temporalQ.{key} must be a string")
    last_n = tp.last_n
    if temporal_q is not None and temporal_q.get("lastN") is not None:
        last_n = str(temporal_q["lastN"])
    return time_query(
        src.get("timerel"),
        src.get("timeAt"),
        src.get("endTimeAt"),
        src.get("timeproperty"),
        last_n,
        limit=hub.settings.temporal_max_instances,
    )


def _aggregation(tp: TemporalParams, fmt: str) -> Aggregation | None:
    if fmt != "aggregatedValues":
        return None
    methods = csv_param(tp.aggr_methods)
    if not methods:
        raise BadRequestData(f"aggregatedValues needs aggrMethods ({', '.join(AGGR_METHODS)})")
    period = tp.aggr_period_duration
    return Aggregation(
        check_aggr_methods(methods), Duration.parse(period) if period is not None else None
    )


def _time(inst: dict[str, Any], prop: str) -> Any:
    if prop == "observedAt":
        return inst.get("observedAt", inst.get("createdAt"))
    return inst.get(prop)


def _simplified(view: View, kind: str, instances: list[dict[str, Any]], prop: str) -> Any:
    member, wrap = _SIMPLIFIED.get(kind, ("values", None))
    groups: dict[str | None, dict[str, Any]] = {}
    for inst in instances:
        ds = inst.get("datasetId")
        group = groups.get(ds)
        if group is None:
            group = {"type": kind}
            if ds is not None:
                group["datasetId"] = ds
            group[member] = []
            groups[ds] = group
        value = instance_value(inst)
        if kind == "VocabProperty":
            value = view.compact_vocab(value)
        group[member].append([{wrap: value} if wrap else value, _time(inst, prop)])
    out = list(groups.values())
    if not out:
        return {"type": kind, member: []}
    return out[0] if len(out) == 1 else out


def _render(
    te: TemporalEntity, view: View, fmt: str, prop: str, *, sys_attrs: bool
) -> dict[str, Any]:
    tm = view.tm
    types = [tm.compact(t) for t in te.meta.types]
    out: dict[str, Any] = {}
    if view.member("id"):
        out["id"] = te.meta.id
    if view.member("type"):
        out["type"] = types[0] if len(types) == 1 else types
    if te.meta.scope and view.member("scope"):
        out["scope"] = te.meta.scope[0] if len(te.meta.scope) == 1 else te.meta.scope
    for iri, instances in te.attrs.items():
        if iri in ENTITY_KEYS or not view.keeps(iri):
            continue
        if view.dataset_ids is not None:
            instances = [i for i in instances if i.get("datasetId") in view.dataset_ids]
            if not instances:
                continue
        name = tm.compact(iri)
        kind = te.kinds.get(iri, "Property")
        if fmt == "aggregatedValues":
            out[name] = {"type": kind, **te.aggregates.get(iri, {})}
        elif fmt == "temporalValues":
            out[name] = _simplified(view, kind, instances, prop)
        else:
            rendered = []
            for inst in instances:
                item = view.instance(inst)
                if "deletedAt" in inst:
                    item["deletedAt"] = inst["deletedAt"]
                rendered.append(item)
            out[name] = rendered
    if sys_attrs:
        out["createdAt"] = from_us(te.meta.created)
        out["modifiedAt"] = from_us(te.meta.modified)
        if te.meta.deleted is not None:
            out["deletedAt"] = from_us(te.meta.deleted)
    return out


def _respond(
    request: Request,
    result: TemporalResult,
    body: Any,
    tm: TermMap,
    hq: HistoryQuery,
) -> Response:
    kind = negotiate(request, OFFERS)
    headers: dict[str, str] = {}
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    status = 200
    if result.truncated:
        status = 206
        size = str(hq.last_n) if hq.last_n else "*"
        headers["Content-Range"] = f"date-time {result.range_start}-{result.range_end}/{size}"
    return respond(body, tm=tm, kind=kind, status=status, headers=headers)


async def _run_query(
    hub: Hub,
    tenant: str,
    request: Request,
    view: View,
    selection: EntityQuery,
    hq: HistoryQuery,
    tp: TemporalParams,
    fmt_param: str | None,
    options: str | None,
    *,
    one: str | None = None,
    forward: dict[str, str] | None = None,
    remote_one: list[tuple[Registration, dict[str, Any]]] | None = None,
    warned_one: dict[str, str] | None = None,
) -> Response:
    """Run a temporal query (or retrieve, ``one``) and render it. With ``forward`` (the
    request's query parameters), the context sources registered for ``queryTemporal``
    are asked the same and their entities merged in (``broker.core.distributed``)."""
    fmt = P.temporal_format(fmt_param, options)
    aggregation = _aggregation(tp, fmt)
    if aggregation is not None and hq.last_n:
        raise BadRequestData("lastN cannot be combined with aggregatedValues")
    if view.attrs is not None:
        hq = replace(hq, attrs=sorted(view.attrs))
    remote: list[dict[str, Any]] = []
    warned: dict[str, str] = {}
    page = (selection.offset, selection.limit)
    if forward is not None and one is None:
        call = forward_call(request, tenant)
        remote, remote_total, warned = await hub.distributed.query_json(
            tenant, "queryTemporal", selection, view.tm, call, "/temporal/entities", forward
        )
        if remote or warned:
            want = min(selection.offset + selection.limit, hub.settings.max_limit)
            selection = replace(selection, offset=0, limit=want)
    result = await hub.temporal.query(tenant, selection, hq, aggregation, omit_empty=one is None)
    sys_attrs = "sysAttrs" in P.options_of(options)
    view.sys_attrs = sys_attrs
    bodies = [
        _render(te, view, fmt, hq.time_property, sys_attrs=sys_attrs) for te in result.entities
    ]
    if remote or warned:
        merged: dict[str, dict[str, Any]] = {}
        for item in [*bodies, *remote]:
            eid = str(item.get("id"))
            merged[eid] = merge_rendered(merged[eid], item) if eid in merged else item
        before = len(bodies) + len(remote)
        ordered = sorted(merged.values(), key=lambda b: str(b.get("id")))
        bodies = ordered[page[0] : page[0] + page[1]]
        if result.total is not None:
            result.total += remote_total - (before - len(merged))
    if one is None:
        if view.pick is not None or view.omit is not None:
            bodies = [b for b in bodies if b]
        if view.dataset_ids is not None:  # no instance of the datasets asked for: no match
            bodies = [b for b in bodies if any(k not in ENTITY_KEYS for k in b)]
        response = _respond(request, result, bodies, view.tm, hq)
        response.headers.update(warned)
        return response
    if remote_one:
        # clause 5.7.3.4: what inclusive, exclusive and redirect sources answer is
        # merged in; an auxiliary source only adds instances at times nobody else has
        merged_one: dict[str, Any] | None = bodies[0] if bodies else None
        for reg, remote_body in sorted(remote_one, key=lambda rb: rb[0].mode == "auxiliary"):
            if merged_one is None:
                merged_one = remote_body
            elif reg.mode == "auxiliary":
                merged_one = fill_rendered(merged_one, remote_body, hq.time_property)
            else:
                merged_one = merge_rendered(merged_one, remote_body)
        bodies = [merged_one] if merged_one is not None else []
    if not bodies:
        missing = ResourceNotFound(f"no temporal evolution of entity {one}")
        missing.headers.update(warned_one or {})
        raise missing
    root = bodies[0]
    if view.attrs is not None and not any(k not in ("id", "type", "scope") for k in root):
        raise ResourceNotFound(f"entity {one} has none of the attributes asked for")
    if (view.pick is not None or view.omit is not None) and not root:
        raise ResourceNotFound(f"nothing of entity {one} is left after pick/omit")
    response = _respond(request, result, root, view.tm, hq)
    response.headers.update(warned_one or {})
    return response


# -- consumption -------------------------------------------------------------------------------


@router.get(
    "/entities", summary="Query temporal evolution of entities (clause 6.18.3.2)", responses=ANSWERS
)
async def query_temporal(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[TemporalQueryParams, P.group(TemporalQueryParams)],
) -> Response:
    P.check_params(request)
    negotiate(request, OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(params, tm, temporal=True)
    hq = _history_query(hub, params)
    selection = entity_query(
        params, hub, tm, attrs=params.attrs, options=params.options, local=params.local
    )
    forward = None if P.bool_param(params.local, "local") else dict(request.query_params)
    return await _run_query(
        hub,
        tenant,
        request,
        view,
        selection,
        hq,
        params,
        params.format,
        params.options,
        forward=forward,
    )


class TemporalBodyQueryParams(TemporalParams):
    """The URL parameters of the temporal query with a Query body (clause 6.24.3.1)."""

    limit: P.Limit = None
    offset: P.Offset = None
    count: P.Count = None
    options: P.Options = None
    format: P.Format = None
    local: P.Local = None

    def body_query(self) -> BodyQueryParams:
        return BodyQueryParams.model_construct(
            limit=self.limit,
            offset=self.offset,
            count=self.count,
            options=self.options,
            format=self.format,
            local=self.local,
        )


@router.post(
    "/entityOperations/query",
    summary="Query temporal evolution with a Query body (clause 6.24.3.1)",
    responses=ANSWERS,
    openapi_extra=P.json_body(
        'A Query (clause 5.2.23) with "temporalQ": {"timerel": ..., "timeAt": ...}.'
    ),
)
async def query_temporal_post(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[TemporalBodyQueryParams, P.group(TemporalBodyQueryParams)],
) -> Response:
    P.check_params(request)
    negotiate(request, OFFERS)
    payload, tm = await hub.payload(request)
    body = payload.body
    temporal_q = body.get("temporalQ")
    if temporal_q is not None and not isinstance(temporal_q, dict):
        raise BadRequestData("temporalQ must be an object")
    view, selection = body_query(params.body_query(), hub, body, tm, temporal=True)
    hq = _history_query(hub, params, temporal_q or {})
    return await _run_query(
        hub, tenant, request, view, selection, hq, params, params.format, params.options
    )


@router.get(
    "/entities/{entity_id:path}",
    summary="Retrieve temporal evolution of an entity (clause 6.19.3.1)",
    responses=ANSWERS,
)
async def retrieve_temporal(
    entity_id: P.EntityIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[TemporalRetrieveParams, P.group(TemporalRetrieveParams)],
) -> Response:
    P.check_params(request)
    negotiate(request, OFFERS)
    check_entity_id(entity_id)
    tm = await hub.link_term_map(request)
    view = P.view_of(params, tm, temporal=True)
    hq = _history_query(hub, params)
    _aggregation(params, P.temporal_format(params.format, params.options))  # 400 before sending
    remote: list[tuple[Registration, dict[str, Any]]] = []
    warned: dict[str, str] = {}
    if not P.bool_param(params.local, "local"):
        remote, warned = await hub.distributed.retrieve_json(
            tenant,
            entity_id,
            tm,
            forward_call(request, tenant),
            f"/temporal/entities/{Forwarder.segment(entity_id)}",
            dict(request.query_params),
            attrs=sorted(view.attrs) if view.attrs is not None else None,
        )
    if not remote:
        await hub.temporal.check_tenant(tenant)
    selection = EntityQuery(ids=[entity_id], limit=1)
    return await _run_query(
        hub,
        tenant,
        request,
        view,
        selection,
        hq,
        params,
        params.format,
        params.options,
        one=entity_id,
        remote_one=remote,
        warned_one=warned,
    )


# -- provision ---------------------------------------------------------------------------------


@router.post(
    "/entities",
    status_code=201,
    summary="Create or update temporal evolution of an entity (clause 6.18.3.1)",
    openapi_extra=P.json_body("A temporal entity (clause 5.2.37)."),
)
async def upsert_temporal(op: OperationDep) -> Response:
    request, hub, tenant = op.request, op.hub, op.tenant
    payload, tm = await hub.payload(request)
    body = payload.body

    async def here(part: Any) -> Response:
        if await hub.temporal.upsert(tenant, part, tm):
            eid = part.get("id", part.get("@id"))
            return Response(status_code=201, headers={"Location": _location(str(eid))})
        return Response(status_code=204)

    eid = body.get("id", body.get("@id")) if isinstance(body, dict) else None
    if not isinstance(eid, str) or not is_uri(eid) or not await hub.registrations.active(tenant):
        return await here(body)
    hub.temporal.check_entity(body, tm)  # 400 before any part is sent on
    types = named_types(body)
    return await write_through(
        request,
        hub,
        tenant,
        "upsertTemporal",
        eid,
        here,
        tm=tm,
        body=body,
        context=payload.context,
        types=types or None,
        whole=True,
        created=True,
        location=_location(eid),
    )


@router.post(
    "/entities/{entity_id:path}/attrs",
    status_code=204,
    summary="Add attributes to the temporal evolution of an entity (clause 6.20.3.1)",
    openapi_extra=P.json_body("Attribute instances to add."),
)
async def append_temporal_attrs(entity_id: P.EntityIdPath, op: OperationDep) -> Response:
    check_entity_id(entity_id)
    request, hub, tenant = op.request, op.hub, op.tenant
    payload, tm = await hub.payload(request)

    async def here(part: Any) -> Response:
        await hub.temporal.add_attrs(tenant, entity_id, part, tm)
        return Response(status_code=204)

    if not await hub.registrations.active(tenant):
        return await here(payload.body)
    hub.temporal.check_attrs(payload.body, tm)
    return await write_through(
        request,
        hub,
        tenant,
        "appendAttrsTemporal",
        entity_id,
        here,
        tm=tm,
        body=payload.body,
        context=payload.context,
    )


@router.post("/entityOperations/upsert")
async def upsert_temporal_batch(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    """Renkei extension (not in ETSI GS CIM 009): ``POST /temporal/entities`` for many
    entities at once. Every instance lands in the history and each attribute's current
    value becomes its newest instance by ``observedAt``; per-entity results as the batch
    entity operations give them (204, or 207 with ``success`` and ``errors``)."""
    P.check_params(request)
    items, tm = await batch_items(hub, request)
    hub.batch.check_size(len(items))
    result = await hub.temporal.upsert_many(tenant, items)
    if result.errors:
        return respond(result.body(), tm=tm, kind=JSON, status=207)
    return Response(status_code=204)


def _location(entity_id: str) -> str:
    return f"/ngsi-ld/v1/temporal/entities/{id_segment(entity_id)}"


def _instance_id(value: str) -> str:
    if not is_uri(value):
        raise BadRequestData(f"instanceId {value!r} is not a URI")
    return value


@router.delete(
    "/entities/{entity_id:path}/attrs/{attr}/{instance_id}",
    status_code=204,
    summary="Delete an attribute instance (clause 6.22.3.2)",
)
async def delete_temporal_instance(
    entity_id: P.EntityIdPath, attr: P.AttrPath, instance_id: P.InstancePath, op: OperationDep
) -> Response:
    check_entity_id(entity_id)
    request, hub, tenant = op.request, op.hub, op.tenant
    tm = await hub.link_term_map(request)
    name = check_name(attr)
    iid = _instance_id(instance_id)

    async def here(_body: Any) -> Response:
        await hub.temporal.delete_instance(tenant, entity_id, tm.expand(name), iid)
        return Response(status_code=204)

    return await write_through(
        request, hub, tenant, "deleteAttrInstanceTemporal", entity_id, here, tm=tm, attr=name
    )


@router.patch(
    "/entities/{entity_id:path}/attrs/{attr}/{instance_id}",
    status_code=204,
    summary="Modify an attribute instance (clause 6.22.3.1)",
    openapi_extra=P.json_body("The attribute instance's new content."),
)
async def patch_temporal_instance(
    entity_id: P.EntityIdPath, attr: P.AttrPath, instance_id: P.InstancePath, op: OperationDep
) -> Response:
    check_entity_id(entity_id)
    name = check_name(attr)
    iid = _instance_id(instance_id)
    request, hub, tenant = op.request, op.hub, op.tenant
    payload, tm = await hub.payload(request)

    async def here(part: Any) -> Response:
        await hub.temporal.patch_instance(tenant, entity_id, tm.expand(name), name, iid, part, tm)
        return Response(status_code=204)

    return await write_through(
        request,
        hub,
        tenant,
        "updateAttrInstanceTemporal",
        entity_id,
        here,
        tm=tm,
        body=payload.body,
        context=payload.context,
        attr=name,
    )


@router.delete(
    "/entities/{entity_id:path}/attrs/{attr:attr}",
    status_code=204,
    summary="Delete an attribute's temporal evolution (clause 6.21.3.1)",
)
async def delete_temporal_attr(
    entity_id: P.EntityIdPath,
    attr: P.AttrPath,
    op: OperationDep,
    dataset_id: P.DatasetId = None,
    delete_all: P.DeleteAll = None,
) -> Response:
    check_entity_id(entity_id)
    request, hub, tenant = op.request, op.hub, op.tenant
    tm = await hub.link_term_map(request)
    name = check_name(attr)
    everything = P.bool_param(delete_all, "deleteAll")

    async def here(_body: Any) -> Response:
        await hub.temporal.delete_attr(
            tenant, entity_id, tm.expand(name), dataset_id=dataset_id, delete_all=everything
        )
        return Response(status_code=204)

    return await write_through(
        request, hub, tenant, "deleteAttrsTemporal", entity_id, here, tm=tm, attr=name
    )


@router.delete(
    "/entities/{entity_id:path}",
    status_code=204,
    summary="Delete the temporal evolution of an entity (clause 6.19.3.2)",
)
async def delete_temporal(entity_id: P.EntityIdPath, op: OperationDep) -> Response:
    if "/attrs/" in entity_id:  # .../attrs//{instanceId}: the attribute name is empty
        raise BadRequestData("the attribute name in the path is empty")
    check_entity_id(entity_id)
    request, hub, tenant = op.request, op.hub, op.tenant

    async def here(_body: Any) -> Response:
        await hub.temporal.delete(tenant, entity_id)
        return Response(status_code=204)

    tm = hub.resolver.core  # nothing to expand
    return await write_through(request, hub, tenant, "deleteTemporal", entity_id, here, tm=tm)
