"""``/ogc``: OGC API - Features (Part 1 Core, Part 2 CRS, Part 3 queryables) over the hub.

The routes parse the request, call :class:`broker.core.ogc.OgcService` and render
JSON, GeoJSON or HTML (``f=json|html`` or ``Accept``). Errors are the broker's
ProblemDetails, with the status codes the OGC abstract test suite checks (400 for
unknown or invalid parameters, 404 for unknown collections and features).

Every query parameter is declared on its route, so ``/ogc/api`` (OpenAPI 3.0, the
service description OGC clients read) is generated from the app's own OpenAPI
document: the ``/ogc`` paths, plus one items path per collection that lists the
collection's queryable properties as parameters. GDAL and QGIS read those to send
property filters to the hub instead of filtering every page themselves.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from broker.api.common import tenant_of
from broker.api.deps import Hub, HubDep
from broker.core import ogc as O
from broker.federation.forward import Call
from broker.model.entity import Entity
from broker.model.store import EntityQuery

log = logging.getLogger("renkei.ogc")

PREFIX = "/ogc"
router = APIRouter(prefix=PREFIX, tags=["OGC API - Features"])

JSON = "application/json"
GEOJSON = "application/geo+json"
HTML = "text/html"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
SCHEMA = "application/schema+json"
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"

_templates = Environment(
    loader=FileSystemLoader(FilePath(__file__).resolve().parent.parent / "templates" / "ogc"),
    autoescape=select_autoescape(["html"]),
)


def _show(value: Any) -> str:
    """A property value as people read it: text as is, structures as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_templates.filters["show"] = _show


def _federated(hub: Hub) -> O.QueryFn:
    """Item queries of the hub and of the context sources registered with it."""

    async def query(tenant: str, q: EntityQuery) -> tuple[list[Entity], int | None]:
        core = hub.resolver.core
        found, total, _warned = await hub.distributed.query(tenant, q, core, Call(tenant))
        return found, total

    return query


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
            language=s.ogc_language,
            query=_federated(hub),
            extra_types=hub.distributed.registered_types,
        )
        request.app.state.ogc = svc
    return svc


# -- declared parameters (the API definition is generated from these) -----------------------

CollectionPath = Annotated[str, Path(alias="collectionId")]
FeaturePath = Annotated[str, Path(alias="featureId")]

FormatQ = Annotated[
    Literal["json", "geojson", "html"] | None,
    Query(alias="f", description="Response format / 出力形式 (default: from Accept)"),
]
LangQ = Annotated[
    str | None,
    Query(
        description="Language of LanguageProperty values, e.g. ja or en (Accept-Language "
        "syntax); the other languages follow as name_en-style properties. Default: "
        "RENKEI_OGC_LANGUAGE / 多言語の値を返す言語",
    ),
]
CrsQ = Annotated[
    str | None,
    Query(description="CRS of the returned geometries (default CRS84)"),
]
BboxQ = Annotated[
    str | None,
    Query(
        description="Only features whose geometry intersects the box: minx,miny,maxx,maxy "
        "(or 6 numbers with heights) in bbox-crs",
    ),
]
BboxCrsQ = Annotated[
    str | None,
    Query(alias="bbox-crs", description="CRS of bbox (default CRS84)"),
]
DatetimeQ = Annotated[
    str | None,
    Query(
        alias="datetime",
        description="An instant or interval (start/end, '..' for open) matched against "
        "observedAt or the type's configured time property",
    ),
]
LimitQ = Annotated[
    int | None,
    Query(ge=1, description="Maximum number of features in a page (RENKEI_OGC_DEFAULT_LIMIT)"),
]
OffsetQ = Annotated[int | None, Query(ge=0, description="Features to skip")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid or unknown query parameter"},
    404: {"description": "No such collection or feature"},
}


def _ok(description: str, *kinds: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {k: {} for k in kinds}}}


def _declared(request: Request) -> frozenset[str]:
    """The query parameters the matched route declares (their names on the wire)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return frozenset()
    return frozenset(p.alias for p in route.dependant.query_params)


def _check(request: Request, *extra: str) -> None:
    """400 for a query parameter the route does not declare, as the OGC ATS expects."""
    O.check_params(request.query_params, _declared(request) | set(extra))


async def _tenant(request: Request) -> str | None:
    """The NGSILD-Tenant header's tenant, or None when the header is absent."""
    if "ngsild-tenant" not in request.headers:
        return None
    return await tenant_of(request)


