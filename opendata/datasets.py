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
      context: https://renkei.city/ns/renkei-v2.jsonld
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

The file is validated by the pydantic models below (:class:`DefinitionDoc` and the
models of its parts); :mod:`schemas.validation` turns their errors into the messages.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.csv.layout import Layout, LayoutError, dataset_slugs, load_dataset
from schemas.validation import At, Msg, load_yaml, problem, problems, tolerant, validate

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
KINDS = ("entities", "district_indicators")
#: What a district_indicators resource can ask for (columns of opendata.gis.district_indicators).
INDICATORS = ("count", "per_km2", "sum", "mean", "per_capita", "nearest")
LAYER_FORMATS = ("geojson", "csv")
_DISTRICT_SUFFIXES = (".geojson", ".json", ".shp", ".zip", ".gpkg")
_LAYER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,40}")
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


def _texts(value: Any) -> Any:
    """``{ja: ..., en: ...}`` or a plain string (taken as Japanese)."""
    return {"ja": value} if isinstance(value, str) else value


def _words(value: Any) -> Any:
    """A word or a list of words."""
    return [value] if isinstance(value, str) else value


def _number_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _pattern(regex: re.Pattern[str]) -> str:
    return f"^(?:{regex.pattern})$"


Texts = Annotated[dict[StrictStr, StrictStr], Field(min_length=1), BeforeValidator(_texts)]
TextsMsg = Msg("ja/en の名前です", "must map ja/en to text")
DescriptionMsg = Msg("ja/en の説明文です", "must map ja/en to text")
CkanName = Annotated[StrictStr, Field(pattern=_pattern(NAME_RE))]
YesNo = Msg("true か false です", "must be true or false")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OrganizationDoc(_Doc):
    name: Annotated[
        CkanName,
        Msg(
            "CKANの組織名（半角英小文字・数字・-・_ の2〜100文字）が必要です",
            "a CKAN organisation name of 2-100 characters a-z 0-9 - _ is required",
        ),
    ]
    title: Annotated[Texts | None, Msg("ja/en のタイトルです", "must map ja/en to text")] = None
    description: Annotated[Texts | None, DescriptionMsg] = None
    #: create the organisation in CKAN when it does not exist (the token must allow it)
    create: Annotated[StrictBool, YesNo] = True

    def organization(self) -> Organization:
        return Organization(
            name=self.name,
            title=self.title or {"ja": self.name},
            description=self.description or {},
            create=self.create,
        )


class GeoDoc(_Doc):
    georel: Annotated[
        StrictStr,
        Field(min_length=1),
        Msg(
            "georel が必要です（例: near;maxDistance==1000）",
            "georel is required, e.g. near;maxDistance==1000",
        ),
    ]
    geometry: Annotated[
        Literal["Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon"],
        Msg("GeoJSON のジオメトリ型です", "must be a GeoJSON geometry type"),
    ]
    coordinates: Annotated[
        list[Any],
        Field(min_length=1),
        Msg(
            "座標（経度, 緯度）のリストです",
            "must be a list of coordinates (longitude, latitude)",
        ),
    ]
    geoproperty: Annotated[StrictStr | None, Msg("属性名です", "must be an attribute name")] = None


def _attr_list(value: Any) -> Any:
    if isinstance(value, str):
        return [a.strip() for a in value.split(",") if a.strip()]
    return value


