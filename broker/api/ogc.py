"""``/ogc``: OGC API - Features (Part 1 Core, Part 2 CRS, Part 3 queryables) over the hub.

The routes parse the request, call :class:`broker.core.ogc.OgcService` and render
JSON, GeoJSON or HTML (``f=json|html`` or ``Accept``). Errors are the broker's
ProblemDetails, with the status codes the OGC abstract test suite checks (400 for
unknown or invalid parameters, 404 for unknown collections and features).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from broker.api.common import tenant_of
from broker.api.deps import Hub, HubDep
from broker.core import ogc as O
from broker.errors import BadRequestData

router = APIRouter(prefix="/ogc", tags=["OGC API - Features"])

JSON = "application/json"
GEOJSON = "application/geo+json"
HTML = "text/html"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
SCHEMA = "application/schema+json"
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates" / "ogc"),
    autoescape=select_autoescape(["html"]),
)


def _show(value: Any) -> str:
    """A property value as people read it: text as is, structures as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_templates.filters["show"] = _show


def service(request: Request, hub: Hub) -> O.OgcService:
    """The app's OGC service, built on first use with the hub it serves."""
    svc: O.OgcService | None = getattr(request.app.state, "ogc", None)
    if svc is None or svc.store is not hub.entities.store:
        s = hub.settings
        svc = O.OgcService(
            hub.entities.store,
            hub.entities,
            hub.resolver.core,
            time_properties=s.ogc_time_properties,
            layers_dir=s.ogc_layers_dir,
            cache_ttl=s.ogc_cache_ttl,
        )
        request.app.state.ogc = svc
    return svc


async def _tenant(request: Request) -> str | None:
    """The NGSILD-Tenant header's tenant, or None when the header is absent."""
    if "ngsild-tenant" not in request.headers:
        return None
    return await tenant_of(request)


def _root(request: Request, hub: Hub) -> str:
    return (hub.settings.public_url or str(request.base_url)).rstrip("/")


def _base(request: Request, hub: Hub) -> str:
    return _root(request, hub) + "/ogc"


def _format(request: Request, json_kind: str = JSON) -> str:
    """``f`` wins; otherwise HTML only when the client prefers it (browsers)."""
    f = request.query_params.get("f")
    if f is not None:
        if f in ("json", "geojson"):
            return json_kind
        if f == "html":
            return HTML
        raise BadRequestData(f"f must be json or html, got {f!r}")
    accept = request.headers.get("accept", "")
    for part in accept.split(","):
        kind = part.split(";")[0].strip().lower()
        if kind == HTML:
            return HTML
        if kind in (JSON, GEOJSON, SCHEMA, OPENAPI.split(";")[0], "*/*", "application/*"):
            return json_kind
    return json_kind


def _link(href: str, rel: str, kind: str, title: str | None = None) -> dict[str, str]:
    link = {"href": href, "rel": rel, "type": kind}
    if title:
        link["title"] = title
    return link


def _self_links(href: str, kind: str, json_kind: str = JSON) -> list[dict[str, str]]:
    sep = "&" if "?" in href else "?"
    this, other = (kind, HTML) if kind != HTML else (HTML, json_kind)
    return [
        _link(f"{href}{sep}f={'html' if this == HTML else 'json'}", "self", this, "this document"),
        _link(
            f"{href}{sep}f={'html' if other == HTML else 'json'}",
            "alternate",
            other,
            "this document as HTML" if other == HTML else "this document as JSON",
        ),
    ]


def _json(body: Any, kind: str = JSON, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type=kind, headers=headers)


def _html(template: str, **values: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(template).render(**values))


def _cid(cid: str) -> str:
    return quote(cid, safe="~")


# -- landing page, conformance, API definition ----------------------------------------------


