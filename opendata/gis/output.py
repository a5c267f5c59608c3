"""Aggregate layers as files: GeoJSON (RFC 7946) and CSV for open data portals.

Two hooks publish a layer computed here:

- ``layer_resources`` returns the bytes of each resource format, ready to hash and
  upload as CKAN resources (``renkei publish``);
- ``publish_layer`` writes the GeoJSON into the hub's OGC layers folder
  (``RENKEI_OGC_LAYERS_DIR``), where ``/ogc`` serves it as the collection
  ``layer~<name>``; the file is replaced atomically, so readers never see half of it.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import geopandas as gpd
import orjson
import pandas as pd

__all__ = [
    "layer_resources",
    "publish_layer",
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


def to_feature_collection(
    gdf: gpd.GeoDataFrame,
    *,
    id_column: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (RFC 7946: WGS84 longitude/latitude) of a frame.

    ``title`` and ``description`` are written as members of the collection; the hub's
    ``/ogc`` layers use them as the collection's title and description.
    """
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
        features.append(
            {
                "type": "Feature",
                "id": _jsonable(props.get(id_column) if id_column else idx),
                "geometry": geometry,
                "properties": {str(c): _jsonable(v) for c, v in props.items()},
            }
        )
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if title:
        collection["title"] = title
    if description:
        collection["description"] = description
    collection["features"] = features
    return collection


def to_geojson_bytes(
    gdf: gpd.GeoDataFrame,
    *,
    id_column: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> bytes:
    return orjson.dumps(
        to_feature_collection(gdf, id_column=id_column, title=title, description=description)
    )


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


def layer_resources(
    gdf: gpd.GeoDataFrame,
    *,
    id_column: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> dict[str, bytes]:
    """The layer in each open-data format: ``{"geojson": ..., "csv": ...}``."""
    return {
        "geojson": to_geojson_bytes(gdf, id_column=id_column, title=title, description=description),
        "csv": to_csv_bytes(gdf),
    }


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600; the hub (often another user) must read it
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_layer(
    gdf: gpd.GeoDataFrame,
    path: str | PathLike[str],
    *,
    id_column: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> Path:
    """Write the layer as ``.geojson``/``.json`` or ``.csv``, by the path's suffix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".geojson", ".json"):
        data = to_geojson_bytes(gdf, id_column=id_column, title=title, description=description)
    elif suffix == ".csv":
        data = to_csv_bytes(gdf)
    else:
        raise ValueError(f"write a layer as .geojson or .csv, not {p.name}")
    _replace(p, data)
    return p


_LAYER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def publish_layer(
    gdf: gpd.GeoDataFrame,
    layers_dir: str | PathLike[str],
    name: str,
    *,
    id_column: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> Path:
    """Put the layer in the hub's OGC layers folder as ``<name>.geojson``.

    The hub serves it at ``/ogc/collections/layer~<name>``; ``name`` is ASCII so the
    collection id stays a plain URL segment.
    """
    if not _LAYER_NAME.match(name):
        raise ValueError(f"layer name must be ASCII letters, digits, '_', '-', '.': {name!r}")
    folder = Path(layers_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return write_layer(
        gdf,
        folder / f"{name}.geojson",
        id_column=id_column,
        title=title,
        description=description,
    )