class QueryDoc(_Doc):
    type: Annotated[
        StrictStr,
        Field(pattern=r"\S"),
        Msg("エンティティ型が必要です", "an entity type is required"),
    ]
    q: Annotated[
        StrictStr | None, Msg("NGSI-LD の q 式（文字列）です", "must be an NGSI-LD q expression")
    ] = None
    geo: Annotated[
        GeoDoc | None,
        Msg(
            "georel, geometry, coordinates のマッピングです",
            "must map georel, geometry, coordinates",
        ),
    ] = None
    attrs: Annotated[
        list[StrictStr],
        BeforeValidator(_attr_list),
        Msg("属性名のリストです", "must be a list of attribute names"),
    ] = []
    tenant: Annotated[
        StrictStr | None, Msg("テナント名（文字列）です", "must be a tenant name")
    ] = None
    context: Annotated[
        Annotated[StrictStr, Field(pattern=r"^https?://")] | None,
        Msg("http(s) URL です", "must be an http(s) URL"),
    ] = None

    def query(self) -> Query:
        geo = None
        if self.geo is not None:
            g = self.geo
            geo = GeoQuery(g.georel, g.geometry, g.coordinates, g.geoproperty)
        return Query(
            type=self.type,
            q=self.q,
            geo=geo,
            attrs=tuple(self.attrs),
            tenant=self.tenant,
            context=self.context,
        )


class ColumnSpecDoc(_Doc):
    invalid: ClassVar[Msg] = Msg(
        "header と attribute が必要です", "header and attribute are required"
    )

    header: Annotated[StrictStr, invalid]
    attribute: Annotated[StrictStr, invalid]
    key: Annotated[StrictStr | None, Msg("文字列です", "must be text")] = None


def _unique_headers(columns: list[ColumnSpecDoc]) -> list[ColumnSpecDoc]:
    headers: set[str] = set()
    found: list[At] = []
    for i, c in enumerate(columns):
        if c.header in headers:
            found.append(At((i, "header"), "見出しが重複しています", "the header is used twice"))
        headers.add(c.header)
    if found:
        raise problems(found)
    return columns


class EntityResourceDoc(_Doc):
    """A resource of the query's entities: CSV, GeoJSON or a standard layout's CSV."""

    invalid: ClassVar[Msg] = Msg("format を持つマッピングです", "must be a mapping with a format")

    kind: Annotated[
        Literal["entities"],
        Msg("種類 {input} は使えません", f"kind {{input}} is not one of {list(KINDS)}"),
    ] = "entities"
    key: Annotated[
        CkanName | None,
        Msg("半角英小文字・数字・-・_ です", "must be 2-100 characters a-z 0-9 - _"),
    ] = None
    format: Annotated[
        Literal["csv", "geojson", "standard-csv"],
        Msg("形式 {input} は使えません", f"format {{input}} is not one of {list(FORMATS)}"),
    ]
    name: Annotated[Texts | None, TextsMsg] = None
    description: Annotated[Texts | None, DescriptionMsg] = None
    standard: Annotated[
        StrictStr | None,
        Msg(
            "標準データセット名が必要です",
            f"a standard dataset is required (one of {', '.join(dataset_slugs())})",
        ),
    ] = None
    columns: Annotated[
        list[ColumnSpecDoc] | None,
        Field(min_length=1),
        AfterValidator(lambda cols: cols if cols is None else _unique_headers(cols)),
        Msg("列（header, attribute）のリストです", "must be a list of columns (header, attribute)"),
    ] = None
    _layout: Layout | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _fits_format(self) -> EntityResourceDoc:
        found: list[At] = []
        if self.format == "standard-csv":
            if self.standard is None:
                found.append(
                    At(
                        ("standard",),
                        "標準データセット名が必要です",
                        f"a standard dataset is required (one of {', '.join(dataset_slugs())})",
                    )
                )
            else:
                try:
                    self._layout = load_dataset(self.standard)
                except LayoutError as exc:
                    found.append(At(("standard",), exc.messages[0], "see above"))
        elif self.standard is not None:
            found.append(
                At(
                    ("standard",),
                    "standard は standard-csv だけです",
                    "standard is only for format standard-csv",
                )
            )
        if self.columns is not None and self.format != "csv":
            found.append(
                At(
                    ("columns",),
                    "columns は format: csv だけです",
                    "columns is only for format csv",
                )
            )
        if found:
            raise problems(found)
        return self

    @property
    def resource_key(self) -> str:
        if self.key:
            return self.key
        return f"standard-{self.standard}" if self.format == "standard-csv" else self.format

    def resources(self, query: Query) -> list[ResourceSpec]:
        layout = self._layout
        title = layout.title if layout else {}
        default_name = {
            "csv": {"ja": "CSV", "en": "CSV"},
            "geojson": {"ja": "GeoJSON", "en": "GeoJSON"},
            "standard-csv": {
                "ja": f"{title.get('ja') or self.standard}（自治体標準オープンデータセット形式）",
                "en": f"{title.get('en') or self.standard} (standard open data set layout)",
            },
        }[self.format]
        return [
            ResourceSpec(
                key=self.resource_key,
                format=self.format,
                name=self.name or default_name,
                description=self.description or {},
                standard=self.standard if self.format == "standard-csv" else None,
                layout=layout,
                columns=None
                if self.columns is None
                else tuple(ColumnSpec(c.header, c.attribute, c.key) for c in self.columns),
            )
        ]


