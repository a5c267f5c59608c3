# ruff: noqa: RUF001  (Japanese text: full-width characters are intended)
"""Entities -> the files a catalogue publishes: CSV, GeoJSON, standard-dataset CSV.

CSV follows the government machine-readability rules (「機械判読可能なデータの表記方法の
統一ルール」): UTF-8 with BOM so spreadsheet software opens it as UTF-8, CRLF line ends,
exactly one header row, one value per cell, no platform-dependent characters (機種依存文字:
circled numbers, Roman numerals, ㈱, ㌔ ... are replaced by their NFKC spelling, half-width
katakana become full-width), no line breaks inside a cell. Every replacement is counted
and reported, so a department can fix its source data.

GeoJSON is RFC 7946: a FeatureCollection of WGS84 longitude/latitude geometries (NGSI-LD
GeoProperties already are), no ``crs`` member, the entity id as the feature id.

The standard-dataset CSV (自治体標準オープンデータセット) uses the layouts in
``schemas/datasets`` through :mod:`connectors.csv.export`, the inverse of the CSV import.

A ``district_indicators`` resource is an aggregate layer: :func:`compute_layer` counts
the entities per district with :mod:`opendata.gis` (read lazily: geopandas is only
imported when a definition has such a layer), and its GeoJSON and CSV are the bytes of
``opendata.gis.layer_resources``; the CSV goes through the same machine-readability
cleaning as every other CSV.

Output is deterministic (entities sorted by id, keys sorted) so that a content hash tells
whether a resource changed.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.shared import COORDINATE_GEOMETRY_TYPES
from connectors.csv.export import export_rows
from connectors.csv.layout import Layout
from connectors.csv.values import format_number
from opendata.datasets import ColumnSpec, DistrictIndicators, ResourceSpec

__all__ = [
    "Layer",
    "LayerInputError",
    "Rendered",
    "Table",
    "blank_required",
    "checked_types",
    "clean_cell",
    "compute_layer",
    "csv_bytes",
    "entity_table",
    "geojson_bytes",
    "is_platform_dependent",
    "render_dataset",
    "render_layer_resource",
    "render_resource",
    "simplify",
    "standard_table",
]

BOM = "\ufeff"
#: CP932 lead bytes of the NEC special characters (row 13) and the NEC/IBM extensions.
_PLATFORM_LEAD_BYTES = frozenset({0x87, 0xED, 0xEE, 0xFA, 0xFB, 0xFC})
_HALFWIDTH_KANA_RE = re.compile(r"[\uff61-\uff9f]+")
_LINEBREAK_RE = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


#: CKAN DataStore field types of the layout's kinds of column; other kinds are ``text``
#: (codes, booleans spelled 有/無, municipality codes with their leading zeros).
_KIND_FIELD_TYPES = {
    "number": "numeric",
    "integer": "numeric",
    "latitude": "numeric",
    "longitude": "numeric",
    "plane-x": "numeric",
    "plane-y": "numeric",
    "date": "date",
    "era-date": "date",
    "time": "time",
}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    #: the CKAN DataStore type of each column (``text``, ``numeric``, ``date``, ``time``);
    #: ``None``: every column is text
    types: list[str] | None = None

    def records(self) -> list[dict[str, str]]:
        return [dict(zip(self.headers, row, strict=True)) for row in self.rows]

    def field_types(self) -> list[str]:
        return list(self.types) if self.types is not None else ["text"] * len(self.headers)


@dataclass
class Rendered:
    """One resource file, ready to upload."""

    spec: ResourceSpec
    content: bytes
    media_type: str
    #: ``(original, replacement) -> count`` of characters replaced for machine readability
    replacements: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: platform-dependent characters with no standard equivalent, kept as they are
    kept: Counter[str] = field(default_factory=Counter)
    table: Table | None = None
    #: standard layout: header of a required (値必須) column -> rows where it is blank
    blank_required: dict[str, int] = field(default_factory=dict)
    #: columns published as DataStore ``text`` because a cell does not read as their type
    untyped: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def format_label(self) -> str:
        return "GeoJSON" if self.spec.format == "geojson" else "CSV"

    def notes(self) -> list[str]:
        """What was changed in the data to publish it, in Japanese and English."""
        out = []
        for (orig, repl), n in sorted(self.replacements.items()):
            shown = repl.replace("\n", "\\n") if repl else "(削除 / removed)"
            out.append(
                f"{self.spec.key}: {_show(orig)} を {shown} に置き換えました（{n}件） / "
                f"replaced {_show(orig)} with {shown} ({n}x)"
            )
        for ch, n in sorted(self.kept.items()):
            out.append(
                f"{self.spec.key}: 機種依存文字 {ch} (U+{ord(ch):04X}) はそのままです（{n}件） / "
                f"platform-dependent character {ch} kept: no standard equivalent ({n}x)"
            )
        for header, n in self.blank_required.items():
            out.append(
                f"{self.spec.key}: 値必須の項目 {header}: {n} 行が空欄です / "
                f"{header}: {n} rows blank (required by the standard)"
            )
        for header, cell in self.untyped.items():
            out.append(
                f"{self.spec.key}: 列 {header} の値 {cell!r} は型に合わないため、DataStore では"
                f"文字列として公開します / column {header} is published to the DataStore as "
                f"text: {cell!r} does not read as its type"
            )
        return out


def _show(text: str) -> str:
    if len(text) == 1 and not text.isprintable():
        return f"U+{ord(text):04X}"
    return repr(text) if text.strip() != text or not text else text


# -- entities ------------------------------------------------------------------------------


def _attr_value(attr: Any, language: str) -> Any:
    """The plain value of one attribute in normalized, concise or keyValues form."""
    if isinstance(attr, list):  # multi-attribute: the default instance, else the first
        default = [a for a in attr if not (isinstance(a, dict) and "datasetId" in a)]
        attr = (default or attr)[0] if attr and all(isinstance(a, dict) for a in attr) else attr
        if isinstance(attr, list):
            return attr
    if not isinstance(attr, dict):
        return attr
    if attr.get("type") in COORDINATE_GEOMETRY_TYPES and "coordinates" in attr:
        return attr
    if "languageMap" in attr:
        lm = attr["languageMap"]
        if isinstance(lm, dict) and lm:
            return lm.get(language, lm.get("@none", next(iter(lm.values()))))
        return None
    for member in ("value", "object", "vocab", "valueList", "objectList", "json"):
        if member in attr:
            value = attr[member]
            if member == "value" and isinstance(value, dict) and "@value" in value:
                return value["@value"]
            return value
    return attr


def simplify(entity: dict[str, Any], language: str = "ja") -> dict[str, Any]:
    """``id``, ``type`` and each attribute as a plain value (a LanguageProperty in
    ``language``, a Relationship as its object, a GeoProperty as its geometry)."""
    out: dict[str, Any] = {"id": entity.get("id"), "type": entity.get("type")}
    for name, attr in entity.items():
        if name in ("id", "type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt"):
            continue
        out[name] = _attr_value(attr, language)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, list):
        return ";".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return str(value)


def _point(value: Any) -> tuple[float, float] | None:
    if isinstance(value, dict) and value.get("type") == "Point":
        c = value.get("coordinates")
        if isinstance(c, list) and len(c) >= 2:
            return float(c[0]), float(c[1])
    return None


def entity_table(
    entities: Sequence[dict[str, Any]], columns: Sequence[ColumnSpec] | None = None
) -> Table:
    """Simplified entities as a table. Without ``columns``: ``id``, ``type``, then every
    attribute in order of appearance, objects spread over ``attribute.key`` columns and
    a Point ``location`` as ``latitude`` and ``longitude``."""
    if columns is not None:
        rows = []
        values: list[list[Any]] = [[] for _ in columns]
        for ent in entities:
            row = []
            for i, col in enumerate(columns):
                value = ent.get(col.attribute)
                if col.key is not None:
                    if col.attribute == "location" and col.key in ("latitude", "longitude"):
                        p = _point(value)
                        value = None if p is None else p[1 if col.key == "latitude" else 0]
                    else:
                        value = value.get(col.key) if isinstance(value, dict) else None
                values[i].append(value)
                row.append(_cell(value))
            rows.append(row)
        return Table([c.header for c in columns], rows, [_value_type(v) for v in values])

    spec: list[tuple[str, str | None]] = [("id", None), ("type", None)]
    seen: set[tuple[str, str | None]] = set(spec)
    for ent in entities:
        for name, value in ent.items():
            if name in ("id", "type"):
                continue
            if _point(value) is not None:
                keys: list[str | None] = ["latitude", "longitude"]
            elif isinstance(value, dict) and value.get("type") not in COORDINATE_GEOMETRY_TYPES:
                keys = list(value)
            else:
                keys = [None]
            for k in keys:
                if (name, k) not in seen:
                    seen.add((name, k))
                    spec.append((name, k))
    headers = [
        k
        if name == "location" and k in ("latitude", "longitude")
        else (f"{name}.{k}" if k else name)
        for name, k in spec
    ]
    rows = []
    values = [[] for _ in spec]
    for ent in entities:
        row = []
        for i, (name, k) in enumerate(spec):
            value = ent.get(name)
            if k is None:
                value = None if _point(value) else value
            elif k in ("latitude", "longitude") and _point(value) is not None:
                p = _point(value)
                assert p is not None
                value = p[1] if k == "latitude" else p[0]
            else:
                value = value.get(k) if isinstance(value, dict) else None
            values[i].append(value)
            row.append(_cell(value))
        rows.append(row)
    return Table(headers, rows, [_value_type(v) for v in values])


def _value_type(values: Sequence[Any]) -> str:
    """``numeric`` for a column of JSON numbers (blanks allowed), else ``text``."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "numeric"
    return "text"


