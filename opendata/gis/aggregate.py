"""District indicators by spatial join, computed in metres.

Everything is measured in the JGD2011 plane rectangular zone of the area (see
``opendata.gis.crs``), never in degrees; results come back in EPSG:4326.

A point on the shared edge of two districts belongs to exactly one of them (the first
in the districts' order), so counts add up to the number of points inside the area;
points outside every district are left out and counted in
``result.attrs["outside"]``.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS

from opendata.gis.crs import plane_rectangular_crs

__all__ = [
    "assign_districts",
    "district_indicators",
    "nearest_distance",
    "per_capita",
    "projected_crs",
]

WGS84 = "EPSG:4326"


def projected_crs(
    *frames: gpd.GeoDataFrame, lg_code: str | None = None, zone: int | None = None
) -> CRS:
    """The plane rectangular CRS for the area the frames cover together."""
    if zone is not None:
        return plane_rectangular_crs(0.0, 0.0, zone=zone)
    bounds = np.array([f.to_crs(WGS84).total_bounds for f in frames if not f.empty])
    if bounds.size == 0 or not np.isfinite(bounds).all():
        raise ValueError("no geometries to choose a projected CRS from")
    lon = (bounds[:, 0].min() + bounds[:, 2].max()) / 2
    lat = (bounds[:, 1].min() + bounds[:, 3].max()) / 2
    return plane_rectangular_crs(float(lon), float(lat), lg_code)


def assign_districts(
    districts: gpd.GeoDataFrame, points: gpd.GeoDataFrame, *, key: str
) -> pd.Series:
    """The district key of each point (index of ``points``); NaN outside every district."""
    if points.crs is None:
        raise ValueError("points have no CRS")
    pts = points[points.geometry.notna() & ~points.geometry.is_empty]
    joined = gpd.sjoin(
        pts[[pts.geometry.name]],
        districts[[key, districts.geometry.name]].to_crs(points.crs),
        how="left",
        predicate="intersects",
    )
    # order by the districts' own order so a boundary point goes to the first district
    order = pd.Series(range(len(districts)), index=districts[key].to_numpy())
    joined["_rank"] = joined[key].map(order)
    joined = joined.sort_values("_rank", kind="stable")
    first = joined[~joined.index.duplicated(keep="first")]
    return first[key].reindex(points.index)


def nearest_distance(
    districts: gpd.GeoDataFrame, facilities: gpd.GeoDataFrame, crs: CRS
) -> pd.Series:
    """Metres from each district's centroid to the nearest facility (NaN if none)."""
    if facilities.empty:
        return pd.Series(np.nan, index=districts.index, dtype="float64")
    centroids = gpd.GeoDataFrame(geometry=districts.to_crs(crs).geometry.centroid, crs=crs)
    targets = facilities[facilities.geometry.notna()].to_crs(crs)
    joined = gpd.sjoin_nearest(
        centroids, targets[[targets.geometry.name]], how="left", distance_col="_distance"
    )
    return joined.groupby(level=0)["_distance"].min().reindex(districts.index).astype("float64")


def per_capita(values: pd.Series, population: pd.Series, per: int = 1000) -> pd.Series:
    """``values`` per ``per`` residents; NaN where the population is unknown or zero."""
    pop = pd.to_numeric(population, errors="coerce").astype("float64")
    pop = pop.where(pop > 0)
    return (pd.to_numeric(values).astype("float64") / pop * per).astype("float64")


def district_indicators(
    districts: gpd.GeoDataFrame,
    facilities: gpd.GeoDataFrame,
    *,
    key: str,
    prefix: str = "facility",
    attribute: str | None = None,
    population: pd.DataFrame | None = None,
    population_key: str = "地域コード",
    population_column: str = "総人口",
    per: int = 1000,
    nearest: bool = True,
    lg_code: str | None = None,
    zone: int | None = None,
) -> gpd.GeoDataFrame:
    """Indicators of ``facilities`` (points) per district, one row per district.

    Columns added to the districts' own (``prefix`` = ``facility`` by default):

    - ``area_km2``: district area;
    - ``<prefix>_count``: facilities in the district, and ``<prefix>_per_km2``;
    - ``<prefix>_<attribute>_sum`` / ``_mean``: of a numeric facility attribute;
    - ``population`` (from ``population``, joined on ``key`` = ``population_key``) and
      ``<prefix>_per_<per>``, e.g. AEDs per 1,000 residents;
    - ``<prefix>_nearest_m``: metres from the district centroid to the nearest
      facility anywhere (also outside the district).

    ``result.attrs`` records the CRS measured in (``measured_crs``) and how many
    facilities fell outside every district (``outside``).
    """
    if key not in districts.columns:
        raise KeyError(f"districts have no column {key!r}")
    if attribute is not None and attribute not in facilities.columns:
        raise KeyError(f"facilities have no column {attribute!r}")
    crs = projected_crs(districts, facilities, lg_code=lg_code, zone=zone)
    zones = districts.to_crs(crs)
    points = facilities.to_crs(crs) if not facilities.empty else facilities
    out = districts.to_crs(WGS84).copy()
    out[key] = out[key].astype(str)
    out["area_km2"] = (zones.geometry.area / 1e6).to_numpy()

    where = (
        assign_districts(zones.assign(**{key: out[key].to_numpy()}), points, key=key)
        if not points.empty
        else pd.Series([], dtype=object)
    )
    counts = where.value_counts()
    out[f"{prefix}_count"] = out[key].map(counts).fillna(0).astype("int64")
    out[f"{prefix}_per_km2"] = out[f"{prefix}_count"] / out["area_km2"]
    if attribute is not None:
        values = pd.to_numeric(facilities[attribute], errors="coerce")
        grouped = values.groupby(where)
        out[f"{prefix}_{attribute}_sum"] = out[key].map(grouped.sum()).fillna(0).astype("float64")
        out[f"{prefix}_{attribute}_mean"] = out[key].map(grouped.mean()).astype("float64")
    if population is not None:
        pops = (
            population.assign(_key=population[population_key].astype(str))
            .drop_duplicates("_key")
            .set_index("_key")[population_column]
        )
        out["population"] = out[key].map(pops).astype("Int64")
        out[f"{prefix}_per_{per}"] = per_capita(out[f"{prefix}_count"], out["population"], per)
    if nearest:
        out[f"{prefix}_nearest_m"] = nearest_distance(zones, points, crs).to_numpy()
    attrs: dict[str, Any] = {
        "measured_crs": f"EPSG:{crs.to_epsg()}",
        "outside": int(where.isna().sum()) if len(where) else 0,
    }
    out.attrs.update(attrs)
    return out