class PopulationDoc(_Doc):
    file: Annotated[
        StrictStr,
        Field(pattern=r"\S"),
        Msg("ファイルのパスです", "must be a file path (relative to this file)"),
    ]
    key: Annotated[StrictStr, Field(min_length=1), Msg("文字列です", "must be text")] = "地域コード"
    column: Annotated[StrictStr, Field(min_length=1), Msg("文字列です", "must be text")] = "総人口"
    encoding: Annotated[
        StrictStr | None, Field(min_length=1), Msg("文字列です", "must be text")
    ] = None
    _path: Path | None = PrivateAttr(None)

    @field_validator("file")
    @classmethod
    def _exists(cls, raw: str, info: ValidationInfo) -> str:
        _file(raw, info, (".csv",))
        return raw


def _file(raw: str, info: ValidationInfo, suffixes: tuple[str, ...]) -> Path:
    """The file ``raw`` names, relative to the definition's folder."""
    base: Path = (info.context or {}).get("base", Path("."))
    path = base / raw
    if path.suffix.lower() not in suffixes:
        raise problem(
            f"{raw}: 形式が違います（{', '.join(suffixes)}）",
            f"{raw}: must be one of {', '.join(suffixes)}",
        )
    if not path.is_file():
        raise problem(f"ファイル {path} がありません", f"no such file {path}")
    return path.resolve()


def _population(value: Any) -> Any:
    return {"file": value} if isinstance(value, str) else value


def _no_layer(value: Any) -> Any:
    return None if value is False else value


