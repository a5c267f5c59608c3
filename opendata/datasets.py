# ruff: noqa: RUF001, RUF002  (Japanese text: full-width brackets are intended)
"""Dataset definitions: what a department publishes, declared once in YAML.

One file per dataset, in a folder (``renkei publish --definitions DIR``, env
``RENKEI_PUBLISH_DIR``). Every problem is reported with the file and the key, in Japanese
and English, and all problems of a file are reported at once. Format::

    name: komae-evacuation-sites        # CKAN name: [a-z0-9_-]{2,100}, stable, ASCII
    organization: komae-city            # or {name: ..., title: {ja, en}, create: true}
    title: {ja: 避難所一覧, en: Evacuation sites}
    description: {ja: ..., en: ...}
    license: cc-by-4.0                  # default cc-by-4.0
    tags: [防災, 避難所, evacuation]     # normalised for CKAN; unusable ones reported
    language: ja                        # LanguageProperty value written in cells
    private: false
    extras: {spatial_coverage: 狛江市}   # more CKAN extras (merged, never dropped)
    query:                              # NGSI-LD query against the broker
      type: EvacuationSite
      q: capacity>500
      geo: {georel: "near;maxDistance==2000", geometry: Point, coordinates: [139.57, 35.63]}
      attrs: [name, address, capacity, location]
      tenant: komae
      context: https://renkei.city/ns/renkei-v1.jsonld
    resources:
      - format: csv                     # csv | geojson | standard-csv
        name: {ja: 避難所一覧（CSV）, en: Evacuation sites (CSV)}
        columns:                        # optional; default: id, type, every attribute
          - {header: 名称, attribute: name}
          - {header: 都道府県, attribute: address, key: addressRegion}
      - format: geojson
      - format: standard-csv
        standard: evacuation-sites      # a layout in schemas/datasets
      - kind: district_indicators       # an aggregate layer: the entities per district
        key: aed-per-district           # CKAN resources aed-per-district-geojson / -csv
        name: {ja: 町丁目別AED設置状況, en: AEDs per district}
        districts: districts.geojson    # relative to this file: GeoJSON, Shapefile, .zip
        id_column: KEY_CODE             # the district code, unique
        population: population.csv      # or {file: ..., key: 地域コード, column: 総人口}
        attribute: units                # optional numeric attribute to sum / average
        indicators: [count, per_km2, sum, mean, per_capita, nearest]
        formats: [geojson, csv]
        layer: aed-per-district         # OGC collection layer~<layer>; false: none
    datastore:                          # optional DataStore upsert of a tabular resource
      resource: csv
      primary_key: [id]

CKAN names are ASCII and must never be derived from a Japanese title
(``munge_title_to_name("公共施設一覧")`` is ``"__"``): ``name`` is required.

A ``district_indicators`` resource counts the query's entities per district (spatial
join in metres, see :mod:`opendata.gis`) and is published as one CKAN resource per
format, and as the OGC collection ``layer~<layer>`` when the publisher has an OGC layers
folder. Its files are checked when the definition is loaded: the districts must carry
``id_column`` with unique values, the population table its key and count columns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from connectors.csv.layout import Layout, LayoutError, dataset_slugs, load_dataset

__all__ = [
    "FORMATS",
    "INDICATORS",
    "ColumnSpec",
    "DatasetDefinition",
    "DatastoreSpec",
    "DefinitionError",
    "DistrictIndicators",
    "GeoQuery",
    "Organization",
    "Query",
    "ResourceSpec",
    "load_definition",
    "load_definitions",
    "normalize_tag",
    "parse_definition",
]

NAME_RE = re.compile(r"[a-z0-9_-]{2,100}")
#: What CKAN's tag_name_validator accepts (after length 2..100).
TAG_RE = re.compile(r"[\w \-.]+")
FORMATS = ("csv", "geojson", "standard-csv")
DEFAULT_LICENSE = "cc-by-4.0"
_TOP_KEYS = frozenset(
    {
        "name",
        "organization",
        "title",
        "description",
        "license",
        "tags",
        "language",
        "private",
        "extras",
        "query",
        "resources",
        "datastore",
    }
)
_QUERY_KEYS = frozenset({"type", "q", "geo", "attrs", "tenant", "context"})
_GEO_KEYS = frozenset({"georel", "geometry", "coordinates", "geoproperty"})
_RESOURCE_KEYS = frozenset({"kind", "key", "format", "name", "description", "standard", "columns"})
KINDS = ("entities", "district_indicators")
#: What a district_indicators resource can ask for (columns of opendata.gis.district_indicators).
INDICATORS = ("count", "per_km2", "sum", "mean", "per_capita", "nearest")
LAYER_FORMATS = ("geojson", "csv")
_AGGREGATE_KEYS = frozenset(
    {
        "kind",
        "key",
        "name",
        "description",
        "districts",
        "id_column",
        "encoding",
        "population",
        "per",
        "attribute",
        "prefix",
        "indicators",
        "formats",
        "layer",
    }
)
_POPULATION_KEYS = frozenset({"file", "key", "column", "encoding"})
_DISTRICT_SUFFIXES = (".geojson", ".json", ".shp", ".zip", ".gpkg")
_LAYER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,40}")
_ORG_KEYS = frozenset({"name", "title", "description", "create"})
#: Keys CKAN keeps as package fields: an extra of the same name is refused.
_CORE_FIELDS = frozenset(
    {
        "id",
        "name",
        "title",
        "notes",
        "owner_org",
        "license_id",
        "tags",
        "extras",
        "resources",
        "private",
        "state",
        "type",
        "url",
        "version",
        "author",
        "author_email",
        "maintainer",
        "maintainer_email",
        "groups",
    }
)


class DefinitionError(ValueError):
    """Definitions that cannot be used; each message names the file and the key."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class Organization:
    name: str
    title: dict[str, str] = field(default_factory=dict)
    description: dict[str, str] = field(default_factory=dict)
    #: create the organisation in CKAN when it does not exist (the token must allow it)
    create: bool = True


