"""``/v2/entities``: list, create, retrieve, delete; attributes and attribute values.

Orion's ``orion-api.md`` ("Entities Operations", "Attributes", "Attribute Value").
Routes parse and check the request, call one ``V2Service`` method and render; the
entity query is built by :func:`entity_query` (shared with ``POST /v2/op/query``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Header, Query
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, negotiate
from broker.api.v2.common import (
    TEXT,
    CallDep,
    PathsDep,
    ServiceDep,
    V2Dep,
    V2Route,
    csv,
    json_body,
    no_content,
    ok,
    options_of,
    render_mode,
)
from broker.core.v2entities import Target, V2Service
from broker.core.v2map import check_attr_name, check_id, scope_query_text
from broker.errors import BadRequestData, NotAcceptable
from broker.model.entity import Entity
from broker.model.query import AttrPath
from broker.model.store import EntityQuery, Selector
from broker.query import parse_scope_q
from broker.query.patterns import check_pattern
from broker.query.v2q import parse_v2_geo, parse_v2_q

router = APIRouter(prefix="/v2", route_class=V2Route, tags=["NGSI v2"])

MAX_LIMIT = 1000
LIST_OPTIONS = frozenset({"count", "normalized", "keyValues", "values", "unique", "skipForwarding"})
GET_OPTIONS = frozenset({"normalized", "keyValues", "values", "unique", "skipForwarding"})
CREATE_OPTIONS = frozenset({"normalized", "keyValues", "upsert"})
ATTRS_OPTIONS = frozenset({"normalized", "keyValues", "append", "overrideMetadata", "forcedUpdate"})

TypeParam = Annotated[str | None, Query(description="entity type, to tell entities apart")]
AttrsParam = Annotated[str | None, Query(description="attributes to render, comma-separated")]
MetadataParam = Annotated[str | None, Query(description="metadata to render, comma-separated")]


def paging(limit: str | None, offset: str | None) -> tuple[int, int]:
    try:
        limit_n = 20 if limit is None else int(limit)
        offset_n = 0 if offset is None else int(offset)
    except ValueError:
        raise BadRequestData("Bad pagination limit or offset: not a number") from None
    if limit_n <= 0 or limit_n > MAX_LIMIT:
        raise BadRequestData(f"Bad pagination limit: /{limit_n}/ [a value from 1 to {MAX_LIMIT}]")
    if offset_n < 0:
        raise BadRequestData("Bad pagination offset: must be 0 or more")
    return limit_n, offset_n


def _order_by(text: str | None, svc: V2Service) -> list[tuple[Any, bool]] | None:
    """``orderBy=temperature,!name``: ``!`` is descending; id, type, dateCreated,
    dateModified or an attribute."""
    if text is None:
        return None
    keys: list[tuple[Any, bool]] = []
    for part in (p.strip() for p in text.split(",")):
        desc = part.startswith("!")
        name = part[1:] if desc else part
        if name == "geo:distance":
            raise BadRequestData("orderBy=geo:distance is not supported")
        builtin = {
            "id": "id",
            "type": "type",
            "dateCreated": "createdAt",
            "dateModified": "modifiedAt",
        }
        if name in builtin:
            keys.append((builtin[name], desc))
        else:
            keys.append((AttrPath(svc.mapper.expand(check_attr_name(name))), desc))
    return keys


async def _types(
    svc: V2Service, tenant: str, type_: str | None, type_pattern: str | None
) -> list[list[str]] | None:
    """Type alternatives: ``type`` (comma-separated) or those matching ``typePattern``."""
    if type_ is not None and type_pattern is not None:
        raise BadRequestData("type and typePattern cannot be used at the same time")
    if type_ is not None:
        return [[svc.mapper.expand(check_id(t, "entity type"))] for t in type_.split(",")]
    if type_pattern is not None:
        return [[t] for t in await svc.types_matching(tenant, type_pattern)]
    return None


async def entity_query(
    svc: V2Service,
    tenant: str,
    paths: list[str] | None,
    *,
    ids: list[str] | None = None,
    id_pattern: str | None = None,
    type_: str | None = None,
    type_pattern: str | None = None,
    selectors: list[Selector] | None = None,
    q: str | None = None,
    mq: str | None = None,
    georel: str | None = None,
    geometry: str | None = None,
    coords: str | None = None,
    order_by: str | None = None,
    limit: str | None = None,
    offset: str | None = None,
    count: bool = False,
) -> EntityQuery | None:
    """The EntityQuery of a v2 query; None when it can match nothing (no type matches
    ``typePattern``)."""
    if ids is not None and id_pattern is not None:
        raise BadRequestData("id and idPattern cannot be used at the same time")
    for eid in ids or ():
        check_id(eid)
    if id_pattern is not None:
        check_pattern(id_pattern)
    types = await _types(svc, tenant, type_, type_pattern)
    if types == []:
        return None
    limit_n, offset_n = paging(limit, offset)
    return EntityQuery(
        ids=ids,
        id_pattern=id_pattern,
        types=types,
        q=parse_v2_q(q, mq, svc.mapper.expand),
        geo=parse_v2_geo(georel, geometry, coords, svc.mapper.expand("location")),
        scope_q=parse_scope_q(scope_query_text(paths)) if paths else None,
        selectors=selectors,
        order_by=_order_by(order_by, svc),
        limit=limit_n,
        offset=offset_n,
        count=count,
    )


async def query_response(
    svc: V2Service,
    tenant: str,
    query: EntityQuery | None,
    *,
    attrs: list[str] | None,
    metadata: list[str] | None,
    mode: str,
    count: bool,
) -> Response:
    entities: list[Entity] = []
    total: int | None = 0
    if query is not None:
        entities, total = await svc.query(tenant, query)
    body = [svc.mapper.entity_out(e, attrs=attrs, metadata=metadata, mode=mode) for e in entities]
    headers = {"Fiware-Total-Count": str(total or 0)} if count else None
    return ok(body, headers=headers)


class ListParams(P.Group):
    """``GET /v2/entities``."""

    id: Annotated[str | None, Field(description="entity ids, comma-separated")] = None
    type: Annotated[str | None, Field(description="entity types, comma-separated")] = None
    idPattern: Annotated[str | None, Field(description="regular expression on ids")] = None
    typePattern: Annotated[str | None, Field(description="regular expression on types")] = None
    q: Annotated[str | None, Field(description="Simple Query Language on attribute values")] = None
    mq: Annotated[str | None, Field(description="Simple Query Language on metadata")] = None
    georel: Annotated[str | None, Field(description="near;maxDistance:N, coveredBy, ...")] = None
    geometry: Annotated[str | None, Field(description="point, line, polygon or box")] = None
    coords: Annotated[str | None, Field(description="lat,lon;lat,lon;...")] = None
    attrs: Annotated[str | None, Field(description="attributes to render, comma-separated")] = None
    metadata: Annotated[str | None, Field(description="metadata to render, comma-separated")] = None
    orderBy: Annotated[str | None, Field(description="attr,!attr (! = descending)")] = None
    limit: Annotated[str | None, Field(description="1 to 1000, default 20")] = None
    offset: Annotated[str | None, Field(description="entities to skip")] = None
    options: Annotated[str | None, Field(description="count, keyValues, values, unique")] = None


class RetrieveParams(P.Group):
    """``GET /v2/entities/{id}``."""

    type: Annotated[str | None, Field(description="entity type, to tell entities apart")] = None
    attrs: Annotated[str | None, Field(description="attributes to render, comma-separated")] = None
    metadata: Annotated[str | None, Field(description="metadata to render, comma-separated")] = None
    options: Annotated[str | None, Field(description="keyValues, values, unique")] = None


class CreateParams(P.Group):
    """``POST /v2/entities``."""

    options: Annotated[str | None, Field(description="keyValues, upsert")] = None


@router.get("/entities", summary="List entities")
async def list_entities(
    request: Request,
    call: CallDep,
    params: Annotated[ListParams, P.group(ListParams)],
) -> Response:
    negotiate(request, (JSON,))
    p = params
    opts = options_of(p.options, LIST_OPTIONS)
    svc, tenant = call.svc, call.tenant
    query = await entity_query(
        svc,
        tenant,
        call.paths,
        ids=csv(p.id),
        id_pattern=p.idPattern,
        type_=p.type,
        type_pattern=p.typePattern,
        q=p.q,
        mq=p.mq,
        georel=p.georel,
        geometry=p.geometry,
        coords=p.coords,
        order_by=p.orderBy,
        limit=p.limit,
        offset=p.offset,
        count="count" in opts,
    )
    return await query_response(
        svc,
        tenant,
        query,
        attrs=csv(p.attrs),
        metadata=csv(p.metadata),
        mode=render_mode(opts),
        count="count" in opts,
    )


@router.post("/entities", summary="Create entity", status_code=201)
async def create_entity(
    request: Request,
    call: CallDep,
    params: Annotated[CreateParams, P.group(CreateParams)],
) -> Response:
    opts = options_of(params.options, CREATE_OPTIONS)
    body = await json_body(request)
    created = await call.svc.create(
        call.tenant, body, call.scope, key_values="keyValues" in opts, upsert="upsert" in opts
    )
    etype = body.get("type", "Thing")
    location = {
        "Location": f"/v2/entities/{quote(body['id'], safe=':')}?type={quote(etype, safe=':')}"
    }
    if created:
        return Response(status_code=201, headers=location)
    return no_content(location)


def _target(entity_id: str, type_: str | None, paths: list[str] | None) -> Target:
    return Target(
        check_id(entity_id), None if type_ is None else check_id(type_, "entity type"), paths
    )


@router.get("/entities/{entity_id}", summary="Retrieve entity")
async def retrieve_entity(
    entity_id: str,
    request: Request,
    call: CallDep,
    params: Annotated[RetrieveParams, P.group(RetrieveParams)],
) -> Response:
    negotiate(request, (JSON,))
    p = params
    opts = options_of(p.options, GET_OPTIONS)
    svc = call.svc
    ent = await svc.get(call.tenant, _target(entity_id, p.type, call.paths))
    return ok(
        svc.mapper.entity_out(
            ent, attrs=csv(p.attrs), metadata=csv(p.metadata), mode=render_mode(opts)
        )
    )


@router.delete("/entities/{entity_id}", summary="Remove entity", status_code=204)
async def delete_entity(
    entity_id: str, svc: V2Dep, tenant: ServiceDep, paths: PathsDep, type: TypeParam = None
) -> Response:
    await svc.delete(tenant, _target(entity_id, type, paths))
    return no_content()


@router.get("/entities/{entity_id}/attrs", summary="Retrieve entity attributes")
async def retrieve_attrs(
    entity_id: str,
    request: Request,
    svc: V2Dep,
    tenant: ServiceDep,
    paths: PathsDep,
    type: TypeParam = None,
    attrs: AttrsParam = None,
    metadata: MetadataParam = None,
    options: Annotated[str | None, Query(description="keyValues, values, unique")] = None,
) -> Response:
    negotiate(request, (JSON,))
    opts = options_of(options, GET_OPTIONS)
    ent = await svc.get(tenant, _target(entity_id, type, paths))
    out = svc.mapper.entity_out(
        ent, attrs=csv(attrs), metadata=csv(metadata), mode=render_mode(opts)
    )
    if isinstance(out, dict):
        out.pop("id", None)
        out.pop("type", None)
    return ok(out)


AttrOptions = Annotated[str | None, Query(description="append, keyValues, overrideMetadata")]


class AttrsChange:
    """What POST, PATCH and PUT ``/v2/entities/{id}/attrs`` take besides the id: one
    write (``V2Service.change_attrs``) in three modes."""

    def __init__(
        self,
        svc: V2Dep,
        tenant: ServiceDep,
        paths: PathsDep,
        type: TypeParam = None,
        options: AttrOptions = None,
    ) -> None:
        self.svc, self.tenant, self.paths = svc, tenant, paths
        self.type, self.options = type, options

    async def run(
        self, request: Request, entity_id: str, mode: Literal["append", "update", "replace"]
    ) -> Response:
        target = _target(entity_id, self.type, self.paths)
        opts = options_of(self.options, ATTRS_OPTIONS)
        body = await json_body(request)
        await self.svc.change_attrs(
            self.tenant,
            target,
            body,
            mode="strict" if mode == "append" and "append" in opts else mode,
            key_values="keyValues" in opts,
            override="overrideMetadata" in opts,
        )
        return no_content()


AttrsChangeDep = Annotated[AttrsChange, Depends()]


@router.post(
    "/entities/{entity_id}/attrs", summary="Update or append entity attributes", status_code=204
)
async def append_attrs(entity_id: str, request: Request, change: AttrsChangeDep) -> Response:
    return await change.run(request, entity_id, "append")


@router.patch(
    "/entities/{entity_id}/attrs", summary="Update existing entity attributes", status_code=204
)
async def update_attrs(entity_id: str, request: Request, change: AttrsChangeDep) -> Response:
    return await change.run(request, entity_id, "update")


@router.put("/entities/{entity_id}/attrs", summary="Replace all entity attributes", status_code=204)
async def replace_attrs(entity_id: str, request: Request, change: AttrsChangeDep) -> Response:
    return await change.run(request, entity_id, "replace")


class OneAttr:
    """An attribute of one entity, as ``/v2/entities/{id}/attrs/{attrName}[/value]``
    names it (``type`` tells entities with the same id apart)."""

    def __init__(
        self,
        entity_id: str,
        attr_name: str,
        svc: V2Dep,
        tenant: ServiceDep,
        paths: PathsDep,
        type: TypeParam = None,
    ) -> None:
        self.entity_id, self.name = entity_id, attr_name
        self.svc, self.tenant, self.paths, self.type = svc, tenant, paths, type

    def target(self) -> Target:
        """The entity, its id and type checked (after the body is read, as before)."""
        return _target(self.entity_id, self.type, self.paths)


AttrDep = Annotated[OneAttr, Depends()]


@router.get("/entities/{entity_id}/attrs/{attr_name}", summary="Get attribute data")
async def get_attr(
    entity_id: str,
    attr_name: str,
    request: Request,
    svc: V2Dep,
    tenant: ServiceDep,
    paths: PathsDep,
    type: TypeParam = None,
    metadata: MetadataParam = None,
) -> Response:
    negotiate(request, (JSON,))
    inst = await svc.get_attr(tenant, _target(entity_id, type, paths), attr_name)
    return ok(svc.mapper.attribute_out(inst, csv(metadata)))


@router.put(
    "/entities/{entity_id}/attrs/{attr_name}", summary="Update attribute data", status_code=204
)
async def put_attr(request: Request, attr: AttrDep) -> Response:
    body = await json_body(request)
    await attr.svc.put_attr(attr.tenant, attr.target(), attr.name, body)
    return no_content()


@router.delete(
    "/entities/{entity_id}/attrs/{attr_name}", summary="Remove a single attribute", status_code=204
)
async def delete_attr(attr: AttrDep) -> Response:
    await attr.svc.delete_attr(attr.tenant, attr.target(), attr.name)
    return no_content()


def _accepts(request: Request) -> list[str]:
    """Accepted media types among JSON and text, in the client's order."""
    header = request.headers.get("accept") or "*/*"
    out: list[str] = []
    for part in header.split(","):
        kind = part.split(";")[0].strip().lower()
        for offer in (JSON, TEXT) if kind in ("*/*", "application/*", "text/*") else (kind,):
            if kind == "text/*" and offer != TEXT:
                continue
            if kind == "application/*" and offer != JSON:
                continue
            if offer in (JSON, TEXT) and offer not in out:
                out.append(offer)
    return out


