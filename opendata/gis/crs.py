"""Which JGD2011 plane rectangular zone (平面直角座標系, EPSG:6669-6687) to measure in.

Areas, distances and centroids are computed in metres in the zone of the area: the
law assigns zones by prefecture (and, in Hokkaido, Tokyo's islands, Kagoshima and
Okinawa, by district). Given a 全国地方公共団体コード the prefecture's zones are used;
within a prefecture with several, and without a code, the zone whose origin is
nearest (mostly by longitude, which is what bounds a transverse Mercator zone's
scale error) is chosen. The result is accurate to far below what district statistics
need; pass the zone explicitly when a legal survey convention must be followed.
"""

from __future__ import annotations

import math

from pyproj import CRS

__all__ = ["ORIGINS", "PREFECTURE_ZONES", "plane_rectangular_crs", "zone_for"]

#: Zone -> (longitude, latitude) of its origin, degrees.
ORIGINS: dict[int, tuple[float, float]] = {
    1: (129.5, 33.0),
    2: (131.0, 33.0),
    3: (132 + 10 / 60, 36.0),
    4: (133.5, 33.0),
    5: (134 + 20 / 60, 36.0),
    6: (136.0, 36.0),
    7: (137 + 10 / 60, 36.0),
    8: (138.5, 36.0),
    9: (139 + 50 / 60, 36.0),
    10: (140 + 50 / 60, 40.0),
    11: (140.25, 44.0),
    12: (142.25, 44.0),
    13: (144.25, 44.0),
    14: (142.0, 26.0),
    15: (127.5, 26.0),
    16: (124.0, 26.0),
    17: (131.0, 26.0),
    18: (136.0, 20.0),
    19: (154.0, 26.0),
}

#: Prefecture code (first two digits of a local government code) -> its zones.
PREFECTURE_ZONES: dict[str, tuple[int, ...]] = {
    "01": (11, 12, 13),
    **{code: (10,) for code in ("02", "03", "04", "05", "06")},
    **{code: (9,) for code in ("07", "08", "09", "10", "11", "12", "14")},
    "13": (9, 14, 18, 19),
    **{code: (8,) for code in ("15", "19", "20", "22")},
    **{code: (7,) for code in ("16", "17", "21", "23")},
    **{code: (6,) for code in ("18", "24", "25", "26", "27", "29", "30")},
    **{code: (5,) for code in ("28", "31", "33")},
    **{code: (3,) for code in ("32", "34", "35")},
    **{code: (4,) for code in ("36", "37", "38", "39")},
    **{code: (2,) for code in ("40", "41", "43", "44", "45")},
    "42": (1,),
    "46": (2, 1),
    "47": (15, 16, 17),
}


def zone_for(lon: float, lat: float, lg_code: str | None = None) -> int:
    """The plane rectangular zone (1-19) for a point, optionally within a prefecture."""
    zones: tuple[int, ...] = tuple(ORIGINS)
    if lg_code:
        try:
            zones = PREFECTURE_ZONES[lg_code[:2]]
        except KeyError:
            raise ValueError(f"not a local government code: {lg_code!r}") from None

    def cost(zone: int) -> float:
        olon, olat = ORIGINS[zone]
        return abs(lon - olon) * math.cos(math.radians(lat)) + 0.2 * abs(lat - olat)

    return min(zones, key=cost)


def plane_rectangular_crs(
    lon: float, lat: float, lg_code: str | None = None, *, zone: int | None = None
) -> CRS:
    """The JGD2011 plane rectangular CRS (EPSG:6668 + zone) for a point or a given zone."""
    chosen = zone if zone is not None else zone_for(lon, lat, lg_code)
    if chosen not in ORIGINS:
        raise ValueError(f"plane rectangular zone must be 1..19, not {chosen}")
    return CRS.from_epsg(6668 + chosen)
