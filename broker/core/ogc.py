"""OGC API - Features (Part 1 Core, Part 2 CRS) over the hub's entities.

Collections
    One collection per entity type per tenant, found through the store's type
    discovery, plus the GeoJSON *layers* of a configured folder
    (``RENKEI_OGC_LAYERS_DIR``: every ``*.geojson`` file is one collection, so
    aggregates computed elsewhere, e.g. district indicators, are published by
    writing a file there).

Collection ids
    The entity type compacted with the core context (``EvacuationSite``). A type
    that does not compact to a plain name gets ``{local name}-{8 hex digits}``.
    Tenants: with an ``NGSILD-Tenant`` header only that tenant's types are listed,
    under their plain ids; without one, every tenant is listed and the types of a
    tenant other than the default one are ``{tenant}~{type}`` (``komae~Shelter``),
    which is what lets a client that cannot send headers (QGIS) reach them.
    Layers are listed under ``layer~{file stem}``.

Features
    An entity is a GeoJSON Feature (RFC 7946): its ``location`` is the geometry,
    its other attributes are the properties in the simplified (keyValues) form with
    short names, rendered by the same ``View.feature`` as NGSI-LD GeoJSON. A
    LanguageProperty is a plain string in the asked language (``lang``, by default
    ``RENKEI_OGC_LANGUAGE``), the other languages following as ``{name}_{tag}``
    properties (``name_en``), so GIS tools get text columns, not JSON.

Tenants
    Which tenants a request sees is decided in one place, :meth:`OgcService.visible_tenants`,
    so an access policy can narrow it without touching the routes.

Time
    ``datetime`` is matched against the configured time property of the type
    (``RENKEI_OGC_TIME_PROPERTIES``, type -> attribute with a date-time value) or,
    by default, against the ``observedAt`` of the type's attributes. Features
    without any time are kept, as the standard's abstract test suite expects.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from pyproj import Transformer
from shapely.geometry import box, shape

from broker.core.entities import EntityService
from broker.core.model import View
from broker.errors import BadRequestData, NonexistentTenant, ResourceNotFound
from broker.jsonld.context import TermMap
from broker.model.entity import NGSI_LD, Entity, pick_language
from broker.model.query import (
    MAX_COUNT,
    And,
    AttrPath,
    Comparison,
    DateTime,
    Exists,
    GeoQuery,
    Node,
    Or,
    all_of,
    any_of,
    count_param,
)
from broker.model.store import EntityQuery, WriteResult
from broker.store.base import EntityStore

CRS84: Final = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
JGD2011: Final = "http://www.opengis.net/def/crs/EPSG/0/6668"
WGS84: Final = "http://www.opengis.net/def/crs/EPSG/0/4326"
#: CRSs served: the first is the default (longitude, latitude); the EPSG ones are lat, lon.
SUPPORTED_CRS: Final = (CRS84, JGD2011, WGS84)
_CRS_CODES: Final = {CRS84: "OGC:CRS84", JGD2011: "EPSG:6668", WGS84: "EPSG:4326"}
GREGORIAN: Final = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"

CONFORMANCE: Final = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
)

#: Query parameters of /items besides property filters; ``lang`` picks a language of
#: LanguageProperty values (an extension, declared in the API definition).
ITEMS_PARAMS: Final = frozenset(
    {"f", "bbox", "bbox-crs", "crs", "datetime", "limit", "offset", "lang"}
)
LAYER_PREFIX: Final = "layer~"
TENANT_SEP: Final = "~"
LOCATION: Final = NGSI_LD + "location"

_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SCAN_PAGE = 1000


# -- request values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """A ``datetime`` parameter: an instant (start == end) or an interval, ends open as None."""

    start: datetime | None
    end: datetime | None


@dataclass(slots=True)
class ItemsRequest:
    """The parsed query of ``/collections/{id}/items``."""

    limit: int
    offset: int = 0
    bbox: tuple[float, float, float, float] | None = None
    datetime: Interval | None = None
    crs: str = CRS84
    #: Property equality filters: short name -> value text.
    properties: dict[str, str] = field(default_factory=dict)
    lang: str | None = None


@dataclass(slots=True)
class Collection:
    id: str
    title: str
    description: str
    tenant: str = ""
    #: Expanded entity type, for entity collections.
    type_iri: str | None = None
    count: int | None = None
    layer: Layer | None = None


@dataclass(slots=True)
class CollectionInfo:
    """What a scan of a collection finds: extents, time attributes and property kinds."""

    extent: _Extent = field(default_factory=lambda: _Extent())
    #: Expanded attributes that carry ``observedAt`` (the default time of a feature).
    time_attrs: set[str] = field(default_factory=set)
    #: Short property name -> JSON schema type ("string", "number", ...).
    properties: dict[str, str] = field(default_factory=dict)
    #: Short property name -> expanded attribute, where the name is not the compacted
    #: term (an attribute outside the core context's vocabulary, named by its local part).
    iris: dict[str, str] = field(default_factory=dict)
    computed: float = field(default_factory=time.monotonic)

    @property
    def bbox(self) -> list[float] | None:
        return self.extent.bbox()

    @property
    def interval(self) -> list[str | None] | None:
        return self.extent.interval()


@dataclass(slots=True)
class Page:
    features: list[dict[str, Any]]
    matched: int


# -- parameters -------------------------------------------------------------------------------


def check_params(params: Mapping[str, str], allowed: Iterable[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequestData(f"unknown query parameter(s): {', '.join(unknown)}")


def parse_crs(value: str | None, name: str = "crs") -> str:
    if value is None:
        return CRS84
    text = value.strip().strip("[]<>")
    aliases = {"EPSG:6668": JGD2011, "EPSG:4326": WGS84, "OGC:CRS84": CRS84, "CRS84": CRS84}
    text = aliases.get(text.upper(), text)
    if text.startswith("https://"):
        text = "http://" + text[len("https://") :]
    if text not in SUPPORTED_CRS:
        raise BadRequestData(
            f"{name} {value!r} is not supported; use one of {', '.join(SUPPORTED_CRS)}"
        )
    return text


def _int(value: str | None, name: str, default: int, minimum: int) -> int:
    if value is None:
        return default
    if minimum > 0 and value.isascii() and value.isdigit() and len(value) > 10:
        return MAX_COUNT  # a limit beyond the maximum is the maximum (OGC API 7.15.3)
    return count_param(value, name, minimum)


def parse_bbox(value: str, crs: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` (or 6 numbers with heights) in ``crs`` -> CRS84 lon/lat."""
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise BadRequestData(f"bbox must be 4 or 6 comma-separated numbers, got {value!r}") from exc
    if len(nums) not in (4, 6) or not all(math.isfinite(n) for n in nums):
        raise BadRequestData(f"bbox must be 4 or 6 comma-separated numbers, got {value!r}")
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    if crs != CRS84:  # EPSG:6668/4326 order is latitude, longitude
        nums = [nums[1], nums[0], nums[3], nums[2]]
    x1, y1, x2, y2 = nums
    if not (-90 <= y1 <= 90 and -90 <= y2 <= 90 and -180 <= x1 <= 180 and -180 <= x2 <= 180):
        raise BadRequestData(f"bbox {value!r} is out of range for {crs}")
    if y1 > y2:
        raise BadRequestData(f"bbox {value!r}: the lower corner is above the upper one")
    return x1, y1, x2, y2