def _root(request: Request, hub: Hub) -> str:
    return (hub.settings.public_url or str(request.base_url)).rstrip("/")


def _base(request: Request, hub: Hub) -> str:
    return _root(request, hub) + PREFIX


def _format(request: Request, f: str | None, json_kind: str = JSON) -> str:
    """``f`` wins; otherwise HTML only when the client prefers it (browsers)."""
    if f is not None:
        return HTML if f == "html" else json_kind
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


def _page(
    kind: str,
    template: str,
    doc: Any,
    base: str,
    *,
    json_kind: str = JSON,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> Response:
    """``doc`` as ``json_kind``, or rendered by ``template`` when ``kind`` is HTML;
    ``headers`` on either."""
    if kind != HTML:
        return _json(doc, json_kind, headers)
    response = HTMLResponse(_templates.get_template(template).render(doc=doc, base=base, **values))
    response.headers.update(headers or {})
    return response


async def _collection(
    request: Request, hub: Hub, collection_id: str
) -> tuple[O.OgcService, str, O.Collection]:
    """The service, the base URL and the collection a path names (404 for none)."""
    svc = service(request, hub)
    return svc, _base(request, hub), await svc.collection(collection_id, await _tenant(request))


def _cid(cid: str) -> str:
    return quote(cid, safe="~")


# -- landing page, conformance, API definition ----------------------------------------------


@router.get("", summary="Landing page", responses={**_ok("Landing page", JSON, HTML), **_ERRORS})
async def landing(request: Request, hub: HubDep, f: FormatQ = None, lang: LangQ = None) -> Response:
    _check(request)
    kind = _format(request, f)
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
    return _page(kind, "landing.html", body, base)


@router.get(
    "/conformance",
    summary="Conformance classes",
    responses={**_ok("Conformance classes", JSON, HTML), **_ERRORS},
)
async def conformance(
    request: Request, hub: HubDep, f: FormatQ = None, lang: LangQ = None
) -> Response:
    _check(request)
    body = {"conformsTo": list(O.CONFORMANCE)}
    return _page(_format(request, f), "conformance.html", body, _base(request, hub))


@router.get(
    "/api",
    summary="This API definition (OpenAPI 3.0)",
    responses={**_ok("The API definition", OPENAPI, HTML), **_ERRORS},
)
async def api_definition(
    request: Request, hub: HubDep, f: FormatQ = None, lang: LangQ = None
) -> Response:
    _check(request)
    svc = service(request, hub)
    tenant = await _tenant(request)
    found = await svc.collections(tenant)
    queryables = {c.id: (await svc.info(c)).properties for c in found}
    s = hub.settings
    doc = api_document(
        request.app.openapi(),
        _base(request, hub),
        queryables,
        default_limit=s.ogc_default_limit,
        max_limit=s.max_limit,
    )
    kind = _format(request, f, OPENAPI)
    return _page(kind, "api.html", doc, _base(request, hub), json_kind=OPENAPI)


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


@router.get(
    "/collections",
    summary="Collections",
    responses={**_ok("Collections", JSON, HTML), **_ERRORS},
)
async def collections(
    request: Request, hub: HubDep, f: FormatQ = None, lang: LangQ = None
) -> Response:
    _check(request)
    kind = _format(request, f)
    svc = service(request, hub)
    base = _base(request, hub)
    found = await svc.collections(await _tenant(request))
    body = {
        "links": _self_links(f"{base}/collections", kind),
        "collections": [await _collection_doc(svc, c, base, kind) for c in found],
        "crs": list(O.SUPPORTED_CRS),
    }
    return _page(kind, "collections.html", body, base)


@router.head("/collections/{collectionId}", include_in_schema=False)
@router.get(
    "/collections/{collectionId}",
    summary="A collection",
    responses={**_ok("Collection", JSON, HTML), **_ERRORS},
)
async def collection(
    collection_id: CollectionPath,
    request: Request,
    hub: HubDep,
    f: FormatQ = None,
    lang: LangQ = None,
) -> Response:
    _check(request)
    kind = _format(request, f)
    svc, base, col = await _collection(request, hub, collection_id)
    body = await _collection_doc(svc, col, base, kind)
    queryables = f"{base}/collections/{_cid(col.id)}/queryables"
    headers = {"Link": f'<{queryables}>; rel="{QUERYABLES_REL}"; type="{SCHEMA}"'}
    return _page(kind, "collection.html", body, base, headers=headers)


@router.get(
    "/collections/{collectionId}/queryables",
    summary="Queryable properties",
    responses={**_ok("JSON schema of the queryable properties", SCHEMA, HTML), **_ERRORS},
)
async def queryables(
    collection_id: CollectionPath,
    request: Request,
    hub: HubDep,
    f: FormatQ = None,
    lang: LangQ = None,
) -> Response:
    _check(request)
    svc, base, col = await _collection(request, hub, collection_id)
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
    kind = _format(request, f, SCHEMA)
    return _page(kind, "queryables.html", body, base, json_kind=SCHEMA, col=col)


# -- features -------------------------------------------------------------------------------


def _url(href: str, params: dict[str, str]) -> str:
    return f"{href}?{urlencode(params)}" if params else href


@router.get(
    "/collections/{collectionId}/items",
    summary="Features of a collection",
    description="Besides the parameters below, every queryable property of the collection "
    "(/collections/{collectionId}/queryables) is an equality filter: ?name=狛江第一小学校.",
    responses={**_ok("Features", GEOJSON, HTML), **_ERRORS},
)
async def items(
    collection_id: CollectionPath,
    request: Request,
    hub: HubDep,
    f: FormatQ = None,
    bbox: BboxQ = None,
    bbox_crs: BboxCrsQ = None,
    crs: CrsQ = None,
    when: DatetimeQ = None,
    limit: LimitQ = None,
    offset: OffsetQ = None,
    lang: LangQ = None,
) -> Response:
    svc, base, col = await _collection(request, hub, collection_id)
    params = dict(request.query_params)
    declared = _declared(request)
    properties: list[str] = []
    if set(params) - declared:  # property filters: names from the data
        properties = list((await svc.info(col)).properties)
    O.check_params(params, declared | set(properties))
    s = hub.settings
    req = O.parse_items(
        params, properties, default_limit=s.ogc_default_limit, max_limit=s.max_limit
    )
    kind = _format(request, f, GEOJSON)
    page = await svc.items(col, req)
    # what the hub filtered itself (RENKEI_LOG_LEVEL=debug): shows a GIS client's
    # filters reach the hub instead of being applied client-side over every page
    log.debug(
        "items %s: filters %s, limit %d, offset %d, matched %d",
        col.id,
        orjson.dumps(req.properties).decode(),
        req.limit,
        req.offset,
        page.matched,
    )
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
    viewer = _root(request, hub) + "/viewer"
    return _page(
        kind,
        "items.html",
        body,
        base,
        json_kind=GEOJSON,
        headers=headers,
        col=col,
        offset=req.offset,
        viewer=viewer,
    )


@router.get(
    "/collections/{collectionId}/items/{featureId:path}",
    summary="One feature",
    responses={**_ok("Feature", GEOJSON, HTML), **_ERRORS},
)
async def feature(
    collection_id: CollectionPath,
    feature_id: FeaturePath,
    request: Request,
    hub: HubDep,
    f: FormatQ = None,
    crs: CrsQ = None,
    lang: LangQ = None,
) -> Response:
    _check(request)
    svc, base, col = await _collection(request, hub, collection_id)
    out_crs = O.parse_crs(crs)
    kind = _format(request, f, GEOJSON)
    feat = await svc.feature(col, feature_id, out_crs, lang)
    href = f"{base}/collections/{_cid(col.id)}/items/{quote(feature_id, safe=':')}"
    feat["links"] = [
        *_self_links(href, kind, GEOJSON),
        _link(f"{base}/collections/{_cid(col.id)}", "collection", JSON, col.title),
    ]
    headers = {"Content-Crs": f"<{out_crs}>"}
    return _page(kind, "feature.html", feat, base, json_kind=GEOJSON, headers=headers, col=col)


# -- the API definition, generated from the routes above -------------------------------------


def _oas30(node: Any) -> Any:
    """OpenAPI 3.1 schemas as 3.0 ones: ``anyOf [X, null]`` becomes ``X``.

    FastAPI writes 3.1; OGC API - Features Part 1 (and GDAL) expect 3.0. Optional
    query parameters are the only 3.1-only construct the ``/ogc`` routes produce.
    """
    if isinstance(node, list):
        return [_oas30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _oas30(v) for k, v in node.items()}
    options = out.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1 and len(kept) < len(options):
            del out["anyOf"]
            out = {**kept[0], **out}
    if "examples" in out and isinstance(out["examples"], list):
        out["example"] = out.pop("examples")[0]
    return out


#: Parameters whose form on the wire the standard fixes but FastAPI cannot declare: the
#: route reads ``bbox`` as one comma-separated string (form style, not exploded), which
#: OGC API - Features Part 1 describes as an array of 4 or 6 numbers.
_WIRE_SCHEMAS: dict[str, dict[str, Any]] = {
    "bbox": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}},
}


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def api_document(
    app_openapi: dict[str, Any],
    base: str,
    queryables: dict[str, dict[str, str]],
    *,
    default_limit: int,
    max_limit: int,
) -> dict[str, Any]:
    """``/ogc/api``: the app's OpenAPI document cut to ``/ogc``, plus per-collection items.

    ``queryables`` maps each collection id to its queryable properties (name -> JSON
    schema type); each gets a ``/collections/{id}/items`` path whose parameters are the
    generic ones plus those properties, which is where OGC clients (GDAL's OAPIF
    driver, QGIS) look for the filters they may send. ``limit`` shows the default and
    maximum the hub actually applies.
    """
    paths: dict[str, Any] = {}
    for path, ops in app_openapi.get("paths", {}).items():
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            continue
        kept = {}
        for method, op in ops.items():
            op = _oas30(copy.deepcopy(op))
            op.get("responses", {}).pop("422", None)  # validation errors answer 400 here
            op.pop("tags", None)
            for param in op.get("parameters", []):
                if param.get("in") == "query" and param.get("name") in _WIRE_SCHEMAS:
                    param["schema"] = dict(_WIRE_SCHEMAS[param["name"]])
                if param.get("name") == "limit":
                    schema = param.setdefault("schema", {})
                    schema.update(default=default_limit, maximum=max_limit)
                if param.get("in") == "query":
                    param.setdefault("style", "form")
                    param.setdefault("explode", False)
            kept[method] = op
        paths[path[len(PREFIX) :] or "/"] = kept
    generic = paths.get("/collections/{collectionId}/items", {}).get("get")
    if generic is not None:
        for cid, props in sorted(queryables.items()):
            op = copy.deepcopy(generic)
            op["operationId"] = f"items_{cid}"
            op["summary"] = f"Features of {cid}"
            params = [p for p in op.get("parameters", []) if p.get("in") != "path"]
            names = {p.get("name") for p in params}
            for name, kind in sorted(props.items()):
                if name in names:
                    continue  # a property named like a parameter is reached as the parameter
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": f"Features whose {name} equals the value",
                        "schema": {"type": kind} if kind != "object" else {"type": "string"},
                        "style": "form",
                        "explode": False,
                    }
                )
            op["parameters"] = params
            paths[f"/collections/{cid}/items"] = {"get": op}
    schemas = app_openapi.get("components", {}).get("schemas", {})
    used: set[str] = set()
    _refs(paths, used)
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Renkei OGC API - Features",
            "version": str(app_openapi.get("info", {}).get("version", "1.0.0")),
            "description": "NGSI-LD entities of the Renkei hub as OGC API - Features "
            f"collections. Pages hold {default_limit} features unless limit says otherwise "
            f"(at most {max_limit}).",
            "license": {"name": "Apache-2.0"},
        },
        "servers": [{"url": base}],
        "paths": paths,
    }
    if used:
        doc["components"] = {"schemas": {k: _oas30(schemas[k]) for k in used if k in schemas}}
    return doc
