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
from broker.api.collection import ANSWERS, Collection, Names, Texts, declare
from broker.api.common import JSON, LD_JSON, csv_param, negotiate, page_links, respond
from broker.api.deps import HubDep, Operation, TenantDep
from broker.errors import BadRequestData
from broker.federation.registrations import RegistrationQuery, TemporalFilter
from broker.jsonld.context import TermMap
from broker.model.entity import check_datetime, check_entity_id, check_name
from broker.query import parse_geo_query, parse_q, resolve_geo, resolve_q
from broker.query.patterns import check_pattern
from broker.query.types import type_alternatives

router = APIRouter(
    route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["context source registrations"]
)

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


class Registrations(Collection):
    """Registrations are queried by parameters of their own (``query_registrations``) and
    compiled to be shown."""

    def check_id(self, doc_id: str) -> None:
        check_entity_id(doc_id, "registration id")

    async def show(
        self, op: Operation, doc: dict[str, Any], tm: TermMap, options: str | None
    ) -> Any:
        reg = await op.hub.registrations.compile(doc)
        sys_attrs = "sysAttrs" in P.options_of(options)
        return op.hub.registrations.render(reg, tm, sys_attrs=sys_attrs)


async def registration_id(reg_id: RegistrationIdPath) -> str:
    """The registration id in the path."""
    return reg_id


TEXTS = Texts(
    create="Register context source (clause 6.8.3.1)",
    query="Query context source registrations (clause 6.8.3.2)",
    retrieve="Retrieve context source registration (clause 6.9.3.1)",
    update="Update context source registration (clause 6.9.3.2)",
    delete="Delete context source registration (clause 6.9.3.3)",
    body="The context source registration (clause 5.2.9).",
    patch="The registration members to change.",
)
NAMES = Names(
    create="create_registration",
    query="query_registrations",
    retrieve="retrieve_registration",
    update="update_registration",
    delete="delete_registration",
)
REGISTRATIONS = Registrations("/csourceRegistrations", lambda hub: hub.registrations)
declare(router, REGISTRATIONS, doc_id=registration_id, texts=TEXTS, names=NAMES)


@router.get(REGISTRATIONS.path, name=NAMES.query, summary=TEXTS.query, responses=ANSWERS)
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
    response = respond(page, tm=tm, kind=kind, headers=headers)
    more = offset_n + limit_n < len(found)
    for link in page_links(request, offset=offset_n, limit=limit_n, more=more, kind=kind):
        response.headers.append("Link", link)  # the neighbouring pages (clause 6.3.10)
    return response
