"""``POST /v2/op/update``, ``POST /v2/op/query`` and ``POST /v2/op/notify``
(``orion-api.md``, "Batch Operations")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from broker.api.common import JSON, negotiate
from broker.api.v2.common import (
    PathsDep,
    ScopeDep,
    ServiceDep,
    V2Dep,
    V2Route,
    json_body,
    no_content,
    options_of,
    render_mode,
)
from broker.api.v2.entities import entity_query, query_response
from broker.core.v2map import check_id
from broker.errors import BadRequestData, NgsiLdError
from broker.model.store import Selector
from broker.query.patterns import check_pattern

router = APIRouter(prefix="/v2/op", route_class=V2Route, tags=["NGSI v2"])


@router.post("/update", summary="Update (batch)", status_code=204)
async def batch_update(
    request: Request,
    svc: V2Dep,
    tenant: ServiceDep,
    scope: ScopeDep,
    paths: PathsDep,
    options: Annotated[str | None, Query(description="keyValues, overrideMetadata")] = None,
) -> Response:
    opts = options_of(
        options, frozenset({"normalized", "keyValues", "overrideMetadata", "forcedUpdate"})
    )
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequestData("the request must be a JSON object")
    unknown = set(body) - {"actionType", "entities"}
    if unknown:
        raise BadRequestData(f"unrecognized field in JSON payload: {', '.join(sorted(unknown))}")
    entities = body.get("entities")
    if not isinstance(entities, list):
        raise BadRequestData("entities must be a JSON array")
    action = body.get("actionType")
    if not isinstance(action, str):
        raise BadRequestData("actionType is missing")
    outcome = await svc.update_batch(
        tenant,
        action,
        entities,
        scope,
        paths if paths is not None and scope is not None else None,
        key_values="keyValues" in opts,
        override="overrideMetadata" in opts,
    )
    if outcome.errors:
        first: NgsiLdError = outcome.errors[0][1]
        ids = ", ".join(eid for eid, _ in outcome.errors)
        first.detail = f"{first.detail or first.title} ({ids})"
        raise first
    return no_content()


@router.post("/notify", summary="Notify (apply a notification as an update)")
async def notify(
    request: Request,
    svc: V2Dep,
    tenant: ServiceDep,
    scope: ScopeDep,
    paths: PathsDep,
    options: Annotated[str | None, Query(description="not offered: keyValues")] = None,
) -> Response:
    """A notification payload (``{"subscriptionId", "data": [entities]}``), applied as
    ``POST /v2/op/update`` with ``append``: how one broker subscribed to another keeps
    its copy (``orion-api.md``, "Notify operation"). ``keyValues`` is refused, as Orion
    does."""
    opts = options_of(options, frozenset({"normalized", "keyValues"}))
    if "keyValues" in opts:
        raise BadRequestData("keyValues is not supported in POST /v2/op/notify")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequestData("the notification must be a JSON object")
    unknown = set(body) - {"subscriptionId", "data"}
    if unknown:
        raise BadRequestData(f"unrecognized field in JSON payload: {', '.join(sorted(unknown))}")
    if not isinstance(body.get("subscriptionId"), str):
        raise BadRequestData("subscriptionId is missing")
    data = body.get("data")
    if not isinstance(data, list):
        raise BadRequestData("data must be a JSON array of entities")
    outcome = await svc.update_batch(
        tenant,
        "append",
        data,
        scope,
        paths if paths is not None and scope is not None else None,
    )
    if outcome.errors:
        first: NgsiLdError = outcome.errors[0][1]
        ids = ", ".join(eid for eid, _ in outcome.errors)
        first.detail = f"{first.detail or first.title} ({ids})"
        raise first
    return Response(status_code=200)


def _selectors(svc_types: dict[str, list[list[str]]], items: Any) -> list[Selector]:
    out = []
    for item in items:
        out.append(
            Selector(
                ids=[item["id"]] if "id" in item else None,
                id_pattern=item.get("idPattern"),
                types=svc_types.get(item.get("type") or item.get("typePattern") or ""),
            )
        )
    return out


@router.post("/query", summary="Query (batch)")
async def batch_query(
    request: Request,
    svc: V2Dep,
    tenant: ServiceDep,
    paths: PathsDep,
    limit: Annotated[str | None, Query()] = None,
    offset: Annotated[str | None, Query()] = None,
    orderBy: Annotated[str | None, Query()] = None,
    options: Annotated[str | None, Query(description="count, keyValues, values, unique")] = None,
) -> Response:
    negotiate(request, (JSON,))
    opts = options_of(
        options,
        frozenset({"count", "normalized", "keyValues", "values", "unique", "skipForwarding"}),
    )
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequestData("the request must be a JSON object")
    unknown = set(body) - {"entities", "attrs", "expression", "metadata"}
    if unknown:
        raise BadRequestData(f"unrecognized field in JSON payload: {', '.join(sorted(unknown))}")
    items = body.get("entities", [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequestData("entities must be an array of objects")
    selectors: list[Selector] = []
    for item in items:
        if "id" in item and "idPattern" in item:
            raise BadRequestData("id and idPattern cannot be used at the same time")
        if "type" in item and "typePattern" in item:
            raise BadRequestData("type and typePattern cannot be used at the same time")
        if "id" in item:
            check_id(item["id"])
        if "idPattern" in item:
            check_pattern(str(item["idPattern"]))
        types: list[list[str]] | None = None
        if "type" in item:
            types = [[svc.mapper.expand(check_id(item["type"], "entity type"))]]
        elif "typePattern" in item:
            types = [[t] for t in await svc.types_matching(tenant, str(item["typePattern"]))]
            if not types:
                continue  # no type matches: this selector selects nothing
        selectors.append(
            Selector(
                ids=[item["id"]] if "id" in item else None,
                id_pattern=item.get("idPattern"),
                types=types,
            )
        )
    expression = body.get("expression") or {}
    if not isinstance(expression, dict):
        raise BadRequestData("expression must be a JSON object")
    attrs = body.get("attrs")
    metadata = body.get("metadata")
    for listed, what in ((attrs, "attrs"), (metadata, "metadata")):
        if listed is not None and not (
            isinstance(listed, list) and all(isinstance(a, str) for a in listed)
        ):
            raise BadRequestData(f"{what} must be an array of strings")
    query = await entity_query(
        svc,
        tenant,
        paths,
        selectors=selectors if items else None,
        q=expression.get("q"),
        mq=expression.get("mq"),
        georel=expression.get("georel"),
        geometry=expression.get("geometry"),
        coords=expression.get("coords"),
        order_by=orderBy,
        limit=limit,
        offset=offset,
        count="count" in opts,
    )
    if items and not selectors:
        query = None
    return await query_response(
        svc,
        tenant,
        query,
        attrs=attrs,
        metadata=metadata,
        mode=render_mode(opts),
        count="count" in opts,
    )
