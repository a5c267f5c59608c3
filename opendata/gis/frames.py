"""NGSI-LD entities to a GeoDataFrame with the column types an analyst expects.

One row per entity, ``id`` and ``type`` first, then one column per attribute:

- Property: its ``value``; a DateTime value (``{"@type": "DateTime", ...}``) or a string
  column whose every value is an ISO 8601 date-time becomes ``datetime64[ns, UTC]``.
- ``observedAt`` of an attribute: a column ``<attr>_observedAt`` (UTC, tz-aware).
- LanguageProperty: the string in ``lang`` (else the first language given).
- Relationship: the target id (``object``); ListRelationship: the list of ids.
- VocabProperty / ListProperty / JsonProperty: ``vocab`` / ``valueList`` / ``json``.
- GeoProperty: the geometry named by ``geometry`` becomes the frame's geometry
  (EPSG:4326, as NGSI-LD coordinates are WGS84); any other becomes a shapely column.

Text is ``string``, numbers are numeric (``int64``, ``Int64`` with gaps, or ``float64``), booleans
``bool``/``boolean``. Units (``unitCode``) are kept in ``frame.attrs["unitCode"]``.
Normalized, concise and keyValues representations are all accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import geopandas as gpd
import pandas as pd
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from broker.shared import GEOMETRY_TYPES

__all__ = ["entities_to_geodataframe"]

WGS84 = "EPSG:4326"
_ISO_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$"
)
_NOT_ATTRIBUTES = {"id", "type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt"}


def _is_geojson(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") in GEOMETRY_TYPES


def _default_instance(attr: Any) -> Any:
    """A multi-attribute's default instance (no datasetId), else its first."""
    if isinstance(attr, list) and attr and all(isinstance(a, dict) for a in attr):
        for inst in attr:
            if "datasetId" not in inst:
                return inst
        return attr[0]
    return attr


def _value(attr: Any, lang: str | None) -> tuple[Any, Any, Any]:
    """(value, observedAt, unitCode) of one attribute in any representation."""
    attr = _default_instance(attr)
    if not isinstance(attr, dict) or _is_geojson(attr):
        return attr, None, None
    observed, unit = attr.get("observedAt"), attr.get("unitCode")
    if "languageMap" in attr:
        lmap = attr["languageMap"]
        if isinstance(lmap, dict) and lmap:
            value = lmap.get(lang) if lang else None
            return (value if value is not None else next(iter(lmap.values()))), observed, unit
        return None, observed, unit
    for key in ("value", "object", "vocab", "valueList", "objectList", "json"):
        if key in attr:
            value = attr[key]
            if key == "objectList" and isinstance(value, list):
                value = [o.get("object") if isinstance(o, dict) else o for o in value]
            if isinstance(value, dict) and value.get("@type") == "DateTime":
                value = pd.Timestamp(value["@value"])
            return value, observed, unit
    return attr, observed, unit  # keyValues value that is itself an object


def _typed(column: pd.Series) -> pd.Series:
    """The narrowest sensible dtype for a column of Python values."""
    present = column.dropna()
    if present.empty:
        return column
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return column.astype("boolean" if len(present) < len(column) else bool)
    if kinds <= {int, float} and bool not in kinds:
        if kinds == {int}:
            return column.astype("Int64" if len(present) < len(column) else "int64")
        return pd.to_numeric(column).astype("float64")
    if kinds <= {str}:
        if all(_ISO_DATETIME.match(v) for v in present):
            return pd.to_datetime(column, utc=True, format="ISO8601")
        return column.astype("string")
    if all(isinstance(v, pd.Timestamp) for v in present):
        return pd.to_datetime(column, utc=True)
    return column


def entities_to_geodataframe(
    entities: Iterable[dict[str, Any]],
    *,
    geometry: str = "location",
    lang: str | None = "ja",
) -> gpd.GeoDataFrame:
    """A GeoDataFrame of NGSI-LD entities; see the module docstring for the columns."""
    rows: list[dict[str, Any]] = []
    geoms: list[Any] = []
    units: dict[str, str] = {}
    for ent in entities:
        row: dict[str, Any] = {"id": ent.get("id"), "type": ent.get("type")}
        geom: BaseGeometry | None = None
        for name, attr in ent.items():
            if name in _NOT_ATTRIBUTES:
                continue
            value, observed, unit = _value(attr, lang)
            if _is_geojson(value):
                value = shape(value)
                if name == geometry:
                    geom = value
                    continue
            row[name] = value
            if observed is not None:
                row[f"{name}_observedAt"] = observed
            if unit is not None:
                units.setdefault(name, str(unit))
        rows.append(row)
        geoms.append(geom)
    columns: dict[str, pd.Series] = {}
    for name in _columns(rows):
        raw = pd.Series([row.get(name) for row in rows], dtype=object)
        if name.endswith("_observedAt"):
            columns[name] = pd.to_datetime(raw, utc=True, format="ISO8601")
        else:
            columns[name] = _typed(raw)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, crs=WGS84), crs=WGS84)
    gdf.attrs["unitCode"] = units
    return gdf


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {"id": None, "type": None}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)
