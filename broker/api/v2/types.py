"""``/v2/types`` and ``/v2/types/{type}`` (``orion-api.md``, "Types")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from broker.api.v2.common import ServiceDep, V2Dep, V2Route, ok, options_of
from broker.api.v2.entities import paging
from broker.core.v2map import check_id
from broker.errors import ResourceNotFound

router = APIRouter(prefix="/v2", route_class=V2Route, tags=["NGSI v2"])


@router.get("/types", summary="List entity types")
async def list_types(
    svc: V2Dep,
    tenant: ServiceDep,
    limit: Annotated[str | None, Query()] = None,
    offset: Annotated[str | None, Query()] = None,
    options: Annotated[str | None, Query(description="count, values, noAttrDetail")] = None,
) -> Response:
    opts = options_of(options, frozenset({"count", "values", "noAttrDetail"}))
    limit_n, offset_n = paging(limit, offset)
    entries = await svc.types(tenant)
    page = entries[offset_n : offset_n + limit_n]
    headers = {"Fiware-Total-Count": str(len(entries))} if "count" in opts else None
    if "values" in opts:
        return ok([e["type"] for e in page], headers=headers)
    if "noAttrDetail" in opts:
        for e in page:
            e["attrs"] = {a: {} for a in e["attrs"]}
    return ok(page, headers=headers)


@router.get("/types/{entity_type}", summary="Retrieve entity information for a given type")
async def get_type(entity_type: str, svc: V2Dep, tenant: ServiceDep) -> Response:
    check_id(entity_type, "entity type")
    entries = await svc.types(tenant, only=entity_type)
    if not entries:
        raise ResourceNotFound("Entity type not found")
    return ok({"attrs": entries[0]["attrs"], "count": entries[0]["count"]})
