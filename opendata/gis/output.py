"""Aggregate layers as files: GeoJSON (RFC 7946) and CSV for open data portals.

``layer_resources`` is the hook for publishing: it returns the bytes of each resource
format, ready to hash and upload (``renkei publish``) or to write next to a dataset.
"""

from __future__ import annotations

import io
import math
from os import PathLike
from pathlib import Path
from typing import Any

import geopandas as gpd
import orjson
import pandas as pd

__all__ = [
    "layer_resources",
    "to_csv_bytes",
    "to_feature_collection",
    "to_geojson_bytes",
    "write_layer",
]

WGS84 = "EPSG:4326"
_DIGITS = 7  # decimal places of degrees kept: about a centimetre


def _jsonable(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def _rounded(coords: Any) -> Any:
    if isinstance(coords, float | int):
        return round(float(coords), _DIGITS)
    return [_rounded(c) for c in coords]


def to_feature_collection(gdf: gpd.GeoDataFrame, *, id_column: str | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (RFC 7946: WGS84 longitude/latitude) of a frame."""
    frame = gdf.to_crs(WGS84) if gdf.crs is not None else gdf
    geom_name = frame.geometry.name
    records: list[dict[Any, Any]] = pd.DataFrame(frame.drop(columns=geom_name)).to_dict(
        orient="records"
    )
    features = []
    for idx, geom, props in zip(frame.index, frame.geometry, records, strict=True):
        geometry = None
        if geom is not None and not geom.is_empty:
            mapping = dict(geom.__geo_interface__)
            if "coordinates" in mapping:
                mapping["coordinates"] = _rounded(mapping["coordinates"])
            geometry = mapping
        feature: dict[str, Any] = {
            "type": "Feature",
            "id": _jsonable(props.get(id_column) if id_column else idx),
            "geometry": geometry,
            "properties": {str(c): _jsonable(v) for c, v in props.items()},
        }
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def to_geojson_bytes(gdf: gpd.GeoDataFrame, *, id_column: str | None = None) -> bytes:
    return orjson.dumps(to_feature_collection(gdf, id_column=id_column))


def to_csv_bytes(gdf: gpd.GeoDataFrame) -> bytes:
    """CSV (UTF-8 with BOM, as Japanese government data rules ask) without geometry.

    Each row carries the longitude/latitude of a point inside its geometry
    (``representative_point``), so the table can be mapped without the polygons.
    """
    frame = gdf.to_crs(WGS84) if gdf.crs is not None else gdf
    table = pd.DataFrame(frame.drop(columns=frame.geometry.name)).round(6)
    points = frame.geometry.representative_point()
    table["経度_longitude"] = points.x.round(_DIGITS)
    table["緯度_latitude"] = points.y.round(_DIGITS)
    buf = io.StringIO()
    table.to_csv(buf, index=False, lineterminator="\r\n")
    return buf.getvalue().encode("utf-8-sig")


def layer_resources(gdf: gpd.GeoDataFrame, *, id_column: str | None = None) -> dict[str, bytes]:
    """The layer in each open-data format: ``{"geojson": ..., "csv": ...}``."""
    return {"geojson": to_geojson_bytes(gdf, id_column=id_column), "csv": to_csv_bytes(gdf)}


def write_layer(
    gdf: gpd.GeoDataFrame, path: str | PathLike[str], *, id_column: str | None = None
) -> Path:
    """Write the layer as ``.geojson``/``.json`` or ``.csv``, by the path's suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".geojson", ".json"):
        p.write_bytes(to_geojson_bytes(gdf, id_column=id_column))
    elif suffix == ".csv":
        p.write_bytes(to_csv_bytes(gdf))
    else:
        raise ValueError(f"write a layer as .geojson or .csv, not {p.name}")
    return p