@router.get(
    "/entities/{entity_id}/attrs/{attr_name}/value",
    summary="Get attribute value",
    responses={200: {"content": {JSON: {}, TEXT: {}}}},
)
async def get_value(request: Request, attr: AttrDep) -> Response:
    inst = await attr.svc.get_attr(attr.tenant, attr.target(), attr.name)
    _, value = attr.svc.mapper.value_out(inst)
    accepted = _accepts(request)
    if isinstance(value, dict | list):
        if not accepted:
            raise NotAcceptable("accepted MIME types: application/json, text/plain")
        return Response(orjson.dumps(value), media_type=accepted[0])
    if TEXT not in accepted:
        raise NotAcceptable("accepted MIME types: text/plain")
    return Response(orjson.dumps(value), media_type=TEXT)


def text_value(text: str) -> Any:
    """A ``text/plain`` attribute value: "quoted" is a string, true/false, null, a number."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    try:
        number = float(text)
    except ValueError:
        raise BadRequestData(
            f'attribute value {text!r} is not a number, boolean, null or "string"'
        ) from None
    if not math.isfinite(number):
        raise BadRequestData(f"attribute value {text!r} is out of range")
    return (
        int(number)
        if number.is_integer() and "." not in text and "e" not in text.lower()
        else number
    )


@router.put(
    "/entities/{entity_id}/attrs/{attr_name}/value",
    summary="Update attribute value",
    status_code=204,
    openapi_extra={
        "requestBody": {"content": {JSON: {"schema": {}}, TEXT: {"schema": {"type": "string"}}}}
    },
)
async def put_value(
    request: Request,
    attr: AttrDep,
    content_type: Annotated[
        str | None, Header(description="application/json or text/plain")
    ] = None,
) -> Response:
    body = await json_body(request, allow_text=True)
    if (content_type or "").split(";")[0].strip().lower() == TEXT:
        value = text_value(body)
    else:
        if not isinstance(body, dict | list):
            raise BadRequestData(
                "a JSON value must be an object or an array; use text/plain for others"
            )
        value = body
    await attr.svc.put_attr(attr.tenant, attr.target(), attr.name, value, value_only=True)
    return no_content()