@dataclass(frozen=True)
class GeoQuery:
    georel: str
    geometry: str
    coordinates: Any
    geoproperty: str | None = None


@dataclass(frozen=True)
class Query:
    type: str
    q: str | None = None
    geo: GeoQuery | None = None
    attrs: tuple[str, ...] = ()
    tenant: str | None = None
    context: str | None = None

    def params(self) -> dict[str, str]:
        """NGSI-LD query parameters for ``GET /ngsi-ld/v1/entities``."""
        import json

        params = {"type": self.type}
        if self.q:
            params["q"] = self.q
        if self.attrs:
            params["attrs"] = ",".join(self.attrs)
        if self.geo is not None:
            params["georel"] = self.geo.georel
            params["geometry"] = self.geo.geometry
            params["coordinates"] = json.dumps(self.geo.coordinates, separators=(",", ":"))
            if self.geo.geoproperty:
                params["geoproperty"] = self.geo.geoproperty
        return params


@dataclass(frozen=True)
class ColumnSpec:
    header: str
    attribute: str
    key: str | None = None


@dataclass(frozen=True)
class DistrictIndicators:
    """An aggregate layer: the query's entities counted (summed, ...) per district."""

    #: the definition's key; its resources are ``<key>-<format>``
    key: str
    districts: Path
    id_column: str
    #: column prefix, e.g. ``aed`` -> ``aed_count``, ``aed_per_1000``
    prefix: str
    indicators: tuple[str, ...]
    formats: tuple[str, ...]
    #: OGC layer name (collection ``layer~<layer>``); None: not served by /ogc
    layer: str | None
    title: dict[str, str] = field(default_factory=dict)
    description: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    population: Path | None = None
    population_key: str = "地域コード"
    population_column: str = "総人口"
    population_encoding: str | None = None
    per: int = 1000
    attribute: str | None = None

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The files the layer is computed from (besides the entities)."""
        return (self.districts,) + ((self.population,) if self.population else ())


@dataclass(frozen=True)
class ResourceSpec:
    #: stable identity of the resource inside its package (kept as ``renkei_key`` in CKAN)
    key: str
    format: str
    name: dict[str, str]
    description: dict[str, str] = field(default_factory=dict)
    standard: str | None = None
    layout: Layout | None = None
    columns: tuple[ColumnSpec, ...] | None = None
    #: set for the resources of a district_indicators layer (one per format)
    aggregate: DistrictIndicators | None = None

    @property
    def tabular(self) -> bool:
        return self.format in ("csv", "standard-csv")

    @property
    def filename(self) -> str:
        return f"{self.key}.{'geojson' if self.format == 'geojson' else 'csv'}"


@dataclass(frozen=True)
class DatastoreSpec:
    resource: str
    primary_key: tuple[str, ...]


@dataclass(frozen=True)
class DatasetDefinition:
    name: str
    source: str
    organization: Organization
    title: dict[str, str]
    description: dict[str, str]
    query: Query
    resources: tuple[ResourceSpec, ...]
    license: str = DEFAULT_LICENSE
    tags: tuple[str, ...] = ()
    #: how tags were changed to suit CKAN, for the publish report
    tag_notes: tuple[str, ...] = ()
    language: str = "ja"
    private: bool = False
    extras: dict[str, str] = field(default_factory=dict)
    datastore: DatastoreSpec | None = None

    def resource(self, key: str) -> ResourceSpec:
        for r in self.resources:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def aggregates(self) -> tuple[DistrictIndicators, ...]:
        """The district_indicators layers, once each (a layer has a resource per format)."""
        seen: dict[str, DistrictIndicators] = {}
        for r in self.resources:
            if r.aggregate is not None:
                seen.setdefault(r.aggregate.key, r.aggregate)
        return tuple(seen.values())


def normalize_tag(tag: str) -> str:
    """A tag CKAN accepts: NFKC, every character CKAN refuses (``・``, brackets, ``/``...)
    becomes a space, spaces collapse. The result may still be too short: check it."""
    text = unicodedata.normalize("NFKC", tag)
    text = "".join(c if TAG_RE.fullmatch(c) else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


def _texts(value: Any) -> dict[str, str] | None:
    """``{ja: ..., en: ...}`` or a plain string (taken as Japanese)."""
    if isinstance(value, str):
        return {"ja": value}
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        return dict(value)
    return None


def load_definition(path: Path) -> DatasetDefinition:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError([f"{path}: 読めません / cannot read: {exc}"]) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionError([f"{path}: YAMLとして読めません / not valid YAML: {exc}"]) from exc
    return parse_definition(doc, source=str(path))


def load_definitions(folder: Path) -> list[DatasetDefinition]:
    """Every ``*.yaml``/``*.yml`` file of a folder; all errors of all files at once."""
    if not folder.is_dir():
        raise DefinitionError(
            [f"{folder}: フォルダがありません / no such folder of dataset definitions"]
        )
    errors: list[str] = []
    result: list[DatasetDefinition] = []
    seen: dict[str, str] = {}
    layers: dict[str, str] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            d = load_definition(path)
        except DefinitionError as exc:
            errors.extend(exc.messages)
            continue
        if d.name in seen:
            errors.append(
                f"{path}: name: {d.name} は {seen[d.name]} でも使われています / "
                f"{d.name} is also the name in {seen[d.name]}"
            )
            continue
        seen[d.name] = str(path)
        for agg in d.aggregates:
            if agg.layer is None:
                continue
            if agg.layer in layers:
                errors.append(
                    f"{path}: layer: {agg.layer} は {layers[agg.layer]} でも使われています / "
                    f"layer {agg.layer} is also published by {layers[agg.layer]}"
                )
            layers[agg.layer] = str(path)
        result.append(d)
    if errors:
        raise DefinitionError(errors)
    return result


def parse_definition(doc: Any, *, source: str, base: Path | None = None) -> DatasetDefinition:
    """A definition from its parsed YAML; files it names are relative to ``base``
    (default: the folder of ``source``)."""
    errors: list[str] = []

    def err(key: str, ja: str, en: str) -> None:
        errors.append(f"{source}: {key}: {ja} / {en}")

    if not isinstance(doc, dict):
        raise DefinitionError(
            [f"{source}: YAMLの最上位はマッピングです / top level must be a mapping"]
        )
    for key in doc:
        if key not in _TOP_KEYS:
            err(str(key), "不明なキーです", f"unknown key (expected one of {sorted(_TOP_KEYS)})")

    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        err(
            "name",
            "CKANのデータセット名（半角英小文字・数字・-・_ の2〜100文字）が必要です。日本語のタイトルからは作りません",
            "a CKAN dataset name of 2-100 characters a-z 0-9 - _ is required "
            "(never derived from a Japanese title)",
        )
        name = "invalid"

    org = _organization(doc.get("organization"), err)
    title = _texts(doc.get("title"))
    if title is None or "ja" not in title:
        err("title", "日本語のタイトル（ja）が必要です", "a Japanese title (ja) is required")
        title = {"ja": name}
    description = _texts(doc.get("description", {"ja": ""})) if doc.get("description") else {}
    if description is None:
        err("description", "ja/en の説明文です", "must map ja/en to text")
        description = {}

    license_id = doc.get("license", DEFAULT_LICENSE)
    if not isinstance(license_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", license_id):
        err("license", "ライセンスIDです（例: cc-by-4.0）", "must be a licence id, e.g. cc-by-4.0")
        license_id = DEFAULT_LICENSE

    tags, tag_notes = _tags(doc.get("tags", []), err)

    language = doc.get("language", "ja")
    if not isinstance(language, str) or not re.fullmatch(
        r"[a-zA-Z]{2,3}(-[A-Za-z0-9]+)*", language
    ):
        err("language", "言語タグです（例: ja）", "must be a language tag, e.g. ja")
        language = "ja"
    private = doc.get("private", False)
    if not isinstance(private, bool):
        err("private", "true か false です", "must be true or false")
        private = False
    extras_raw = doc.get("extras", {})
    extras: dict[str, str] = {}
    if not isinstance(extras_raw, dict):
        err("extras", "キーと値のマッピングです", "must be a mapping of keys to values")
    else:
        for k, v in extras_raw.items():
            if not isinstance(k, str) or k in _CORE_FIELDS or k.startswith("renkei_"):
                err(
                    f"extras.{k}",
                    "CKANの項目名や renkei_ で始まる名前は使えません",
                    "cannot be a CKAN package field or start with renkei_",
                )
            elif not isinstance(v, str | int | float | bool):
                err(f"extras.{k}", "値は文字列です", "the value must be text")
            else:
                extras[k] = str(v)

    query = _query(doc.get("query"), err)
    folder = base if base is not None else Path(source).parent
    resources = _resources(doc.get("resources"), err, folder, query)
    datastore = _datastore(doc.get("datastore"), resources, err)

    if errors:
        raise DefinitionError(errors)
    assert isinstance(name, str)
    assert org is not None
    assert query is not None
    return DatasetDefinition(
        name=name,
        source=source,
        organization=org,
        title=title,
        description=description,
        license=license_id,
        tags=tuple(tags),
        tag_notes=tuple(tag_notes),
        language=language,
        private=private,
        extras=extras,
        query=query,
        resources=tuple(resources),
        datastore=datastore,
    )


Err = Callable[[str, str, str], None]


def _organization(raw: Any, err: Err) -> Organization | None:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        err("organization", "CKANの組織名が必要です", "a CKAN organisation name is required")
        return Organization(name="invalid")
    for key in raw:
        if key not in _ORG_KEYS:
            err(
                f"organization.{key}",
                "不明なキーです",
                f"unknown key (expected one of {sorted(_ORG_KEYS)})",
            )
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        err(
            "organization.name",
            "CKANの組織名（半角英小文字・数字・-・_ の2〜100文字）が必要です",
            "a CKAN organisation name of 2-100 characters a-z 0-9 - _ is required",
        )
        name = "invalid"
    title = _texts(raw.get("title", {"ja": name})) or {}
    if not title:
        err("organization.title", "ja/en のタイトルです", "must map ja/en to text")
    description = _texts(raw["description"]) if "description" in raw else {}
    if description is None:
        err("organization.description", "ja/en の説明文です", "must map ja/en to text")
        description = {}
    create = raw.get("create", True)
    if not isinstance(create, bool):
        err("organization.create", "true か false です", "must be true or false")
        create = True
    return Organization(name=name, title=title, description=description, create=create)


def _tags(raw: Any, err: Err) -> tuple[list[str], list[str]]:
    if not isinstance(raw, list) or not all(isinstance(t, str | int) for t in raw):
        err("tags", "タグのリストです", "must be a list of tags")
        return [], []
    tags: list[str] = []
    notes: list[str] = []
    for i, t in enumerate(raw):
        original = str(t)
        tag = normalize_tag(original)
        if len(tag) < 2 or len(tag) > 100:
            err(
                f"tags[{i}]",
                f"タグ {original!r} はCKANで使えません（2〜100文字、記号 ・（）/ などは不可）",
                f"tag {original!r} cannot be used in CKAN (2-100 characters; no ・ （） / ...)",
            )
            continue
        if tag != original:
            notes.append(
                f"タグ {original!r} を {tag!r} にしました / tag {original!r} published as {tag!r}"
            )
        if tag not in tags:
            tags.append(tag)
    return tags, notes


def _query(raw: Any, err: Err) -> Query | None:
    if not isinstance(raw, dict):
        err(
            "query",
            "ブローカーへの問い合わせ（type など）が必要です",
            "a broker query (type, ...) is required",
        )
        return Query(type="Thing")
    for key in raw:
        if key not in _QUERY_KEYS:
            err(
                f"query.{key}",
                "不明なキーです",
                f"unknown key (expected one of {sorted(_QUERY_KEYS)})",
            )
    etype = raw.get("type")
    if not isinstance(etype, str) or not etype.strip():
        err("query.type", "エンティティ型が必要です", "an entity type is required")
        etype = "Thing"
    q = raw.get("q")
    if q is not None and not isinstance(q, str):
        err("query.q", "NGSI-LD の q 式（文字列）です", "must be an NGSI-LD q expression")
        q = None
    attrs = raw.get("attrs", [])
    if isinstance(attrs, str):
        attrs = [a.strip() for a in attrs.split(",") if a.strip()]
    if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
        err("query.attrs", "属性名のリストです", "must be a list of attribute names")
        attrs = []
    tenant = raw.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        err("query.tenant", "テナント名（文字列）です", "must be a tenant name")
        tenant = None
    context = raw.get("context")
    if context is not None and (
        not isinstance(context, str) or not context.startswith(("http://", "https://"))
    ):
        err("query.context", "http(s) URL です", "must be an http(s) URL")
        context = None
    geo = None
    graw = raw.get("geo")
    if graw is not None:
        if not isinstance(graw, dict):
            err(
                "query.geo",
                "georel, geometry, coordinates のマッピングです",
                "must map georel, geometry, coordinates",
            )
        else:
            for key in graw:
                if key not in _GEO_KEYS:
                    err(
                        f"query.geo.{key}",
                        "不明なキーです",
                        f"unknown key (expected one of {sorted(_GEO_KEYS)})",
                    )
            georel, geometry, coords = (
                graw.get("georel"),
                graw.get("geometry"),
                graw.get("coordinates"),
            )
            ok = True
            if not isinstance(georel, str) or not georel:
                err(
                    "query.geo.georel",
                    "georel が必要です（例: near;maxDistance==1000）",
                    "georel is required, e.g. near;maxDistance==1000",
                )
                ok = False
            if geometry not in (
                "Point",
                "LineString",
                "Polygon",
                "MultiPoint",
                "MultiLineString",
                "MultiPolygon",
            ):
                err(
                    "query.geo.geometry",
                    "GeoJSON のジオメトリ型です",
                    "must be a GeoJSON geometry type",
                )
                ok = False
            if not isinstance(coords, list) or not coords:
                err(
                    "query.geo.coordinates",
                    "座標（経度, 緯度）のリストです",
                    "must be a list of coordinates (longitude, latitude)",
                )
                ok = False
            gp = graw.get("geoproperty")
            if gp is not None and not isinstance(gp, str):
                err("query.geo.geoproperty", "属性名です", "must be an attribute name")
                ok = False
            if ok:
                assert isinstance(georel, str)
                assert isinstance(geometry, str)
                geo = GeoQuery(georel=georel, geometry=geometry, coordinates=coords, geoproperty=gp)
    return Query(type=etype, q=q, geo=geo, attrs=tuple(attrs), tenant=tenant, context=context)


def _resources(raw: Any, err: Err, base: Path, query: Query | None) -> list[ResourceSpec]:
    if not isinstance(raw, list) or not raw:
        err(
            "resources",
            "公開するリソース（format: csv / geojson / standard-csv、"
            "または kind: district_indicators）のリストが必要です",
            "a list of resources to publish (format: csv, geojson or standard-csv, "
            "or kind: district_indicators) is required",
        )
        return []
    out: list[ResourceSpec] = []
    keys: set[str] = set()
    for i, item in enumerate(raw):
        where = f"resources[{i}]"
        if isinstance(item, str):
            item = {"format": item}
        if not isinstance(item, dict):
            err(where, "format を持つマッピングです", "must be a mapping with a format")
            continue
        kind = item.get("kind", "entities")
        if kind not in KINDS:
            err(
                f"{where}.kind",
                f"種類 {kind!r} は使えません",
                f"kind {kind!r} is not one of {list(KINDS)}",
            )
            continue
        if kind == "district_indicators":
            for spec in _district_indicators(item, where, err, base, query):
                if spec.key in keys:
                    err(
                        f"{where}.key",
                        f"{spec.key} が重複しています（key を付けてください）",
                        f"{spec.key} is used twice (give each a key)",
                    )
                    continue
                keys.add(spec.key)
                out.append(spec)
            continue
        for key in item:
            if key not in _RESOURCE_KEYS:
                err(
                    f"{where}.{key}",
                    "不明なキーです",
                    f"unknown key (expected one of {sorted(_RESOURCE_KEYS)})",
                )
        fmt = item.get("format")
        if fmt not in FORMATS:
            err(
                f"{where}.format",
                f"形式 {fmt!r} は使えません",
                f"format {fmt!r} is not one of {list(FORMATS)}",
            )
            continue
        layout = None
        standard = item.get("standard")
        if fmt == "standard-csv":
            if not isinstance(standard, str):
                err(
                    f"{where}.standard",
                    "標準データセット名が必要です",
                    f"a standard dataset is required (one of {', '.join(dataset_slugs())})",
                )
                continue
            try:
                layout = load_dataset(standard)
            except LayoutError as exc:
                err(f"{where}.standard", exc.messages[0], "see above")
                continue
        elif standard is not None:
            err(
                f"{where}.standard",
                "standard は standard-csv だけです",
                "standard is only for format standard-csv",
            )
        key = item.get("key") or (f"standard-{standard}" if fmt == "standard-csv" else fmt)
        if not isinstance(key, str) or not NAME_RE.fullmatch(key):
            err(
                f"{where}.key",
                "半角英小文字・数字・-・_ です",
                "must be 2-100 characters a-z 0-9 - _",
            )
            continue
        if key in keys:
            err(
                f"{where}.key",
                f"{key} が重複しています（key を付けてください）",
                f"{key} is used twice (give each a key)",
            )
            continue
        keys.add(key)
        default_name = {
            "csv": {"ja": "CSV", "en": "CSV"},
            "geojson": {"ja": "GeoJSON", "en": "GeoJSON"},
            "standard-csv": {
                "ja": f"{(layout.title.get('ja') if layout else None) or standard}（自治体標準オープンデータセット形式）",
                "en": f"{(layout.title.get('en') if layout else None) or standard} (standard open data set layout)",
            },
        }[fmt]
        rname = _texts(item.get("name", default_name))
        if rname is None:
            err(f"{where}.name", "ja/en の名前です", "must map ja/en to text")
            rname = default_name
        rdesc = _texts(item["description"]) if "description" in item else {}
        if rdesc is None:
            err(f"{where}.description", "ja/en の説明文です", "must map ja/en to text")
            rdesc = {}
        columns = None
        if "columns" in item:
            if fmt != "csv":
                err(
                    f"{where}.columns",
                    "columns は format: csv だけです",
                    "columns is only for format csv",
                )
            else:
                columns = _columns(item["columns"], f"{where}.columns", err)
        out.append(
            ResourceSpec(
                key=key,
                format=fmt,
                name=rname,
                description=rdesc,
                standard=standard if fmt == "standard-csv" else None,
                layout=layout,
                columns=columns,
            )
        )
    return out


def _columns(raw: Any, where: str, err: Err) -> tuple[ColumnSpec, ...] | None:
    if not isinstance(raw, list) or not raw:
        err(
            where,
            "列（header, attribute）のリストです",
            "must be a list of columns (header, attribute)",
        )
        return None
    cols: list[ColumnSpec] = []
    headers: set[str] = set()
    for i, c in enumerate(raw):
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("header"), str)
            or not isinstance(c.get("attribute"), str)
        ):
            err(
                f"{where}[{i}]",
                "header と attribute が必要です",
                "header and attribute are required",
            )
            continue
        unknown = set(c) - {"header", "attribute", "key"}
        if unknown:
            err(f"{where}[{i}]", f"不明なキー {sorted(unknown)}", f"unknown keys {sorted(unknown)}")
        key = c.get("key")
        if key is not None and not isinstance(key, str):
            err(f"{where}[{i}].key", "文字列です", "must be text")
            key = None
        if c["header"] in headers:
            err(f"{where}[{i}].header", "見出しが重複しています", "the header is used twice")
        headers.add(c["header"])
        cols.append(ColumnSpec(header=c["header"], attribute=c["attribute"], key=key))
    return tuple(cols)


def _datastore(raw: Any, resources: list[ResourceSpec], err: Err) -> DatastoreSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        err(
            "datastore",
            "resource と primary_key のマッピングです",
            "must map resource and primary_key",
        )
        return None
    unknown = set(raw) - {"resource", "primary_key"}
    if unknown:
        err("datastore", f"不明なキー {sorted(unknown)}", f"unknown keys {sorted(unknown)}")
    key = raw.get("resource")
    tabular = [r.key for r in resources if r.tabular]
    if key is None and tabular:
        key = tabular[0]
    if key not in tabular:
        err(
            "datastore.resource",
            "表形式（CSV）のリソースの key です",
            f"must be the key of a tabular resource (one of {tabular})",
        )
        return None
    pk = raw.get("primary_key", ["id"])
    if isinstance(pk, str):
        pk = [pk]
    if not isinstance(pk, list) or not pk or not all(isinstance(p, str) for p in pk):
        err("datastore.primary_key", "列見出しのリストです", "must be a list of column headers")
        return None
    assert isinstance(key, str)
    return DatastoreSpec(resource=key, primary_key=tuple(pk))


def _path(raw: Any, where: str, err: Err, base: Path, suffixes: tuple[str, ...]) -> Path | None:
    if not isinstance(raw, str) or not raw.strip():
        err(where, "ファイルのパスです", "must be a file path (relative to this file)")
        return None
    path = base / raw
    if path.suffix.lower() not in suffixes:
        err(
            where,
            f"{raw}: 形式が違います（{', '.join(suffixes)}）",
            f"{raw}: must be one of {', '.join(suffixes)}",
        )
        return None
    if not path.is_file():
        err(where, f"ファイル {path} がありません", f"no such file {path}")
        return None
    return path.resolve()


def _text_key(raw: dict[str, Any], key: str, where: str, err: Err, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        err(f"{where}.{key}", "文字列です", "must be text")
        return default
    return value


def _district_indicators(
    item: dict[str, Any], where: str, err: Err, base: Path, query: Query | None
) -> list[ResourceSpec]:
    """The resources of one ``kind: district_indicators`` item (one per format); its files
    are read once here so that a wrong column is reported before anything is published."""
    problems: list[str] = []

    def e(key: str, ja: str, en: str) -> None:
        problems.append(key)
        err(key, ja, en)

    for name in item:
        if name not in _AGGREGATE_KEYS:
            e(
                f"{where}.{name}",
                "不明なキーです",
                f"unknown key (expected one of {sorted(_AGGREGATE_KEYS)})",
            )
    key = item.get("key")
    if not isinstance(key, str) or not NAME_RE.fullmatch(key) or len(key) > 90:
        e(
            f"{where}.key",
            "半角英小文字・数字・-・_ の key が必要です（リソースは <key>-geojson, <key>-csv）",
            "a key of 2-90 characters a-z 0-9 - _ is required "
            "(the resources are <key>-geojson and <key>-csv)",
        )
        key = "invalid"
    default_name = {"ja": "地区別集計", "en": "District indicators"}
    title = _texts(item.get("name", default_name))
    if title is None:
        e(f"{where}.name", "ja/en の名前です", "must map ja/en to text")
        title = default_name
    description = _texts(item["description"]) if "description" in item else {}
    if description is None:
        e(f"{where}.description", "ja/en の説明文です", "must map ja/en to text")
        description = {}

    encoding = item.get("encoding")
    if encoding is not None and not isinstance(encoding, str):
        e(f"{where}.encoding", "文字コード名です（例: cp932）", "must be an encoding, e.g. cp932")
        encoding = None
    districts = _path(item.get("districts"), f"{where}.districts", e, base, _DISTRICT_SUFFIXES)
    id_column = item.get("id_column")
    if not isinstance(id_column, str) or not id_column:
        e(
            f"{where}.id_column",
            "地区コードの列名が必要です（例: KEY_CODE）",
            "the district code column is required, e.g. KEY_CODE",
        )
        id_column = None

    pop_raw = item.get("population")
    population: Path | None = None
    pop_key, pop_column, pop_encoding = "地域コード", "総人口", None
    if isinstance(pop_raw, dict):
        for k in pop_raw:
            if k not in _POPULATION_KEYS:
                e(
                    f"{where}.population.{k}",
                    "不明なキーです",
                    f"unknown key (expected one of {sorted(_POPULATION_KEYS)})",
                )
        population = _path(pop_raw.get("file"), f"{where}.population.file", e, base, (".csv",))
        pop_key = _text_key(pop_raw, "key", f"{where}.population", e, pop_key)
        pop_column = _text_key(pop_raw, "column", f"{where}.population", e, pop_column)
        if pop_raw.get("encoding") is not None:
            pop_encoding = _text_key(pop_raw, "encoding", f"{where}.population", e, "utf-8")
    elif pop_raw is not None:
        population = _path(pop_raw, f"{where}.population", e, base, (".csv",))

    per = item.get("per", 1000)
    if isinstance(per, bool) or not isinstance(per, int) or per <= 0:
        e(f"{where}.per", "正の整数です（例: 1000）", "must be a positive whole number, e.g. 1000")
        per = 1000
    attribute = item.get("attribute")
    if attribute is not None and (not isinstance(attribute, str) or not attribute):
        e(f"{where}.attribute", "属性名です", "must be an attribute name")
        attribute = None
    if query is not None and query.attrs:
        for needed in ("location", attribute):
            if needed and needed not in query.attrs:
                e(
                    f"{where}.attribute" if needed == attribute else "query.attrs",
                    f"query.attrs に {needed} がないので集計できません",
                    f"query.attrs must include {needed} to aggregate it",
                )
    etype = query.type if query is not None else "facility"
    default_prefix = re.sub(
        r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", etype.rsplit("/", 1)[-1]
    ).lower()
    default_prefix = re.sub(r"[^a-z0-9_]", "_", default_prefix).strip("_") or "facility"
    if not default_prefix[0].isalpha():
        default_prefix = f"f_{default_prefix}"
    prefix = item.get("prefix", default_prefix)
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        e(
            f"{where}.prefix",
            "列名の接頭辞です（半角英字で始まる英数字と _）",
            "must be a column prefix: a letter, then letters, digits or _",
        )
        prefix = default_prefix

    wanted = item.get("indicators")
    if wanted is None:
        indicators = ["count", "per_km2"]
        if attribute:
            indicators += ["sum", "mean"]
        if pop_raw is not None:
            indicators.append("per_capita")
        indicators.append("nearest")
    elif (
        not isinstance(wanted, list)
        or not wanted
        or not all(isinstance(x, str) and x in INDICATORS for x in wanted)
    ):
        e(
            f"{where}.indicators",
            f"指標のリストです（{', '.join(INDICATORS)}）",
            f"must be a list of indicators out of {list(INDICATORS)}",
        )
        indicators = ["count"]
    else:
        indicators = list(dict.fromkeys(wanted))
        if {"sum", "mean"} & set(indicators) and not attribute:
            e(
                f"{where}.indicators",
                "sum / mean には attribute（集計する属性）が必要です",
                "sum and mean need an attribute to aggregate",
            )
        if "per_capita" in indicators and pop_raw is None:
            e(
                f"{where}.indicators",
                "per_capita には population（人口の表）が必要です",
                "per_capita needs a population table",
            )

    formats_raw = item.get("formats", list(LAYER_FORMATS))
    if isinstance(formats_raw, str):
        formats_raw = [formats_raw]
    if (
        not isinstance(formats_raw, list)
        or not formats_raw
        or not all(isinstance(f, str) and f in LAYER_FORMATS for f in formats_raw)
    ):
        e(
            f"{where}.formats",
            "geojson と csv のどちらか、または両方です",
            "must list geojson and/or csv",
        )
        formats_raw = list(LAYER_FORMATS)
    formats = tuple(dict.fromkeys(formats_raw))

    layer_raw = item.get("layer", key)
    layer: str | None
    if layer_raw is False or layer_raw is None:
        layer = None
    elif isinstance(layer_raw, str) and _LAYER_RE.fullmatch(layer_raw):
        layer = layer_raw
    else:
        e(
            f"{where}.layer",
            "OGC のレイヤ名（半角英数字・_・-・.）か false です",
            "must be an OGC layer name (ASCII letters, digits, _ - .) or false",
        )
        layer = None

    # the files themselves, when the keys are usable
    if districts is not None and id_column is not None and not problems:
        _check_districts(districts, id_column, encoding, f"{where}.districts", e)
    if population is not None and not problems:
        _check_population(population, pop_key, pop_column, pop_encoding, f"{where}.population", e)
    if problems:
        return []
    assert districts is not None
    assert id_column is not None
    agg = DistrictIndicators(
        key=key,
        districts=districts,
        id_column=id_column,
        prefix=prefix,
        indicators=tuple(indicators),
        formats=formats,
        layer=layer,
        title=title,
        description=description,
        encoding=encoding,
        population=population,
        population_key=pop_key,
        population_column=pop_column,
        population_encoding=pop_encoding,
        per=per,
        attribute=attribute,
    )
    label = {"geojson": "GeoJSON", "csv": "CSV"}
    return [
        ResourceSpec(
            key=f"{key}-{fmt}",
            format=fmt,
            name={
                lang: f"{text}（{label[fmt]}）" if lang == "ja" else f"{text} ({label[fmt]})"
                for lang, text in title.items()
            },
            description=description,
            aggregate=agg,
        )
        for fmt in formats
    ]


def _check_districts(
    path: Path, id_column: str, encoding: str | None, where: str, err: Err
) -> None:
    from opendata.gis.districts import read_districts

    try:
        frame = read_districts(path, key=id_column, encoding=encoding)
    except KeyError as exc:
        err(
            f"{where.rsplit('.', 1)[0]}.id_column",
            f"{path.name} に列 {id_column!r} がありません",
            str(exc.args[0]),
        )
        return
    except ValueError as exc:
        if "repeats" not in str(exc):
            err(where, f"{path.name} を読めません", f"cannot read {path.name}: {exc}")
            return
        err(f"{where.rsplit('.', 1)[0]}.id_column", "地区コードが重複しています", str(exc))
        return
    except Exception as exc:  # GDAL's own errors: a broken or unreadable file
        err(where, f"{path.name} を読めません", f"cannot read {path.name}: {exc}")
        return
    if frame.empty:
        err(where, f"{path.name} に地区がありません", f"{path.name} has no districts")
    elif not frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        err(where, f"{path.name} は面（ポリゴン）です", f"{path.name} must hold polygons")


def _check_population(
    path: Path, key: str, column: str, encoding: str | None, where: str, err: Err
) -> None:
    from opendata.gis.districts import read_population

    try:
        read_population(path, key=key, population=column, encoding=encoding)
    except KeyError as exc:
        err(where, f"{path.name} に列 {key!r} / {column!r} が必要です", str(exc.args[0]))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        err(where, f"{path.name} の人口が数値ではありません", f"{path.name}: {exc}")
    except OSError as exc:
        err(where, f"{path.name} を読めません", f"cannot read {path.name}: {exc}")