class AggregateDoc(_Doc):
    """A ``kind: district_indicators`` item: its files are read once here so that a wrong
    column is reported before anything is published."""

    kind: Literal["district_indicators"]
    key: Annotated[
        StrictStr,
        Field(pattern=r"^[a-z0-9_-]{2,90}$"),
        Msg(
            "半角英小文字・数字・-・_ の key が必要です（リソースは <key>-geojson, <key>-csv）",
            "a key of 2-90 characters a-z 0-9 - _ is required "
            "(the resources are <key>-geojson and <key>-csv)",
        ),
    ]
    name: Annotated[Texts, TextsMsg] = {"ja": "地区別集計", "en": "District indicators"}
    description: Annotated[Texts | None, DescriptionMsg] = None
    districts: Annotated[
        StrictStr,
        Field(pattern=r"\S"),
        Msg("ファイルのパスです", "must be a file path (relative to this file)"),
    ]
    id_column: Annotated[
        StrictStr,
        Field(min_length=1),
        Msg(
            "地区コードの列名が必要です（例: KEY_CODE）",
            "the district code column is required, e.g. KEY_CODE",
        ),
    ]
    encoding: Annotated[
        StrictStr | None,
        Msg("文字コード名です（例: cp932）", "must be an encoding, e.g. cp932"),
    ] = None
    population: Annotated[PopulationDoc | None, BeforeValidator(_population)] = None
    per: Annotated[
        StrictInt,
        Field(gt=0),
        Msg("正の整数です（例: 1000）", "must be a positive whole number, e.g. 1000"),
    ] = 1000
    attribute: Annotated[
        StrictStr | None, Field(min_length=1), Msg("属性名です", "must be an attribute name")
    ] = None
    prefix: Annotated[
        Annotated[StrictStr, Field(pattern=_pattern(_PREFIX_RE))] | None,
        Msg(
            "列名の接頭辞です（半角英字で始まる英数字と _）",
            "must be a column prefix: a letter, then letters, digits or _",
        ),
    ] = None
    indicators: Annotated[
        list[Literal["count", "per_km2", "sum", "mean", "per_capita", "nearest"]] | None,
        Field(min_length=1),
        Msg(
            f"指標のリストです（{', '.join(INDICATORS)}）",
            f"must be a list of indicators out of {list(INDICATORS)}",
        ),
    ] = None
    formats: Annotated[
        list[Literal["geojson", "csv"]],
        Field(min_length=1),
        BeforeValidator(_words),
        Msg("geojson と csv のどちらか、または両方です", "must list geojson and/or csv"),
    ] = ["geojson", "csv"]
    layer: Annotated[
        Annotated[StrictStr, Field(pattern=_pattern(_LAYER_RE))] | None,
        BeforeValidator(_no_layer),
        Msg(
            "OGC のレイヤ名（半角英数字・_・-・.）か false です",
            "must be an OGC layer name (ASCII letters, digits, _ - .) or false",
        ),
    ] = None
    _districts: Path | None = PrivateAttr(None)
    _population: Path | None = PrivateAttr(None)

    @field_validator("districts")
    @classmethod
    def _exists(cls, raw: str, info: ValidationInfo) -> str:
        _file(raw, info, _DISTRICT_SUFFIXES)
        return raw

    @model_validator(mode="after")
    def _computable(self, info: ValidationInfo) -> AggregateDoc:
        found: list[At] = []
        wanted = set(self.indicators or ())
        if {"sum", "mean"} & wanted and not self.attribute:
            found.append(
                At(
                    ("indicators",),
                    "sum / mean には attribute（集計する属性）が必要です",
                    "sum and mean need an attribute to aggregate",
                )
            )
        if "per_capita" in wanted and self.population is None:
            found.append(
                At(
                    ("indicators",),
                    "per_capita には population（人口の表）が必要です",
                    "per_capita needs a population table",
                )
            )
        base: Path = (info.context or {}).get("base", Path("."))
        self._districts = (base / self.districts).resolve()
        if not found:
            found += _check_districts(self._districts, self.id_column, self.encoding)
        pop = self.population
        if pop is not None:
            self._population = population = (base / pop.file).resolve()
            if not found:
                found += _check_population(population, pop.key, pop.column, pop.encoding)
        if found:
            raise problems(found)
        return self

    def resources(self, query: Query) -> list[ResourceSpec]:
        indicators = self.indicators
        if indicators is None:
            indicators = ["count", "per_km2"]
            if self.attribute:
                indicators += ["sum", "mean"]
            if self.population is not None:
                indicators.append("per_capita")
            indicators.append("nearest")
        base = self._districts
        assert base is not None
        pop = self.population
        agg = DistrictIndicators(
            key=self.key,
            districts=base,
            id_column=self.id_column,
            prefix=self.prefix or _default_prefix(query.type),
            indicators=tuple(dict.fromkeys(indicators)),
            formats=tuple(dict.fromkeys(self.formats)),
            layer=self.key if "layer" not in self.model_fields_set else self.layer,
            title=dict(self.name),
            description=self.description or {},
            encoding=self.encoding,
            population=self._population,
            population_key=pop.key if pop else "地域コード",
            population_column=pop.column if pop else "総人口",
            population_encoding=pop.encoding if pop else None,
            per=self.per,
            attribute=self.attribute,
        )
        label = {"geojson": "GeoJSON", "csv": "CSV"}
        return [
            ResourceSpec(
                key=f"{self.key}-{fmt}",
                format=fmt,
                name={
                    lang: f"{text}（{label[fmt]}）" if lang == "ja" else f"{text} ({label[fmt]})"
                    for lang, text in self.name.items()
                },
                description=agg.description,
                aggregate=agg,
            )
            for fmt in agg.formats
        ]


