"""Coordinates: JGD2011 plane rectangular zones (平面直角座標系) to WGS84 longitude/latitude.

Zones I to XIX are EPSG:6669 to EPSG:6687. In these systems **X is the northing and Y the
easting** (the surveying convention), the reverse of the usual x/y. Positions are given
in JGD2011 and written as EPSG:4326 degrees; the two datums agree to far below a
centimetre, which is how Japanese open data treats them.
"""

from __future__ import annotations

from functools import cache

from pyproj import Transformer

__all__ = ["ZONES", "from_wgs84", "to_wgs84", "zone_epsg"]

#: Zone number (1..19) -> EPSG code of the JGD2011 plane rectangular system.
ZONES = {zone: 6668 + zone for zone in range(1, 20)}
_DEGREES = 9  # decimal places kept: 1e-9 degree is about 0.1 mm


def zone_epsg(zone: int) -> int:
    try:
        return ZONES[zone]
    except KeyError:
        raise ValueError(f"plane rectangular zone must be 1..19, not {zone}") from None


@cache
def _forward(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


@cache
def _inverse(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def to_wgs84(x: float, y: float, zone: int) -> tuple[float, float]:
    """(longitude, latitude) in degrees of the point at northing ``x``, easting ``y``."""
    lon, lat = _forward(zone_epsg(zone)).transform(y, x, errcheck=True)
    return round(lon, _DEGREES), round(lat, _DEGREES)


def from_wgs84(lon: float, lat: float, zone: int) -> tuple[float, float]:
    """(X northing, Y easting) in metres, rounded to the millimetre."""
    easting, northing = _inverse(zone_epsg(zone)).transform(lon, lat, errcheck=True)
    return round(northing, 3), round(easting, 3)