def standard_table(layout: Layout, entities: Iterable[dict[str, Any]]) -> Table:
    """The 自治体標準オープンデータセット layout, as the CSV export writes it."""
    rows = list(export_rows(layout, entities))
    types = [_KIND_FIELD_TYPES.get(c.kind, "text") for c in layout.columns]
    return Table(rows[0], rows[1:], types)


def _reads_as(cell: str, field_type: str) -> bool:
    try:
        if field_type == "numeric":
            return math.isfinite(float(cell))
        if field_type == "date":
            dt.date.fromisoformat(cell)
        elif field_type == "time":
            dt.time.fromisoformat(cell)
    except ValueError:
        return False
    return True


def checked_types(table: Table) -> tuple[list[str], dict[str, str]]:
    """The table's DataStore field types, a column falling back to ``text`` when one of its
    cells does not read as its type (CKAN would refuse the whole upsert); returns the types
    and, per column that fell back, the first cell that did not read."""
    types = table.field_types()
    untyped: dict[str, str] = {}
    for i, field_type in enumerate(types):
        if field_type == "text":
            continue
        bad = next((r[i] for r in table.rows if r[i] and not _reads_as(r[i], field_type)), None)
        if bad is not None:
            types[i] = "text"
            untyped[table.headers[i]] = bad
    return types, untyped


