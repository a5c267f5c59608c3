"""``/ngsi-ld/v1/csourceRegistrations``: register, query, retrieve, update and delete
context source registrations (clauses 5.9, 5.10, 6.8 and 6.9).

Every operation here needs the ``admin`` role (``broker.api.auth.classify``): a
registration makes the hub send requests, with its own credentials, to the endpoint it
names. Endpoints the outbound policy refuses are refused when registered (400).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, csv_param, negotiate, respond
from broker.api.deps import HubDep, TenantDep
from broker.errors import BadRequestData
from broker.federation.registrations import RegistrationQuery, TemporalFilter
from broker.model.entity import check_datetime, check_entity_id, check_name, id_segment
from broker.query import parse_geo_query, parse_q, resolve_geo, resolve_q
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

router = APIRouter(
    route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["context source registrations"]
)
ANSWERS = P.answers(JSON, LD_JSON)
BASE = "/ngsi-ld/v1/csourceRegistrations"

RegistrationIdPath = Annotated[
    str, Path(description="Context source registration id (a URI, clause 5.2.9).")
]


def _text(name: str, description: str) -> Any:
    return Query(alias=name, description=description)


class RegistrationQueryParams(P.Group):
    """``GET /csourceRegistrations`` (clause 6.8.3.2)."""

    id: P.EntityIds = None
    type: P.EntityTypes = None
    id_pattern: P.IdPattern = None
    attrs: P.Attrs = None
    q: P.Q = None
    csf: P.Csf = None
    georel: P.Georel = None
    geometry: P.Geometry = None
    coordinates: P.Coordinates = None
    geoproperty: P.Geoproperty = None
    timerel: Annotated[str | None, _text("timerel", "before, after or between (clause 4.11).")] = (
        None
    )
    time_at: Annotated[str | None, _text("timeAt", "DateTime the relation refers to.")] = None
    end_time_at: Annotated[str | None, _text("endTimeAt", "End DateTime of timerel=between.")] = (
        None
    )
    timeproperty: Annotated[
        str | None,
        _text(
            "timeproperty",
            "observedAt (default: observationInterval), createdAt or modifiedAt "
            "(managementInterval).",
        ),
    ] = None
    limit: P.Limit = None
    offset: P.Offset = None
    count: P.Count = None
    options: P.Options = None
    local: P.Local = None


def _temporal(p: RegistrationQueryParams) -> TemporalFilter | None:
    if p.timerel is None:
        if any(v is not None for v in (p.time_at, p.end_time_at)):
            raise BadRequestData("timeAt and endTimeAt need timerel")
        return None
    if p.timerel not in ("before", "after", "between"):
        raise BadRequestData("timerel must be before, after or between")
    if p.time_at is None:
        raise BadRequestData("timerel needs timeAt")
    if p.timerel == "between" and p.end_time_at is None:
        raise BadRequestData("timerel=between needs endTimeAt")
    if p.timeproperty not in (None, "observedAt", "createdAt", "modifiedAt"):
        raise BadRequestData("timeproperty must be observedAt, createdAt or modifiedAt")

    def epoch(text: str, what: str) -> float:
        value = datetime.fromisoformat(check_datetime(text, what).replace("Z", "+00:00"))
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    return TemporalFilter(
        timerel=p.timerel,
        time_at=epoch(p.time_at, "timeAt"),
        end_time_at=epoch(p.end_time_at, "endTimeAt") if p.end_time_at else None,
        management=p.timeproperty in ("createdAt", "modifiedAt"),
    )


@router.post(
    "/csourceRegistrations",
    status_code=201,
    summary="Register context source (clause 6.8.3.1)",
    openapi_extra=P.json_body("The context source registration (clause 5.2.9)."),
)
async def create_registration(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Response:
    P.check_params(request)
    payload, _tm = await hub.payload(request)
    reg_id = await hub.registrations.create(tenant, payload.body, payload.context)
    return Response(status_code=201, headers={"Location": f"{BASE}/{id_segment(reg_id)}"})


@router.get(
    "/csourceRegistrations",
    summary="Query context source registrations (clause 6.8.3.2)",
    responses=ANSWERS,
)
async def query_registrations(
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    params: Annotated[RegistrationQueryParams, P.group(RegistrationQueryParams)],
) -> Response:
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    p = params
    limit_n, offset_n = P.paging(p.limit, p.offset, hub.settings)
    ids = csv_param(p.id)
    for eid in ids:
        check_entity_id(eid)
    if p.id_pattern is not None:
        check_pattern(p.id_pattern)
    geo = parse_geo_query(p.georel, p.geometry, p.coordinates, p.geoproperty)
    temporal = _temporal(p)
    types = type_alternatives(p.type)
    attrs = csv_param(p.attrs)
    if not (types or attrs or p.attrs is not None or ids or p.id_pattern or p.q or p.csf or geo):
        raise BadRequestData(
            "a registration query needs at least one of type, attrs, id, idPattern, q, csf "
            "or a geo-query"
        )
    query = RegistrationQuery(
        ids=ids or None,
        id_pattern=p.id_pattern,
        types=[[tm.expand(check_name(t, "entity type")) for t in alt] for alt in types] or None,
        attrs=[tm.expand(check_name(a)) for a in attrs] or None,
        q=resolve_q(parse_q(p.q), tm.expand) if p.q else None,
        csf=resolve_q(parse_q(p.csf), tm.expand) if p.csf else None,
        geo=resolve_geo(geo, tm.expand) if geo else None,
        temporal=temporal,
    )
    sys_attrs = "sysAttrs" in P.options_of(p.options)
    found = await hub.registrations.query(tenant, query)
    page = [
        hub.registrations.render(r, tm, sys_attrs=sys_attrs)
        for r in found[offset_n : offset_n + limit_n]
    ]
    count = p.count == "true" or "count" in P.options_of(p.options)
    headers = {"NGSILD-Results-Count": str(len(found))} if count else {}
    return respond(page, tm=tm, kind=kind, headers=headers)


@router.get(
    "/csourceRegistrations/{reg_id:path}",
    summary="Retrieve context source registration (clause 6.9.3.1)",
    responses=ANSWERS,
)
async def retrieve_registration(
    reg_id: RegistrationIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    options: P.Options = None,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    kind = negotiate(request, (JSON, LD_JSON))
    tm = await hub.link_term_map(request)
    doc = await hub.registrations.get(tenant, reg_id)
    reg = await hub.registrations.compile(doc)
    sys_attrs = "sysAttrs" in P.options_of(options)
    return respond(hub.registrations.render(reg, tm, sys_attrs=sys_attrs), tm=tm, kind=kind)


@router.patch(
    "/csourceRegistrations/{reg_id:path}",
    status_code=204,
    summary="Update context source registration (clause 6.9.3.2)",
    openapi_extra=P.json_body("The registration members to change.", merge_patch=True),
)
async def update_registration(
    reg_id: RegistrationIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    check_entity_id(reg_id, "registration id")
    payload, _tm = await hub.payload(request, allow_merge_patch=True)
    await hub.registrations.update(tenant, reg_id, payload.body, payload.context)
    return Response(status_code=204)


@router.delete(
    "/csourceRegistrations/{reg_id:path}",
    status_code=204,
    summary="Delete context source registration (clause 6.9.3.3)",
)
async def delete_registration(
    reg_id: RegistrationIdPath,
    request: Request,
    hub: HubDep,
    tenant: TenantDep,
    local: P.Local = None,
) -> Response:
    P.check_params(request)
    await hub.registrations.delete(tenant, reg_id)
    return Response(status_code=204)
