"""``/ngsi-ld/v1/entities``: create, retrieve, query, replace, merge, delete, attributes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from broker.api.common import GEO_JSON, JSON, LD_JSON, csv_param, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.api.params import options_of, view_of
from broker.core.model import View, check_entity_id, check_name
from broker.errors import BadRequestData, NonexistentTenant, TooManyResults
from broker.jsonld.context import NGSI_LD
from broker.store.base import EntityQuery

router = APIRouter(prefix="/ngsi-ld/v1")

ENTITY_OFFERS = (JSON, LD_JSON, GEO_JSON)


def _geometry_property(request: Request, view: View) -> str:
    name = request.query_params.get("geometryProperty")
    if name is None:
        return NGSI_LD + "location"
    return view.tm.expand(check_name(name, "geometryProperty"))


def _no_content() -> Response:
    return Response(status_code=204)


@router.post("/entities")
async def create_entity(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    payload, tm = await hub.payload(request)
    ent = await hub.entities.create(tenant, payload.body, tm)
    return Response(status_code=201, headers={"Location": f"/ngsi-ld/v1/entities/{ent['id']}"})


@router.get("/entities")
async def query_entities(request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = view_of(request, tm)
    params = request.query_params
    s = hub.settings
    limit = _int_param(params.get("limit"), "limit", s.default_limit)
    offset = _int_param(params.get("offset"), "offset", 0)
    if limit > s.max_limit:
        raise TooManyResults(f"limit {limit} is above the maximum of {s.max_limit}")
    ids = csv_param(params.get("id"))
    for eid in ids:
        check_entity_id(eid)
    types = [[tm.expand(t) for t in alt.split(";")] for alt in _type_alternatives(params.get("type"))]
    attrs = [tm.expand(check_name(a)) for a in csv_param(params.get("attrs"))]
    if not (ids or types or attrs or params.get("idPattern") or params.get("q") or params.get("georel")):
        raise BadRequestData("a query needs at least one of type, id, idPattern, attrs, q or a geo-query")
    count = params.get("count") == "true" or "count" in options_of(request)
    query = EntityQuery(
        ids=ids or None, id_pattern=params.get("idPattern"), types=types or None,
        attrs=attrs or None, q=params.get("q"), geo=params.get("georel"),
        scope_q=params.get("scopeQ"), limit=limit, offset=offset, count=count,
    )
    try:
        entities, total = await hub.entities.query(tenant, query)
    except NonexistentTenant:
        entities, total = [], 0
    headers = {"NGSILD-Results-Count": str(total)} if total is not None else {}
    if kind == GEO_JSON:
        geo = _geometry_property(request, view)
        body = {"type": "FeatureCollection", "features": [view.feature(e, geo) for e in entities]}
        return respond(body, tm=tm, kind=GEO_JSON, headers=headers)
    return respond([view.entity(e) for e in entities], tm=tm, kind=kind, headers=headers)


def _type_alternatives(value: str | None) -> list[str]:
    if not value:
        return []
    cleaned = value.replace("(", "").replace(")", "")
    return [alt for part in cleaned.split("|") for alt in part.split(",") if alt]


def _int_param(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequestData(f"{name} must be a non-negative integer") from None
    if number < 0:
        raise BadRequestData(f"{name} must be a non-negative integer")
    return number


@router.get("/entities/{entity_id:path}/attrs/{attr}")
async def _no_attr_get(entity_id: str, attr: str) -> Response:
    raise BadRequestData("retrieving a single attribute is not an NGSI-LD operation; use attrs=")


@router.get("/entities/{entity_id:path}")
async def retrieve_entity(entity_id: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    kind = negotiate(request, ENTITY_OFFERS)
    tm = await hub.link_term_map(request)
    view = view_of(request, tm)
    ent = await hub.entities.retrieve(tenant, entity_id)
    if kind == GEO_JSON:
        return respond(view.feature(ent, _geometry_property(request, view)), tm=tm, kind=GEO_JSON)
    return respond(view.entity(ent), tm=tm, kind=kind)


@router.delete("/entities/{entity_id:path}/attrs/{attr}")
async def delete_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    tm = await hub.link_term_map(request)
    params = request.query_params
    await hub.entities.delete_attr(
        tenant, entity_id, check_name(attr), tm,
        dataset_id=params.get("datasetId"), delete_all=params.get("deleteAll") == "true",
    )
    return _no_content()


@router.delete("/entities/{entity_id:path}")
async def delete_entity(entity_id: str, hub: HubDep, tenant: TenantDep) -> Response:
    await hub.entities.delete(tenant, entity_id)
    return _no_content()


@router.put("/entities/{entity_id:path}/attrs/{attr}")
async def replace_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    payload, tm = await hub.payload(request)
    await hub.entities.update_attr(tenant, entity_id, check_name(attr), payload.body, tm, replace=True)
    return _no_content()


@router.patch("/entities/{entity_id:path}/attrs/{attr}")
async def update_attribute(
    entity_id: str, attr: str, request: Request, hub: HubDep, tenant: TenantDep
) -> Response:
    payload, tm = await hub.payload(request)
    await hub.entities.update_attr(tenant, entity_id, check_name(attr), payload.body, tm, replace=False)
    return _no_content()


@router.post("/entities/{entity_id:path}/attrs")
async def append_attributes(entity_id: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    payload, tm = await hub.payload(request)
    no_overwrite = "noOverwrite" in options_of(request)
    result = await hub.entities.append_attrs(tenant, entity_id, payload.body, tm, no_overwrite=no_overwrite)
    if result.not_updated:
        return respond(result.body(), tm=tm, kind=JSON, status=207)
    return _no_content()


@router.patch("/entities/{entity_id:path}/attrs")
async def update_attributes(entity_id: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    payload, tm = await hub.payload(request)
    result = await hub.entities.update_attrs(tenant, entity_id, payload.body, tm)
    if result.not_updated:
        return respond(result.body(), tm=tm, kind=JSON, status=207)
    return _no_content()


@router.put("/entities/{entity_id:path}")
async def replace_entity(entity_id: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    payload, tm = await hub.payload(request)
    await hub.entities.replace(tenant, entity_id, payload.body, tm)
    return _no_content()


@router.patch("/entities/{entity_id:path}")
async def merge_entity(entity_id: str, request: Request, hub: HubDep, tenant: TenantDep) -> Response:
    payload, tm = await hub.payload(request, allow_merge_patch=True)
    await hub.entities.merge(tenant, entity_id, payload.body, tm)
    return _no_content()