def blank_required(layout: Layout, table: Table) -> dict[str, int]:
    """Header -> number of rows left blank, for each required (値必須) column of a standard
    layout. The standard's 値必須 says what a publisher should fill: a warning, not an
    error, as real municipal files often leave such columns (``URL``...) empty."""
    out: dict[str, int] = {}
    for i, col in enumerate(layout.columns):
        if col.required:
            n = sum(1 for row in table.rows if not row[i].strip())
            if n:
                out[col.header] = n
    return out


# -- machine readability -------------------------------------------------------------------


def _platform_chars() -> frozenset[str]:
    chars = set()
    for lead in _PLATFORM_LEAD_BYTES:
        for trail in range(0x40, 0xFD):
            try:
                ch = bytes([lead, trail]).decode("cp932")
            except UnicodeDecodeError:
                continue
            # CP932 also decodes some of these codes to characters JIS X 0208 has
            # (NEC's duplicates of ∵ ≒ ...): those encode back elsewhere and are fine.
            if ch.encode("cp932")[0] in _PLATFORM_LEAD_BYTES:
                chars.add(ch)
    return frozenset(chars)


#: Characters that Shift_JIS (JIS X 0208) lacks and only Windows' CP932 has.
PLATFORM_DEPENDENT = _platform_chars()


def is_platform_dependent(ch: str) -> bool:
    """A character that Shift_JIS (JIS X 0208) lacks and only Windows' CP932 has."""
    return ch in PLATFORM_DEPENDENT


