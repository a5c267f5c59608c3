"""The temporal API: ``/ngsi-ld/v1/temporal/entities`` and ``/temporal/entityOperations/query``.

Routes parse the request into an entity selection (the same parser as ``GET
/entities``), a ``HistoryQuery`` and a representation, call ``TemporalService`` and
render the temporal representation: normalized (each attribute an array of instances),
``temporalValues`` (``[value, time]`` pairs per datasetId) or ``aggregatedValues``
(``[value, start, end]`` per method).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, csv_param, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep
from broker.api.entities import entity_query
from broker.api.entity_operations import body_query
from broker.core.model import View
from broker.core.temporal import Aggregation, TemporalEntity, TemporalResult, time_query
from broker.errors import BadRequestData, ResourceNotFound
from broker.jsonld.context import TermMap
from broker.model.entity import ENTITY_KEYS, check_entity_id, check_name, is_uri
from broker.model.history import AGGR_METHODS, Duration, check_aggr_methods, from_us, instance_value
from broker.model.store import EntityQuery, HistoryQuery

#: Characters of an entity id kept as they are in a Location header (others,
#: such as Japanese ids, are percent-encoded: headers are Latin-1).
URI_SAFE = ":/@!$&'()*+,;=-._~"

router = APIRouter(prefix="/ngsi-ld/v1/temporal")

OFFERS = (JSON, LD_JSON)
TEMPORAL = frozenset(
    {
        "timerel",
        "timeAt",
        "endTimeAt",
        "timeproperty",
        "lastN",
        "aggrMethods",
        "aggrPeriodDuration",
    }
)
QUERY = P.QUERY | TEMPORAL
RETRIEVE = P.REPRESENTATION | TEMPORAL
_BODY_QUERY = frozenset({"limit", "offset", "count", "options", "format", "local"} | TEMPORAL)

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
    hub: Hub, request: Request, temporal_q: dict[str, Any] | None = None
) -> HistoryQuery:
    params = request.query_params
    src: Any = temporal_q if temporal_q is not None else params
    for key in ("timerel", "timeAt", "endTimeAt", "timeproperty"):
        value = src.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequestData(f"temporalQ.{key} must be a string")
    last_n = params.get("lastN")
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


def _aggregation(request: Request, fmt: str) -> Aggregation | None:
    if fmt != "aggregatedValues":
        return None
    params = request.query_params
    methods = csv_param(params.get("aggrMethods"))
    if not methods:
        raise BadRequestData(f"aggregatedValues needs aggrMethods ({', '.join(AGGR_METHODS)})")
    period = params.get("aggrPeriodDuration")
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
    *,
    one: str | None = None,
) -> Response:
    fmt = P.temporal_format(request)
    aggregation = _aggregation(request, fmt)
    if aggregation is not None and hq.last_n:
        raise BadRequestData("lastN cannot be combined with aggregatedValues")
    if view.attrs is not None:
        hq = replace(hq, attrs=sorted(view.attrs))
    result = await hub.temporal.query(tenant, selection, hq, aggregation, omit_empty=one is None)
    sys_attrs = "sysAttrs" in P.options_of(request)
    view.sys_attrs = sys_attrs
    bodies = [
        _render(te, view, fmt, hq.time_property, sys_attrs=sys_attrs) for te in result.entities
    ]
    if one is None:
        if view.pick is not None or view.omit is not None:
            bodies = [b for b in bodies if b]
        if view.dataset_ids is not None:  # no instance of the datasets asked for: no match
            bodies = [b for b in bodies if any(k not in ENTITY_KEYS for k in b)]
        return _respond(request, result, bodies, view.tm, hq)
    if not bodies:
        raise ResourceNotFound(f"no temporal evolution of entity {one}")
    root = bodies[0]
    if view.attrs is not None and not any(k not in ("id", "type", "scope") for k in root):
        raise ResourceNotFound(f"entity {one} has none of the attributes asked for")
    if (view.pick is not None or view.omit is not None) and not root:
        raise ResourceNotFound(f"nothing of entity {one} is left after pick/omit")
    return _respond(request, result, root, view.tm, hq)


# -- consumption -------------------------------------------------------------------------------


@router.get("/entities")
async def query_temporal(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, QUERY)
    negotiate(request, OFFERS)
    tm = await hub.link_term_map(request)
    view = P.view_of(request, tm, temporal=True)
    hq = _history_query(hub, request)
    selection = entity_query(request, hub, tm)
    return await _run_query(hub, tenant, request, view, selection, hq)


@router.post("/entityOperations/query")
async def query_temporal_post(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, _BODY_QUERY)
    negotiate(request, OFFERS)
    payload, tm = await hub.payload(request)
    body = payload.body
    temporal_q = body.get("temporalQ")
    if temporal_q is not None and not isinstance(temporal_q, dict):
        raise BadRequestData("temporalQ must be an object")
    view, selection = body_query(request, hub, body, tm, temporal=True)
    hq = _history_query(hub, request, temporal_q or {})
    return await _run_query(hub, tenant, request, view, selection, hq)


@router.get("/entities/{entity_id:path}")
async def retrieve_temporal(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, RETRIEVE)
    negotiate(request, OFFERS)
    check_entity_id(entity_id)
    tm = await hub.link_term_map(request)
    view = P.view_of(request, tm, temporal=True)
    hq = _history_query(hub, request)
    await hub.temporal.check_tenant(tenant)
    selection = EntityQuery(ids=[entity_id], limit=1)
    return await _run_query(hub, tenant, request, view, selection, hq, one=entity_id)


# -- provision ---------------------------------------------------------------------------------


@router.post("/entities")
async def upsert_temporal(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    P.check_params(request, P.NONE)
    payload, tm = await hub.payload(request)
    created = await hub.temporal.upsert(tenant, payload.body, tm)
    if created:
        eid = payload.body.get("id", payload.body.get("@id"))
        return Response(
            status_code=201,
            headers={"Location": f"/ngsi-ld/v1/temporal/entities/{quote(eid, safe=URI_SAFE)}"},
        )
    return Response(status_code=204)


@router.post("/entities/{entity_id:path}/attrs")
async def append_temporal_attrs(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    check_entity_id(entity_id)
    payload, tm = await hub.payload(request)
    await hub.temporal.add_attrs(tenant, entity_id, payload.body, tm)
    return Response(status_code=204)


def _instance_id(value: str) -> str:
    if not is_uri(value):
        raise BadRequestData(f"instanceId {value!r} is not a URI")
    return value


@router.delete("/entities/{entity_id:path}/attrs/{attr}/{instance_id}")
async def delete_temporal_instance(
    entity_id: str, attr: str, instance_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    check_entity_id(entity_id)
    tm = await hub.link_term_map(request)
    iri = tm.expand(check_name(attr))
    await hub.temporal.delete_instance(tenant, entity_id, iri, _instance_id(instance_id))
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}/attrs/{attr}/{instance_id}")
async def patch_temporal_instance(
    entity_id: str, attr: str, instance_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    check_entity_id(entity_id)
    name = check_name(attr)
    iid = _instance_id(instance_id)
    payload, tm = await hub.payload(request)
    await hub.temporal.patch_instance(
        tenant, entity_id, tm.expand(name), name, iid, payload.body, tm
    )
    return Response(status_code=204)


@router.delete("/entities/{entity_id:path}/attrs/{attr}")
async def delete_temporal_attr(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.DELETE_ATTR)
    check_entity_id(entity_id)
    tm = await hub.link_term_map(request)
    await hub.temporal.delete_attr(
        tenant,
        entity_id,
        tm.expand(check_name(attr)),
        dataset_id=request.query_params.get("datasetId"),
        delete_all=P.bool_param(request, "deleteAll"),
    )
    return Response(status_code=204)


@router.delete("/entities/{entity_id:path}")
async def delete_temporal(
    entity_id: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    P.check_params(request, P.NONE)
    if "/attrs/" in entity_id:  # .../attrs//{instanceId}: the attribute name is empty
        raise BadRequestData("the attribute name in the path is empty")
    check_entity_id(entity_id)
    await hub.temporal.delete(tenant, entity_id)
    return Response(status_code=204)
