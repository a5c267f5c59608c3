"""District polygons and population tables from the files municipalities have.

e-Stat's 町丁・字等 boundaries (境界データ) ship as Shapefiles whose DBF is CP932 with no
``.cpg`` beside it, so GDAL would read the names as Latin-1 mojibake. ``read_districts``
reads a ``.cpg`` when there is one and otherwise decodes the DBF as UTF-8 if it is
valid UTF-8, else as CP932. A file without a CRS (no ``.prj``) is taken as JGD2011
geographic (EPSG:6668), the datum of Japanese open data. Polygons come back in
EPSG:4326 like the hub's entities.
"""

from __future__ import annotations

import io
import struct
import zipfile
from os import PathLike
from pathlib import Path

import geopandas as gpd
import pandas as pd

__all__ = ["read_districts", "read_population"]

JGD2011 = "EPSG:6668"
WGS84 = "EPSG:4326"


def _dbf_encoding(shp: Path) -> str | None:
    """The encoding of a Shapefile's attribute table when no .cpg names it."""
    cpg = shp.with_suffix(".cpg")
    if cpg.exists() or shp.with_suffix(".CPG").exists():
        return None  # GDAL reads the .cpg itself
    dbf = next((p for p in (shp.with_suffix(".dbf"), shp.with_suffix(".DBF")) if p.exists()), None)
    return None if dbf is None else _text_encoding(dbf.read_bytes())


def _zipped_dbf_encoding(archive: Path) -> str | None:
    """The same for a zipped Shapefile, as e-Stat distributes them."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        lowered = {n.lower() for n in names}
        dbfs = [n for n in names if n.lower().endswith(".dbf")]
        if not dbfs or any(n[:-4] + ".cpg" in lowered for n in (d.lower() for d in dbfs)):
            return None
        return _text_encoding(zf.read(dbfs[0]))


def _text_encoding(raw: bytes) -> str:
    """UTF-8 if the DBF records decode as UTF-8, else CP932."""
    header_len = struct.unpack("<H", raw[8:10])[0] if len(raw) >= 10 else 0
    try:
        raw[header_len:].decode("utf-8")
    except UnicodeDecodeError:
        return "cp932"
    return "utf-8"


def read_districts(
    path: str | PathLike[str],
    *,
    encoding: str | None = None,
    key: str | None = None,
    layer: str | None = None,
    crs_if_missing: str = JGD2011,
) -> gpd.GeoDataFrame:
    """District polygons from a GeoJSON, Shapefile (also a .zip of one), GeoPackage, ... file.

    ``encoding`` overrides the attribute encoding (e.g. ``"cp932"``); ``key`` names
    the district code column, which is then read as text (codes keep leading zeros)
    and must be unique.
    """
    p = Path(path)
    if encoding is None and p.suffix.lower() == ".shp":
        encoding = _dbf_encoding(p)
    elif encoding is None and p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
        encoding = _zipped_dbf_encoding(p)
    gdf = gpd.read_file(p, encoding=encoding, layer=layer)
    if gdf.crs is None:
        gdf = gdf.set_crs(crs_if_missing)
    gdf = gdf.to_crs(WGS84)
    if key is not None:
        if key not in gdf.columns:
            raise KeyError(f"{p.name} has no column {key!r}; it has {list(gdf.columns)}")
        gdf[key] = gdf[key].astype(str)
        dup = gdf[key][gdf[key].duplicated()]
        if not dup.empty:
            raise ValueError(f"district key {key!r} repeats: {sorted(set(dup))[:5]}")
    return gdf


def read_population(
    source: str | PathLike[str] | bytes,
    *,
    key: str = "地域コード",
    population: str = "総人口",
    encoding: str | None = None,
) -> pd.DataFrame:
    """A population table (CSV, e.g. the standard 地域・年齢別人口 layout) keyed by district.

    The key column is read as text; counts written with thousands separators or
    spaces (``"4,315 "``, as some published files have) are read as integers. The
    encoding is UTF-8 (with or without BOM) unless the bytes only decode as CP932.
    """
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    if encoding is None:
        try:
            raw.decode("utf-8")
            encoding = "utf-8-sig"
        except UnicodeDecodeError:
            encoding = "cp932"
    table = pd.read_csv(io.BytesIO(raw), encoding=encoding, dtype=str, keep_default_na=False)
    for col in (key, population):
        if col not in table.columns:
            raise KeyError(f"population table has no column {col!r}; it has {list(table.columns)}")
    cleaned = table[population].str.replace(r"[,\s]", "", regex=True)
    table[population] = pd.to_numeric(cleaned.replace("", None)).astype("Int64")
    return table