def clean_cell(text: str, replacements: Counter[tuple[str, str]], kept: Counter[str]) -> str:
    """One cell under the machine-readability rules; counts what it changes."""

    def linebreak(m: re.Match[str]) -> str:
        replacements[(m.group(0), " ")] += 1
        return " "

    def control(m: re.Match[str]) -> str:
        replacements[(m.group(0), "")] += 1
        return ""

    def kana(m: re.Match[str]) -> str:
        full = unicodedata.normalize("NFKC", m.group(0))
        replacements[(m.group(0), full)] += 1
        return full

    text = _LINEBREAK_RE.sub(linebreak, text)
    text = _CONTROL_RE.sub(control, text)
    text = _HALFWIDTH_KANA_RE.sub(kana, text)
    if PLATFORM_DEPENDENT.isdisjoint(text):
        return text
    out = []
    for ch in text:
        if is_platform_dependent(ch):
            repl = unicodedata.normalize("NFKC", ch)
            if repl != ch:
                replacements[(ch, repl)] += 1
                out.append(repl)
                continue
            kept[ch] += 1
        out.append(ch)
    return "".join(out)


def csv_bytes(table: Table) -> tuple[bytes, Counter[tuple[str, str]], Counter[str], Table]:
    """UTF-8 with BOM, CRLF, one header row; returns the bytes, what was replaced and
    kept, and the cleaned table (for the DataStore)."""
    replacements: Counter[tuple[str, str]] = Counter()
    kept: Counter[str] = Counter()
    headers = [clean_cell(h, replacements, kept) for h in table.headers]
    rows = [[clean_cell(c, replacements, kept) for c in row] for row in table.rows]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(headers)
    writer.writerows(rows)
    cleaned = Table(headers, rows, table.types)
    return (BOM + buf.getvalue()).encode("utf-8"), replacements, kept, cleaned


def geojson_bytes(entities: Sequence[dict[str, Any]]) -> bytes:
    """An RFC 7946 FeatureCollection of simplified entities; ``location`` is the geometry."""
    features = []
    for ent in entities:
        geometry = ent.get("location")
        if not (isinstance(geometry, dict) and geometry.get("type") in COORDINATE_GEOMETRY_TYPES):
            geometry = None
        properties = {k: v for k, v in ent.items() if k not in ("id", "location")}
        features.append(
            {"type": "Feature", "id": ent.get("id"), "geometry": geometry, "properties": properties}
        )
    doc = {"type": "FeatureCollection", "features": features}
    text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


def render_resource(spec: ResourceSpec, entities: Sequence[dict[str, Any]]) -> Rendered:
    """One resource of a dataset from its simplified entities (sorted by id by the caller)."""
    if spec.aggregate is not None:
        return render_layer_resource(spec, compute_layer(spec.aggregate, entities))
    if spec.format == "geojson":
        return Rendered(spec, geojson_bytes(entities), "application/geo+json")
    if spec.format == "standard-csv":
        assert spec.layout is not None
        table = standard_table(spec.layout, entities)
    else:
        table = entity_table(entities, spec.columns)
    content, replacements, kept, cleaned = csv_bytes(table)
    rendered = Rendered(spec, content, "text/csv", replacements, kept, cleaned)
    if spec.layout is not None:
        rendered.blank_required = blank_required(spec.layout, cleaned)
    cleaned.types, rendered.untyped = checked_types(cleaned)
    return rendered


# -- district aggregates -------------------------------------------------------------------


class LayerInputError(ValueError):
    """A district or population file of a layer cannot be read any more (it was checked
    when the definition was loaded, so it changed since)."""


@dataclass
class Layer:
    """A district_indicators layer computed from the entities, and its files."""

    spec: DistrictIndicators
    #: one row per district (a geopandas GeoDataFrame, EPSG:4326)
    frame: Any
    #: ``{"geojson": ..., "csv": ...}`` as ``opendata.gis.layer_resources`` gives them
    files: dict[str, bytes]
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return " / ".join(dict.fromkeys(t for t in self.spec.title.values() if t))

    @property
    def description(self) -> str:
        return "\n\n".join(dict.fromkeys(t for t in self.spec.description.values() if t))

    @property
    def geojson(self) -> bytes:
        """The bytes ``/ogc`` serves: the same as the GeoJSON resource."""
        return self.files["geojson"]


def _indicator_columns(spec: DistrictIndicators) -> dict[str, list[str]]:
    p, a = spec.prefix, spec.attribute
    return {
        "count": [f"{p}_count"],
        "per_km2": [f"{p}_per_km2"],
        "sum": [f"{p}_{a}_sum"] if a else [],
        "mean": [f"{p}_{a}_mean"] if a else [],
        "per_capita": [f"{p}_per_{spec.per}"],
        "nearest": [f"{p}_nearest_m"],
    }