def _instant(text: str, end: bool) -> datetime:
    t = text.strip()
    try:
        if "T" not in t.upper():
            day = datetime.fromisoformat(t).replace(tzinfo=UTC)
            return day + timedelta(days=1, microseconds=-1) if end else day
        parsed = datetime.fromisoformat(t.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequestData(f"datetime {text!r} is not an RFC 3339 date-time or date") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_datetime(value: str) -> Interval:
    """RFC 3339 instant, date, or ``start/end`` interval with ``..`` (or empty) open ends."""
    if "/" not in value:
        if value in ("", ".."):
            raise BadRequestData("datetime must not be empty")
        return Interval(_instant(value, False), _instant(value, True))
    start_text, _, end_text = value.partition("/")
    start = None if start_text in ("", "..") else _instant(start_text, False)
    end = None if end_text in ("", "..") else _instant(end_text, True)
    if start is None and end is None:
        raise BadRequestData("datetime interval must have at least one closed end")
    if start is not None and end is not None and start > end:
        raise BadRequestData(f"datetime {value!r}: start is after end")
    return Interval(start, end)


def parse_items(
    params: Mapping[str, str], properties: Iterable[str], *, default_limit: int, max_limit: int
) -> ItemsRequest:
    """Check and parse the items query; unknown parameters are 400, as the ATS expects."""
    props = set(properties)
    check_params(params, ITEMS_PARAMS | props)
    limit = min(_int(params.get("limit"), "limit", default_limit, 1), max_limit)
    offset = _int(params.get("offset"), "offset", 0, 0)
    crs = parse_crs(params.get("crs"))
    bbox_crs = parse_crs(params.get("bbox-crs"), "bbox-crs")
    if "bbox-crs" in params and "bbox" not in params:
        raise BadRequestData("bbox-crs needs bbox")
    bbox = parse_bbox(params["bbox"], bbox_crs) if "bbox" in params else None
    when = parse_datetime(params["datetime"]) if "datetime" in params else None
    lang = params.get("lang") or None
    filters = {k: v for k, v in params.items() if k in props and k not in ITEMS_PARAMS}
    return ItemsRequest(limit, offset, bbox, when, crs, filters, lang)


# -- coordinates ------------------------------------------------------------------------------

_TRANSFORMERS: dict[str, Transformer] = {}


def _transformer(crs: str) -> Transformer:
    found = _TRANSFORMERS.get(crs)
    if found is None:
        found = _TRANSFORMERS[crs] = Transformer.from_crs("OGC:CRS84", _CRS_CODES[crs])
    return found


def _positions(coords: Any, out: list[list[float]]) -> None:
    if coords and isinstance(coords[0], int | float):
        out.append(coords)
    else:
        for c in coords:
            _positions(c, out)


def to_crs(geometry: dict[str, Any] | None, crs: str) -> dict[str, Any] | None:
    """A GeoJSON geometry (lon/lat) in ``crs``, axis order as that CRS defines it."""
    if geometry is None or crs == CRS84:
        return geometry
    geometry = orjson.loads(orjson.dumps(geometry))  # a copy to rewrite in place
    positions: list[list[float]] = []
    parts = geometry.get("geometries") or [geometry]
    for part in parts:
        _positions(part.get("coordinates", []), positions)
    if positions:
        xs, ys = _transformer(crs).transform([p[0] for p in positions], [p[1] for p in positions])
        for pos, a, b in zip(positions, xs, ys, strict=True):
            pos[0], pos[1] = round(a, 9), round(b, 9)
    return geometry


def _bbox_of(geometry: dict[str, Any]) -> tuple[float, float, float, float] | None:
    positions: list[list[float]] = []
    for part in geometry.get("geometries") or [geometry]:
        _positions(part.get("coordinates", []), positions)
    if not positions:
        return None
    xs = [p[0] for p in positions]
    ys = [p[1] for p in positions]
    return min(xs), min(ys), max(xs), max(ys)


def _bbox_geometry(b: tuple[float, float, float, float]) -> dict[str, Any]:
    x1, y1, x2, y2 = b

    def ring(a: float, c: float) -> list[list[list[float]]]:
        return [[[a, y1], [c, y1], [c, y2], [a, y2], [a, y1]]]

    if x1 <= x2:
        if x1 == x2 or y1 == y2:  # a degenerate box is its outline, still a valid query
            return {"type": "LineString", "coordinates": [[x1, y1], [x2, y2]]}
        return {"type": "Polygon", "coordinates": ring(x1, x2)}
    # crosses the antimeridian
    return {"type": "MultiPolygon", "coordinates": [ring(x1, 180.0), ring(-180.0, x2)]}


# -- layers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Layer:
    """A GeoJSON FeatureCollection file served as a read-only collection."""

    path: Path
    mtime: float = -1.0
    title: str = ""
    description: str = ""
    features: list[dict[str, Any]] = field(default_factory=list)

    def load(self) -> Layer:
        mtime = self.path.stat().st_mtime
        if mtime == self.mtime:
            return self
        doc = orjson.loads(self.path.read_bytes())
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise ValueError(f"{self.path} is not a GeoJSON FeatureCollection")
        features = []
        for i, feat in enumerate(doc.get("features") or []):
            if isinstance(feat, dict) and feat.get("type") == "Feature":
                feat = dict(feat)
                feat.setdefault("id", str(i + 1))
                feat["id"] = str(feat["id"])
                feat.setdefault("properties", {})
                features.append(feat)
        self.features = features
        self.title = str(doc.get("title") or doc.get("name") or self.path.stem)
        self.description = str(doc.get("description") or f"GeoJSON layer {self.path.name}")
        self.mtime = mtime
        return self


# -- the service ------------------------------------------------------------------------------


#: ``(tenant, query) -> (entities, count)``
QueryFn = Callable[[str, EntityQuery], Awaitable[tuple[list[Entity], int | None]]]
#: ``tenant -> entity types (expanded)``
TypesFn = Callable[[str], Awaitable[set[str]]]


class OgcService:
    """Collections, extents and items for the ``/ogc`` router."""

    def __init__(
        self,
        store: EntityStore,
        entities: EntityService,
        core: TermMap,
        *,
        time_properties: Mapping[str, str] | None = None,
        layers_dir: Path | None = None,
        cache_ttl: float = 60.0,
        language: str = "ja",
        query: QueryFn | None = None,
        extra_types: TypesFn | None = None,
    ) -> None:
        """``query`` answers item queries (default: this hub's entities; the app passes
        the distributed query, so a hub registered over others serves their entities
        too); ``extra_types`` names more collection types than the hub holds (those of
        its context source registrations)."""
        self.store = store
        self._query: QueryFn = query or entities.query
        self._extra_types = extra_types
        self.language = language
        self.entities = entities
        self.tm = core
        self.time_properties = {
            core.expand(k): core.expand(v) for k, v in (time_properties or {}).items()
        }
        self.layers_dir = layers_dir
        self.cache_ttl = cache_ttl
        self._info: dict[tuple[str, str], CollectionInfo] = {}
        self._layers: dict[str, Layer] = {}
        self._simple = View(core, format="keyValues")
        entities.on_change(self._changed)

    async def _changed(self, tenant: str, results: Sequence[WriteResult]) -> None:
        """Writes through this process widen the cached extents at once.

        Entities written are added to the extent of their types (cheap, and exact for
        what grows it); what shrinks it (deletes, moves inward) shows after the cache
        time, when the collection is scanned again. A busy sensor feed thus never makes
        a reader wait for a scan.
        """
        for r in results:
            if r.after is None:
                continue
            for t in r.after.get("type", ()):
                info = self._info.get((tenant, t))
                if info is not None:
                    self._absorb(info, r.after, self.time_properties.get(t))

    def _absorb(self, info: CollectionInfo, ent: Entity, time_prop: str | None) -> None:
        """Add one entity to an extent, its time attributes and property kinds."""
        geometry = _geometry(ent)
        if geometry is not None:
            info.extent.add_bbox(_bbox_of(geometry))
        for iri, instances in ent.items():
            if ":" not in iri or iri == LOCATION:
                continue
            for inst in instances:
                if time_prop is None and "observedAt" in inst:
                    info.time_attrs.add(iri)
                    info.extent.add_time(inst["observedAt"])
                elif iri == time_prop and isinstance(inst.get("value"), str):
                    info.extent.add_time(inst["value"])
            name = property_name(self.tm.compact(iri))
            if name != self.tm.compact(iri):
                info.iris.setdefault(name, iri)
            if name not in info.properties:
                value = self._simple.instance(instances[0])
                info.properties[name] = "string" if _language_map(value) else _json_type(value)

    # -- collections ---------------------------------------------------------------------------

    def type_id(self, iri: str) -> str:
        term = self.tm.compact(iri)
        if _PLAIN_ID.match(term) and TENANT_SEP not in term:
            return term
        local = re.split(r"[/#:]", iri.rstrip("/#"))[-1]
        local = re.sub(r"[^A-Za-z0-9_.\-]", "_", local) or "type"
        return f"{local}-{hashlib.sha1(iri.encode()).hexdigest()[:8]}"

    def _collection(self, tenant: str, iri: str, count: int | None, prefixed: bool) -> Collection:
        name = self.type_id(iri)
        cid = f"{tenant}{TENANT_SEP}{name}" if prefixed and tenant else name
        title = f"{self.tm.compact(iri)} ({tenant})" if tenant else self.tm.compact(iri)
        where = f" of tenant {tenant}" if tenant else ""
        return Collection(
            id=cid,
            title=title,
            description=f"NGSI-LD entities of type {iri}{where}",
            tenant=tenant,
            type_iri=iri,
            count=count,
        )

    async def _types(self, tenant: str) -> dict[str, int | None]:
        held: dict[str, int | None] = {}
        if not tenant or await self.store.tenant_exists(tenant):
            held.update((await self.store.discovery(tenant)).types)
        if self._extra_types is not None:
            for iri in sorted(await self._extra_types(tenant)):
                held.setdefault(iri, None)  # held by context sources: not counted here
        return held

    def layers(self) -> list[Layer]:
        if self.layers_dir is None or not self.layers_dir.is_dir():
            return []
        found: list[Layer] = []
        for path in sorted(self.layers_dir.glob("*.geojson")):
            layer = self._layers.get(path.stem) or Layer(path)
            try:
                self._layers[path.stem] = layer.load()
            except (OSError, ValueError):
                continue  # a file being written or broken: listed again once it loads
            found.append(layer)
        return found

    def _layer_collection(self, layer: Layer) -> Collection:
        return Collection(
            id=LAYER_PREFIX + layer.path.stem,
            title=layer.title,
            description=layer.description,
            count=len(layer.features),
            layer=layer,
        )

    async def visible_tenants(self, tenant: str | None) -> list[str]:
        """The tenants a request lists: the header's tenant, or (no header) every tenant.

        The one place that decides which tenants appear in ``/ogc``: an access policy
        narrows this list (and :meth:`collection` refuses what it leaves out).
        """
        if tenant is not None:
            return [tenant]
        return list(dict.fromkeys(["", *(await self.store.tenants())]))

    async def collections(self, tenant: str | None) -> list[Collection]:
        """Every collection: a tenant's types (header given) or all tenants', then layers."""
        out: list[Collection] = []
        for t in await self.visible_tenants(tenant):
            for iri, count in sorted((await self._types(t)).items()):
                out.append(self._collection(t, iri, count, prefixed=tenant is None))
        out.extend(self._layer_collection(layer) for layer in self.layers())
        return out

    async def collection(self, cid: str, tenant: str | None) -> Collection:
        """The collection named ``cid`` (404 when there is none)."""
        if cid.startswith(LAYER_PREFIX):
            for layer in self.layers():
                if LAYER_PREFIX + layer.path.stem == cid:
                    return self._layer_collection(layer)
            raise ResourceNotFound(f"no collection {cid}")
        header = tenant
        if tenant is None:
            owner, sep, name = cid.partition(TENANT_SEP)
            tenant, name = (owner, name) if sep else ("", cid)
        else:
            name = cid
        if tenant not in await self.visible_tenants(header):
            raise ResourceNotFound(f"no collection {cid}")
        iri = self.tm.expand(name)
        if not await self._has_type(tenant, iri):
            # not a plain name: a hashed id (discovery is slower, so it comes second)
            types = await self._types(tenant)
            iri = next((t for t in types if self.type_id(t) == name), "")
            if not iri:
                raise ResourceNotFound(f"no collection {cid}")
        col = self._collection(tenant, iri, None, prefixed=False)
        col.id = cid
        return col

    async def _has_type(self, tenant: str, iri: str) -> bool:
        """Whether the tenant holds an entity of the type (one indexed look-up)."""
        if self.type_id(iri) != self.tm.compact(iri):
            return False
        try:
            found, _ = await self._query(tenant, EntityQuery(types=[[iri]], limit=1))
        except NonexistentTenant:
            return False
        return bool(found)

    # -- extents -------------------------------------------------------------------------------

    async def info(self, col: Collection) -> CollectionInfo:
        """Extents and properties of a collection, from a scan of its data (cached)."""
        if col.layer is not None:
            return self._scan_features(col.layer.features)
        assert col.type_iri is not None
        key = (col.tenant, col.type_iri)
        found = self._info.get(key)
        if found is not None and time.monotonic() - found.computed < self.cache_ttl:
            return found
        info = CollectionInfo()
        time_prop = self.time_properties.get(col.type_iri)
        offset = 0
        while True:
            query = EntityQuery(types=[[col.type_iri]], limit=_SCAN_PAGE, offset=offset)
            try:
                page, _ = await self._query(col.tenant, query)
            except NonexistentTenant:
                page = []
            for ent in page:
                self._absorb(info, ent, time_prop)
            if len(page) < _SCAN_PAGE:
                break
            offset += _SCAN_PAGE
        self._info[key] = info
        return info

    def _scan_features(self, features: list[dict[str, Any]]) -> CollectionInfo:
        info = CollectionInfo()
        for feat in features:
            if isinstance(feat.get("geometry"), dict):
                info.extent.add_bbox(_bbox_of(feat["geometry"]))
            for k, v in (feat.get("properties") or {}).items():
                info.properties.setdefault(k, _json_type(v))
        return info

    # -- items ---------------------------------------------------------------------------------

    def _time_filter(self, col: Collection, info: CollectionInfo, when: Interval) -> Node | None:
        assert col.type_iri is not None
        prop = self.time_properties.get(col.type_iri)
        if prop is not None:
            paths = [AttrPath(prop)]
        else:
            paths = [AttrPath(a, ("observedAt",)) for a in sorted(info.time_attrs)]
        if not paths:
            return None  # nothing in the collection has a time: datetime selects all

        def text(d: datetime) -> DateTime:
            return DateTime(d.isoformat(timespec="microseconds").replace("+00:00", "Z"))

        inside: list[Node] = []
        for p in paths:
            bounds: list[Node] = []
            if when.start is not None:
                bounds.append(Comparison(p, ">=", text(when.start)))
            if when.end is not None:
                bounds.append(Comparison(p, "<=", text(when.end)))
            inside.append(all_of(bounds))
        timeless = all_of([Exists(p, negated=True) for p in paths])
        return any_of([*inside, timeless])

    def _property_filter(self, info: CollectionInfo, name: str, text: str) -> Node:
        path = AttrPath(info.iris.get(name) or self.tm.expand(name))
        options: list[Node] = [Comparison(path, "==", text)]
        if text in ("true", "false"):
            options.append(Comparison(path, "==", text == "true"))
        else:
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    value: int | float = int(number) if number.is_integer() else number
                    options.append(Comparison(path, "==", value))
        return any_of(options)

    async def items(self, col: Collection, req: ItemsRequest) -> Page:
        if col.layer is not None:
            return self._layer_items(col.layer, req)
        assert col.type_iri is not None
        info = await self.info(col) if req.properties else CollectionInfo()
        nodes: list[Node] = [self._property_filter(info, k, v) for k, v in req.properties.items()]
        if req.datetime is not None:
            node = self._time_filter(col, await self.info(col), req.datetime)
            if node is not None:
                nodes.append(node)
        geo = None
        if req.bbox is not None:
            geo = GeoQuery("intersects", _bbox_geometry(req.bbox), LOCATION)
        query = EntityQuery(
            types=[[col.type_iri]],
            q=all_of(nodes) if nodes else None,
            geo=geo,
            limit=req.limit,
            offset=req.offset,
            count=True,
        )
        try:
            entities, total = await self._query(col.tenant, query)
        except NonexistentTenant:
            entities, total = [], 0
        features = [self.feature_of(ent, req.crs, req.lang) for ent in entities]
        return Page(features, total or 0)

    def _layer_items(self, layer: Layer, req: ItemsRequest) -> Page:
        area = box(*req.bbox) if req.bbox is not None and req.bbox[0] <= req.bbox[2] else None
        selected = []
        for feat in layer.features:
            props = feat.get("properties") or {}
            if any(_text(props.get(k)) != v for k, v in req.properties.items()):
                continue
            if req.bbox is not None:
                geometry = feat.get("geometry")
                if not isinstance(geometry, dict):
                    continue
                if area is not None and not area.intersects(shape(geometry)):
                    continue
            selected.append(feat)
        page = selected[req.offset : req.offset + req.limit]
        return Page(
            [{**f, "geometry": to_crs(f.get("geometry"), req.crs)} for f in page], len(selected)
        )

    def feature_of(self, ent: Entity, crs: str, lang: str | None) -> dict[str, Any]:
        """An entity as a Feature, LanguageProperty values as text in ``lang``."""
        feat = self._simple.feature(ent, LOCATION)
        compacted: dict[str, Any] = feat["properties"]
        props = {k: v for k, v in compacted.items() if property_name(k) == k}
        for key, value in compacted.items():  # IRIs after the plain names they must not hide
            props.setdefault(property_name(key), value)
        props.pop("location", None)
        feat["properties"] = flatten_languages(props, lang or self.language)
        feat["geometry"] = to_crs(feat["geometry"], crs)
        return feat

    async def feature(
        self, col: Collection, fid: str, crs: str, lang: str | None
    ) -> dict[str, Any]:
        if col.layer is not None:
            for feat in col.layer.features:
                if feat["id"] == fid:
                    return {**feat, "geometry": to_crs(feat.get("geometry"), crs)}
            raise ResourceNotFound(f"no feature {fid} in {col.id}")
        assert col.type_iri is not None
        ent = (
            await self.store.get_entity(col.tenant, fid)
            if col.tenant == "" or await self.store.tenant_exists(col.tenant)
            else None
        )
        if ent is None or col.type_iri not in ent.get("type", ()):
            raise ResourceNotFound(f"no feature {fid} in {col.id}")
        return self.feature_of(ent, crs, lang)


# -- helpers ----------------------------------------------------------------------------------


class _Extent:
    def __init__(self) -> None:
        self.box: list[float] | None = None
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add_bbox(self, b: tuple[float, float, float, float] | None) -> None:
        if b is None:
            return
        if self.box is None:
            self.box = list(b)
        else:
            self.box = [
                min(self.box[0], b[0]),
                min(self.box[1], b[1]),
                max(self.box[2], b[2]),
                max(self.box[3], b[3]),
            ]

    def add_time(self, text: str) -> None:
        try:
            when = _instant(text, False)
        except BadRequestData:
            return
        if self.first is None or when < self.first:
            self.first = when
        if self.last is None or when > self.last:
            self.last = when

    def bbox(self) -> list[float] | None:
        return self.box

    def interval(self) -> list[str | None] | None:
        if self.first is None or self.last is None:
            return None
        return [
            self.first.isoformat().replace("+00:00", "Z"),
            self.last.isoformat().replace("+00:00", "Z"),
        ]


def _geometry(ent: Entity) -> dict[str, Any] | None:
    for inst in ent.get(LOCATION, ()):
        if inst.get("type") == "GeoProperty" and isinstance(inst.get("value"), dict):
            value: dict[str, Any] = inst["value"]
            return value
    return None


def property_name(term: str) -> str:
    """A compacted attribute name as a GIS field name: a full IRI becomes its local part.

    Attributes outside the default vocabulary compact to full IRIs, which GIS formats
    mangle (a Shapefile made ``https_//1``); their last path segment is what people call
    them. Two IRIs with the same local part in one entity keep their first spelling.
    """
    if "://" not in term and not term.startswith("urn:"):
        return term
    local = re.split(r"[/#:]", term.rstrip("/#"))[-1]
    return local or term


def _language_map(value: Any) -> dict[str, Any] | None:
    """The languageMap of a simplified LanguageProperty value, else None."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("languageMap"), dict):
        found: dict[str, Any] = value["languageMap"]
        return found
    return None


def flatten_languages(properties: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """LanguageProperty values as text: ``name`` in ``lang``, ``name_en`` ... for the others.

    GIS formats have text columns, not language maps; the asked language (an
    Accept-Language-like value, best match first) fills the plain name so a layer reads
    the same whatever else the entity carries. A name already taken by a real
    property is never overwritten.
    """
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in properties.items():
        lmap = _language_map(value)
        if lmap is None:
            out[name] = value
            continue
        chosen, text = pick_language(lmap, lang) if lmap else ("", None)
        out[name] = text
        for tag, other in lmap.items():
            if tag != chosen and tag != "@none":
                extra[f"{name}_{tag}"] = other
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


__all__ = [
    "CONFORMANCE",
    "CRS84",
    "ITEMS_PARAMS",
    "JGD2011",
    "SUPPORTED_CRS",
    "WGS84",
    "And",
    "Collection",
    "CollectionInfo",
    "ItemsRequest",
    "OgcService",
    "Or",
    "Page",
    "check_params",
    "flatten_languages",
    "parse_crs",
    "parse_items",
    "property_name",
]