@router.get("")
async def landing(request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    kind = _format(request)
    base = _base(request, hub)
    body = {
        "title": "Renkei OGC API - Features",
        "description": "The hub's NGSI-LD entities as GIS layers: one collection per entity "
        "type per tenant, plus published layers. / ハブのエンティティを GIS レイヤーとして提供します。",
        "links": [
            *_self_links(base, kind),
            _link(f"{base}/api", "service-desc", OPENAPI, "the API definition (OpenAPI 3.0)"),
            _link(f"{base}/api?f=html", "service-doc", HTML, "the API documentation"),
            _link(f"{base}/conformance", "conformance", JSON, "conformance classes"),
            _link(f"{base}/collections", "data", JSON, "collections"),
            _link(_root(request, hub) + "/viewer", "related", HTML, "map viewer / 地図"),
        ],
    }
    if kind == HTML:
        return _html("landing.html", doc=body, base=base)
    return _json(body)


@router.get("/conformance")
async def conformance(request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    body = {"conformsTo": list(O.CONFORMANCE)}
    if _format(request) == HTML:
        return _html("conformance.html", doc=body, base=_base(request, hub))
    return _json(body)


@router.get("/api")
async def api_definition(request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    svc = service(request, hub)
    collections = await svc.collections(await _tenant(request))
    doc = openapi(_base(request, hub), [c.id for c in collections], hub.settings.max_limit)
    if _format(request, OPENAPI) == HTML:
        return _html("api.html", doc=doc, base=_base(request, hub))
    return _json(doc, OPENAPI)


# -- collections ----------------------------------------------------------------------------


async def _collection_doc(
    svc: O.OgcService, col: O.Collection, base: str, kind: str
) -> dict[str, Any]:
    info = await svc.info(col)
    href = f"{base}/collections/{_cid(col.id)}"
    extent: dict[str, Any] = {
        "spatial": {"bbox": [info.bbox or [-180.0, -90.0, 180.0, 90.0]], "crs": O.CRS84}
    }
    if info.interval is not None:
        extent["temporal"] = {"interval": [info.interval], "trs": O.GREGORIAN}
    return {
        "id": col.id,
        "title": col.title,
        "description": col.description,
        "itemType": "feature",
        "crs": list(O.SUPPORTED_CRS),
        "storageCrs": O.CRS84,
        "extent": extent,
        "links": [
            *_self_links(href, kind),
            _link(f"{href}/items?f=json", "items", GEOJSON, "features as GeoJSON"),
            _link(f"{href}/items?f=html", "items", HTML, "features as HTML"),
            _link(f"{href}/queryables", QUERYABLES_REL, SCHEMA, "queryable properties"),
        ],
    }


@router.get("/collections")
async def collections(request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    kind = _format(request)
    svc = service(request, hub)
    base = _base(request, hub)
    found = await svc.collections(await _tenant(request))
    body = {
        "links": _self_links(f"{base}/collections", kind),
        "collections": [await _collection_doc(svc, c, base, kind) for c in found],
        "crs": list(O.SUPPORTED_CRS),
    }
    if kind == HTML:
        return _html("collections.html", doc=body, base=base)
    return _json(body)


@router.api_route("/collections/{collection_id}", methods=["GET", "HEAD"])
async def collection(collection_id: str, request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    kind = _format(request)
    svc = service(request, hub)
    base = _base(request, hub)
    col = await svc.collection(collection_id, await _tenant(request))
    body = await _collection_doc(svc, col, base, kind)
    queryables = f"{base}/collections/{_cid(col.id)}/queryables"
    headers = {"Link": f'<{queryables}>; rel="{QUERYABLES_REL}"; type="{SCHEMA}"'}
    if kind == HTML:
        response: Response = _html("collection.html", doc=body, base=base)
        response.headers.update(headers)
        return response
    return _json(body, headers=headers)


@router.get("/collections/{collection_id}/queryables")
async def queryables(collection_id: str, request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, {"f"})
    svc = service(request, hub)
    base = _base(request, hub)
    col = await svc.collection(collection_id, await _tenant(request))
    info = await svc.info(col)
    href = f"{base}/collections/{_cid(col.id)}/queryables"
    body = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": href,
        "type": "object",
        "title": col.title,
        "properties": {name: {"type": t} for name, t in sorted(info.properties.items())},
        "additionalProperties": False,
    }
    if _format(request, SCHEMA) == HTML:
        return _html("queryables.html", doc=body, base=base, col=col)
    return _json(body, SCHEMA)


# -- features -------------------------------------------------------------------------------


def _url(href: str, params: dict[str, str]) -> str:
    return f"{href}?{urlencode(params)}" if params else href


@router.get("/collections/{collection_id}/items")
async def items(collection_id: str, request: Request, hub: HubDep) -> Response:
    svc = service(request, hub)
    base = _base(request, hub)
    col = await svc.collection(collection_id, await _tenant(request))
    params = dict(request.query_params)
    properties: list[str] = []
    if set(params) - O.ITEMS_PARAMS:  # property filters: names from the data
        properties = list((await svc.info(col)).properties)
    s = hub.settings
    req = O.parse_items(
        params, properties, default_limit=s.ogc_default_limit, max_limit=s.max_limit
    )
    kind = _format(request, GEOJSON)
    page = await svc.items(col, req)
    href = f"{base}/collections/{_cid(col.id)}/items"
    keep = {k: v for k, v in params.items() if k not in ("f", "offset")}
    json_f = {**keep, "f": "json"}
    html_f = {**keep, "f": "html"}
    this, other = (html_f, json_f) if kind == HTML else (json_f, html_f)
    off = {"offset": str(req.offset)} if req.offset else {}
    links = [
        _link(_url(href, {**this, **off}), "self", kind, "this page"),
        _link(
            _url(href, {**other, **off}),
            "alternate",
            HTML if kind != HTML else GEOJSON,
            "GeoJSON" if kind == HTML else "HTML",
        ),
        _link(f"{base}/collections/{_cid(col.id)}", "collection", JSON, col.title),
    ]
    if req.offset + len(page.features) < page.matched and page.features:
        nxt = {**this, "offset": str(req.offset + req.limit)}
        links.append(_link(_url(href, nxt), "next", kind, "next page"))
    if req.offset > 0:
        prev = {**this, "offset": str(max(0, req.offset - req.limit))}
        links.append(_link(_url(href, prev), "prev", kind, "previous page"))
    body = {
        "type": "FeatureCollection",
        "features": page.features,
        "numberMatched": page.matched,
        "numberReturned": len(page.features),
        "timeStamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "links": links,
    }
    headers = {"Content-Crs": f"<{req.crs}>"}
    if kind == HTML:
        response: Response = _html(
            "items.html",
            doc=body,
            base=base,
            col=col,
            offset=req.offset,
            viewer=_root(request, hub) + "/viewer",
        )
        response.headers.update(headers)
        return response
    return _json(body, GEOJSON, headers)


@router.get("/collections/{collection_id}/items/{feature_id:path}")
async def feature(collection_id: str, feature_id: str, request: Request, hub: HubDep) -> Response:
    O.check_params(request.query_params, O.FEATURE_PARAMS)
    svc = service(request, hub)
    base = _base(request, hub)
    col = await svc.collection(collection_id, await _tenant(request))
    crs = O.parse_crs(request.query_params.get("crs"))
    kind = _format(request, GEOJSON)
    feat = await svc.feature(col, feature_id, crs, request.query_params.get("lang") or None)
    href = f"{base}/collections/{_cid(col.id)}/items/{quote(feature_id, safe=':')}"
    feat["links"] = [
        *_self_links(href, kind, GEOJSON),
        _link(f"{base}/collections/{_cid(col.id)}", "collection", JSON, col.title),
    ]
    headers = {"Content-Crs": f"<{crs}>"}
    if kind == HTML:
        response: Response = _html("feature.html", doc=feat, base=base, col=col)
        response.headers.update(headers)
        return response
    return _json(feat, GEOJSON, headers)


# -- the API definition ---------------------------------------------------------------------


def _param(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
        "style": "form",
        "explode": False,
        **extra,
    }


def _response(description: str, *kinds: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {k: {"schema": {"type": "object"}} for k in kinds},
    }


def openapi(base: str, collection_ids: list[str], max_limit: int) -> dict[str, Any]:
    """The OpenAPI 3.0 definition of ``/ogc``, with one items path per collection."""
    crs_schema = {"type": "string", "format": "uri", "enum": list(O.SUPPORTED_CRS)}
    params = {
        "f": {
            "name": "f",
            "in": "query",
            "required": False,
            "description": "Response format / 出力形式",
            "schema": {"type": "string", "enum": ["json", "html"]},
            "style": "form",
            "explode": False,
        },
        "bbox": _param(
            "bbox",
            {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}},
            "Only features whose geometry intersects the box (minx,miny,maxx,maxy in bbox-crs)",
        ),
        "bbox-crs": _param("bbox-crs", crs_schema, "CRS of bbox (default CRS84)"),
        "crs": _param("crs", crs_schema, "CRS of the returned geometries (default CRS84)"),
        "datetime": _param(
            "datetime",
            {"type": "string"},
            "An instant or interval (start/end, '..' for open) matched against observedAt "
            "or the type's configured time property",
        ),
        "limit": _param(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": max_limit, "default": 10},
            "Maximum number of features in a page",
        ),
        "offset": _param("offset", {"type": "integer", "minimum": 0}, "Features to skip"),
        "lang": _param("lang", {"type": "string"}, "Language of LanguageProperty values (ja, en)"),
        "collectionId": {
            "name": "collectionId",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        },
        "featureId": {
            "name": "featureId",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        },
    }

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/parameters/{name}"}

    errors = {
        "400": {"description": "Invalid or unknown query parameter"},
        "404": {"description": "No such collection or feature"},
    }
    items_params = [
        ref(n) for n in ("f", "bbox", "bbox-crs", "crs", "datetime", "limit", "offset", "lang")
    ]
    paths: dict[str, Any] = {
        "/": {
            "get": _op("landing", "Landing page", [ref("f")], _response("Landing page", JSON, HTML))
        },
        "/conformance": {
            "get": _op(
                "conformance",
                "Conformance classes",
                [ref("f")],
                _response("Conformance", JSON, HTML),
            )
        },
        "/api": {
            "get": _op("api", "This API definition", [ref("f")], _response("OpenAPI", OPENAPI))
        },
        "/collections": {
            "get": _op(
                "collections", "Collections", [ref("f")], _response("Collections", JSON, HTML)
            )
        },
        "/collections/{collectionId}": {
            "get": _op(
                "collection",
                "A collection",
                [ref("collectionId"), ref("f")],
                _response("Collection", JSON, HTML),
                errors,
            )
        },
        "/collections/{collectionId}/queryables": {
            "get": _op(
                "queryables",
                "Queryable properties",
                [ref("collectionId"), ref("f")],
                _response("JSON schema", SCHEMA),
                errors,
            )
        },
        "/collections/{collectionId}/items": {
            "get": _op(
                "items",
                "Features of a collection",
                [ref("collectionId"), *items_params],
                _response("Features", GEOJSON, HTML),
                errors,
            )
        },
        "/collections/{collectionId}/items/{featureId}": {
            "get": _op(
                "feature",
                "One feature",
                [ref("collectionId"), ref("featureId"), ref("f"), ref("crs"), ref("lang")],
                _response("Feature", GEOJSON, HTML),
                errors,
            )
        },
    }
    for cid in collection_ids:
        paths[f"/collections/{cid}/items"] = {
            "get": _op(
                f"items-{cid}",
                f"Features of {cid}",
                items_params,
                _response("Features", GEOJSON, HTML),
                errors,
            )
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Renkei OGC API - Features",
            "version": "1.0.0",
            "description": "NGSI-LD entities of the Renkei hub as OGC API - Features collections.",
            "license": {"name": "Apache-2.0"},
        },
        "servers": [{"url": base}],
        "paths": paths,
        "components": {"parameters": params},
    }


def _op(
    op_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    ok: dict[str, Any],
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "parameters": parameters,
        "responses": {"200": ok, **(errors or {})},
    }
