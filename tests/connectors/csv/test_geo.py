import pytest
from pyproj import Geod

from connectors.csv.geo import ZONES, from_wgs84, to_wgs84

GEOD = Geod(ellps="GRS80")


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(GEOD.inv(a[0], a[1], b[0], b[1])[2])


def test_zones_are_epsg_6669_to_6687() -> None:
    assert ZONES[1] == 6669
    assert ZONES[9] == 6677
    assert ZONES[19] == 6687


def test_origin_of_zone_ix_within_one_centimetre() -> None:
    # Zone IX (Tokyo) has its origin at 36°N 139°50'E.
    lon, lat = to_wgs84(0.0, 0.0, 9)
    assert metres((lon, lat), (139 + 50 / 60, 36.0)) < 0.01


def test_x_is_northing() -> None:
    lon, lat = to_wgs84(1000.0, 0.0, 9)
    assert lat > 36.0
    assert metres((lon, lat), (139 + 50 / 60, 36.0)) == pytest.approx(1000.0, abs=1.0)
    lon, lat = to_wgs84(0.0, 1000.0, 9)
    assert lon > 139 + 50 / 60
    assert lat == pytest.approx(36.0, abs=1e-4)


def test_round_trip_millimetre() -> None:
    x, y = -35000.123, -22000.456
    lon, lat = to_wgs84(x, y, 9)
    assert from_wgs84(lon, lat, 9) == pytest.approx((x, y), abs=0.001)


def test_unknown_zone() -> None:
    with pytest.raises(ValueError, match=r"1\.\.19"):
        to_wgs84(0.0, 0.0, 20)