def _default_prefix(entity_type: str) -> str:
    """``AEDLocation`` -> ``aed_location``: the column prefix of an aggregate layer."""
    prefix = re.sub(
        r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", entity_type.rsplit("/", 1)[-1]
    ).lower()
    prefix = re.sub(r"[^a-z0-9_]", "_", prefix).strip("_") or "facility"
    return prefix if prefix[0].isalpha() else f"f_{prefix}"


def _resource_items(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise problem(
            "公開するリソース（format: csv / geojson / standard-csv、"
            "または kind: district_indicators）のリストが必要です",
            "a list of resources to publish (format: csv, geojson or standard-csv, "
            "or kind: district_indicators) is required",
        )
    if isinstance(value, list):
        return [{"format": item} if isinstance(item, str) else item for item in value]
    return value


def _resource_kind(item: Any) -> type[BaseModel]:
    if isinstance(item, dict) and item.get("kind") == "district_indicators":
        return AggregateDoc
    return EntityResourceDoc


class DatastoreDoc(_Doc):
    resource: StrictStr | None = None
    primary_key: Annotated[
        list[StrictStr],
        Field(min_length=1),
        BeforeValidator(_words),
        Msg("列見出しのリストです", "must be a list of column headers"),
    ] = ["id"]


def _tag(value: str) -> str:
    tag = normalize_tag(value)
    if not 2 <= len(tag) <= 100:
        raise problem(
            f"タグ {value!r} はCKANで使えません（2〜100文字、記号 ・（）/ などは不可）",
            f"tag {value!r} cannot be used in CKAN (2-100 characters; no ・ （） / ...)",
        )
    return value


class DefinitionDoc(_Doc):
    """A dataset definition file. Fields are declared in the order their checks need:
    ``resources`` sees ``query``, ``datastore`` sees the resources."""

    name: Annotated[
        CkanName,
        Msg(
            "CKANのデータセット名（半角英小文字・数字・-・_ の2〜100文字）が必要です。"
            "日本語のタイトルからは作りません",
            "a CKAN dataset name of 2-100 characters a-z 0-9 - _ is required "
            "(never derived from a Japanese title)",
        ),
    ]
    organization: Annotated[
        OrganizationDoc,
        BeforeValidator(lambda v: {"name": v} if isinstance(v, str) else v),
        Msg("CKANの組織名が必要です", "a CKAN organisation name is required"),
    ]
    title: Annotated[
        Texts, Msg("日本語のタイトル（ja）が必要です", "a Japanese title (ja) is required")
    ]
    description: Annotated[Texts | None, BeforeValidator(lambda v: v or None), DescriptionMsg] = (
        None
    )
    license: Annotated[
        StrictStr,
        Field(pattern=r"^[A-Za-z0-9._-]+$"),
        Msg("ライセンスIDです（例: cc-by-4.0）", "must be a licence id, e.g. cc-by-4.0"),
    ] = DEFAULT_LICENSE
    tags: Annotated[
        list[Annotated[StrictStr, BeforeValidator(_number_text), AfterValidator(_tag)]],
        Msg("タグのリストです", "must be a list of tags"),
    ] = []
    language: Annotated[
        StrictStr,
        Field(pattern=r"^[a-zA-Z]{2,3}(-[A-Za-z0-9]+)*$"),
        Msg("言語タグです（例: ja）", "must be a language tag, e.g. ja"),
    ] = "ja"
    private: Annotated[StrictBool, YesNo] = False
    extras: Annotated[
        dict[Any, Any], Msg("キーと値のマッピングです", "must be a mapping of keys to values")
    ] = {}
    query: Annotated[
        QueryDoc,
        Msg(
            "ブローカーへの問い合わせ（type など）が必要です",
            "a broker query (type, ...) is required",
        ),
    ]
    resources: Annotated[
        list[EntityResourceDoc | AggregateDoc],
        tolerant(choose=_resource_kind),
        BeforeValidator(_resource_items),  # runs first: before-validators run right to left
        Msg(
            "公開するリソース（format: csv / geojson / standard-csv、"
            "または kind: district_indicators）のリストが必要です",
            "a list of resources to publish (format: csv, geojson or standard-csv, "
            "or kind: district_indicators) is required",
        ),
    ]
    datastore: Annotated[
        DatastoreDoc | None,
        Msg("resource と primary_key のマッピングです", "must map resource and primary_key"),
    ] = None

    @field_validator("title")
    @classmethod
    def _japanese(cls, title: dict[str, str]) -> dict[str, str]:
        if "ja" not in title:
            raise problem("日本語のタイトル（ja）が必要です", "a Japanese title (ja) is required")
        return title

    @field_validator("extras")
    @classmethod
    def _not_ckan_fields(cls, extras: dict[Any, Any]) -> dict[Any, Any]:
        found: list[At] = []
        for k, v in extras.items():
            if not isinstance(k, str) or k in _CORE_FIELDS or k.startswith("renkei_"):
                found.append(
                    At(
                        (str(k),),
                        "CKANの項目名や renkei_ で始まる名前は使えません",
                        "cannot be a CKAN package field or start with renkei_",
                    )
                )
            elif not isinstance(v, str | int | float | bool):
                found.append(At((k,), "値は文字列です", "the value must be text"))
        if found:
            raise problems(found)
        return extras

    @field_validator("resources")
    @classmethod
    def _keys_and_attrs(
        cls, items: list[EntityResourceDoc | AggregateDoc], info: ValidationInfo
    ) -> list[EntityResourceDoc | AggregateDoc]:
        assert isinstance(info.context, dict)
        positions: list[int] = info.context["positions"]["resources"]
        query: QueryDoc | None = info.data.get("query")
        found: list[At] = []
        keys: set[str] = set()
        kept: list[EntityResourceDoc | AggregateDoc] = []
        for pos, item in zip(positions, items, strict=True):
            if isinstance(item, AggregateDoc):
                made = [f"{item.key}-{fmt}" for fmt in dict.fromkeys(item.formats)]
                if query is not None and query.attrs:
                    for needed in ("location", item.attribute):
                        if needed and needed not in query.attrs:
                            found.append(
                                At(
                                    (pos, "attribute") if needed == item.attribute else (),
                                    f"query.attrs に {needed} がないので集計できません",
                                    f"query.attrs must include {needed} to aggregate it",
                                )
                                if needed == item.attribute
                                else At(
                                    ("query", "attrs"),
                                    f"query.attrs に {needed} がないので集計できません",
                                    f"query.attrs must include {needed} to aggregate it",
                                    root=True,
                                )
                            )
            else:
                made = [item.resource_key]
            for key in made:
                if key in keys:
                    found.append(
                        At(
                            (pos, "key"),
                            f"{key} が重複しています（key を付けてください）",
                            f"{key} is used twice (give each a key)",
                        )
                    )
                keys.add(key)
            kept.append(item)
        if found:
            raise problems(found)
        return kept

    @field_validator("datastore")
    @classmethod
    def _tabular(cls, datastore: DatastoreDoc | None, info: ValidationInfo) -> DatastoreDoc | None:
        if datastore is None:
            return None
        items = info.data.get("resources", [])
        tabular = [
            k
            for item in items
            for k, fmt in (
                [(f"{item.key}-{f}", f) for f in item.formats]
                if isinstance(item, AggregateDoc)
                else [(item.resource_key, item.format)]
            )
            if fmt in ("csv", "standard-csv")
        ]
        key = datastore.resource if datastore.resource is not None else next(iter(tabular), None)
        if key not in tabular:
            raise problems(
                [
                    At(
                        ("resource",),
                        "表形式（CSV）のリソースの key です",
                        f"must be the key of a tabular resource (one of {tabular})",
                    )
                ]
            )
        return datastore.model_copy(update={"resource": key})

    def definition(self, source: str) -> DatasetDefinition:
        query = self.query.query()
        tags: list[str] = []
        notes: list[str] = []
        for original in self.tags:
            tag = normalize_tag(original)
            if tag != original:
                notes.append(
                    f"タグ {original!r} を {tag!r} にしました / tag {original!r} published as {tag!r}"
                )
            if tag not in tags:
                tags.append(tag)
        ds = self.datastore
        return DatasetDefinition(
            name=self.name,
            source=source,
            organization=self.organization.organization(),
            title=self.title,
            description=self.description or {},
            license=self.license,
            tags=tuple(tags),
            tag_notes=tuple(notes),
            language=self.language,
            private=self.private,
            extras={str(k): str(v) for k, v in self.extras.items()},
            query=query,
            resources=tuple(spec for item in self.resources for spec in item.resources(query)),
            datastore=None
            if ds is None or ds.resource is None
            else DatastoreSpec(resource=ds.resource, primary_key=tuple(ds.primary_key)),
        )


def parse_definition(doc: Any, *, source: str, base: Path | None = None) -> DatasetDefinition:
    """A definition from its parsed YAML; files it names are relative to ``base``
    (default: the folder of ``source``). Every problem is reported at once."""
    folder = base if base is not None else Path(source).parent
    valid = validate(
        DefinitionDoc, doc, source=source, error=DefinitionError, context={"base": folder}
    )
    return valid.definition(source)


def load_definition(path: Path) -> DatasetDefinition:
    return parse_definition(load_yaml(path, DefinitionError), source=str(path))


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


def _check_districts(path: Path, id_column: str, encoding: str | None) -> list[At]:
    from opendata.gis.districts import read_districts

    try:
        frame = read_districts(path, key=id_column, encoding=encoding)
    except KeyError as exc:
        return [
            At(("id_column",), f"{path.name} に列 {id_column!r} がありません", str(exc.args[0]))
        ]
    except ValueError as exc:
        if "repeats" not in str(exc):
            return [
                At(("districts",), f"{path.name} を読めません", f"cannot read {path.name}: {exc}")
            ]
        return [At(("id_column",), "地区コードが重複しています", str(exc))]
    except Exception as exc:  # GDAL's own errors: a broken or unreadable file
        return [At(("districts",), f"{path.name} を読めません", f"cannot read {path.name}: {exc}")]
    if frame.empty:
        return [
            At(("districts",), f"{path.name} に地区がありません", f"{path.name} has no districts")
        ]
    if not frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        return [
            At(
                ("districts",),
                f"{path.name} は面（ポリゴン）です",
                f"{path.name} must hold polygons",
            )
        ]
    return []


def _check_population(path: Path, key: str, column: str, encoding: str | None) -> list[At]:
    from opendata.gis.districts import read_population

    where = ("population",)
    try:
        read_population(path, key=key, population=column, encoding=encoding)
    except KeyError as exc:
        return [At(where, f"{path.name} に列 {key!r} / {column!r} が必要です", str(exc.args[0]))]
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return [At(where, f"{path.name} の人口が数値ではありません", f"{path.name}: {exc}")]
    except OSError as exc:
        return [At(where, f"{path.name} を読めません", f"cannot read {path.name}: {exc}")]
    return []
