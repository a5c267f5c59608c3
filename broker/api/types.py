"""``/ngsi-ld/v1/types`` and ``/ngsi-ld/v1/attributes``: discovery of what the hub holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, negotiate, respond
from broker.api.deps import Operation, OperationDep
from broker.jsonld.context import TermMap
from broker.model.entity import check_name

router = APIRouter(route_class=P.DeclaredRoute, prefix="/ngsi-ld/v1", tags=["discovery"])
ANSWERS = P.answers(JSON, LD_JSON)


async def _answer(op: Operation, find: Callable[[TermMap], Awaitable[Any]]) -> Response:
    """What ``find`` discovers, in the terms of the request's context."""
    kind = negotiate(op.request)
    tm = await op.hub.link_term_map(op.request)
    return respond(await find(tm), tm=tm, kind=kind)


@router.get(
    "/types", summary="Retrieve available entity types (clause 6.25.3.1)", responses=ANSWERS
)
async def entity_types(op: OperationDep, details: P.Details = None) -> Response:
    discovery = op.hub.discovery
    return await _answer(
        op, lambda tm: discovery.types(op.tenant, tm, details=P.bool_param(details, "details"))
    )


@router.get(
    "/types/{type_name:path}",
    summary="Details of an entity type (clause 6.26.3.1)",
    responses=ANSWERS,
)
async def entity_type_info(type_name: P.TypePath, op: OperationDep) -> Response:
    discovery = op.hub.discovery
    return await _answer(
        op, lambda tm: discovery.type_info(op.tenant, tm, check_name(type_name, "entity type"))
    )


@router.get(
    "/attributes", summary="Retrieve available attributes (clause 6.27.3.1)", responses=ANSWERS
)
async def attributes(op: OperationDep, details: P.Details = None) -> Response:
    discovery = op.hub.discovery
    return await _answer(
        op,
        lambda tm: discovery.attributes(op.tenant, tm, details=P.bool_param(details, "details")),
    )


@router.get(
    "/attributes/{attr:path}",
    summary="Details of an attribute (clause 6.28.3.1)",
    responses=ANSWERS,
)
async def attribute_info(attr: P.AttrPath, op: OperationDep) -> Response:
    discovery = op.hub.discovery
    return await _answer(op, lambda tm: discovery.attribute_info(op.tenant, tm, check_name(attr)))