def compute_layer(
    spec: DistrictIndicators, entities: Sequence[dict[str, Any]], language: str = "ja"
) -> Layer:
    """The indicators of ``entities`` (simplified, with a ``location``) per district.

    The files are read again on each call, so a replaced boundary or population file is
    published without restarting a watch.
    """
    import numpy as np

    from opendata import gis

    try:
        districts = gis.read_districts(spec.districts, key=spec.id_column, encoding=spec.encoding)
        population = (
            gis.read_population(
                spec.population,
                key=spec.population_key,
                population=spec.population_column,
                encoding=spec.population_encoding,
            )
            if spec.population is not None
            else None
        )
    except Exception as exc:  # GDAL's, pandas' and our own errors about the files
        raise LayerInputError(
            f"{spec.key}: 地区または人口のファイルを読めません / cannot read the district or "
            f"population file: {exc}"
        ) from exc
    facilities = gis.entities_to_geodataframe(entities, lang=language)
    notes: list[str] = []
    where = spec.key
    if spec.attribute and spec.attribute not in facilities.columns:
        facilities[spec.attribute] = np.nan
        if len(facilities):
            notes.append(
                f"{where}: 属性 {spec.attribute} を持つエンティティがありません / "
                f"no entity has the attribute {spec.attribute}"
            )
    located = facilities.geometry.notna() & ~facilities.geometry.is_empty
    if (~located).any():
        n = int((~located).sum())
        notes.append(
            f"{where}: 位置（location）のないエンティティ {n} 件は数えません / "
            f"{n} entities without a location are not counted"
        )
    frame = gis.district_indicators(
        districts,
        facilities[located],
        key=spec.id_column,
        prefix=spec.prefix,
        attribute=spec.attribute,
        population=population,
        population_key=spec.population_key,
        population_column=spec.population_column,
        per=spec.per,
        nearest="nearest" in spec.indicators,
    )
    unwanted = [
        col
        for name, cols in _indicator_columns(spec).items()
        if name not in spec.indicators
        for col in cols
        if col in frame.columns
    ]
    attrs = dict(frame.attrs)
    frame = frame.drop(columns=unwanted)
    frame.attrs.update(attrs)
    if attrs.get("outside"):
        notes.append(
            f"{where}: どの地区にも入らないエンティティ {attrs['outside']} 件は数えません / "
            f"{attrs['outside']} entities outside every district are not counted"
        )
    if population is not None and "population" in frame.columns:
        unknown = frame.loc[frame["population"].isna(), spec.id_column].tolist()
        if unknown:
            notes.append(
                f"{where}: 人口の表にない地区 {len(unknown)} 件 / {len(unknown)} districts "
                f"are not in the population table: {', '.join(map(str, unknown[:5]))}"
            )
    layer = Layer(spec, frame, {}, notes)
    layer.files = gis.layer_resources(
        frame, id_column=spec.id_column, title=layer.title, description=layer.description
    )
    return layer


def render_layer_resource(spec: ResourceSpec, layer: Layer) -> Rendered:
    """One format of an aggregate layer as a resource to upload."""
    if spec.format == "geojson":
        return Rendered(spec, layer.files["geojson"], "application/geo+json")
    rows = list(csv.reader(io.StringIO(layer.files["csv"].decode("utf-8-sig"), newline="")))
    table = Table(rows[0], rows[1:])
    # the figures are numbers; the district key (a code with leading digits) stays text
    table.types = [
        "text"
        if header == layer.spec.id_column
        or not any(r[i] for r in table.rows)
        or not all(_reads_as(r[i], "numeric") for r in table.rows if r[i])
        else "numeric"
        for i, header in enumerate(table.headers)
    ]
    content, replacements, kept, cleaned = csv_bytes(table)
    return Rendered(spec, content, "text/csv", replacements, kept, cleaned)


def render_dataset(
    resources: Sequence[ResourceSpec], entities: Sequence[dict[str, Any]], language: str = "ja"
) -> tuple[list[Rendered], list[Layer]]:
    """Every resource of a dataset, in order, and the aggregate layers computed for them
    (each once, whatever the number of its formats)."""
    layers: dict[str, Layer] = {}
    rendered = []
    for spec in resources:
        if spec.aggregate is None:
            rendered.append(render_resource(spec, entities))
            continue
        layer = layers.get(spec.aggregate.key)
        if layer is None:
            layer = layers[spec.aggregate.key] = compute_layer(spec.aggregate, entities, language)
        rendered.append(render_layer_resource(spec, layer))
    return rendered, list(layers.values())
