"""Geo-query parameters and the JSON geoQ form."""

from __future__ import annotations

import pytest

from broker.errors import BadRequestData
from broker.model.query import GeoQuery
from broker.query.geo import geo_query_from_json, parse_geo_query, parse_georel, resolve_geo

POINT = {"type": "Point", "coordinates": [139.76, 35.68]}


def test_absent_is_none() -> None:
    assert parse_geo_query(None, None, None, None) is None
    assert geo_query_from_json(None) is None


def test_near_point() -> None:
    geo = parse_geo_query("near;maxDistance==1000", "Point", "[139.76, 35.68]", None)
    assert geo == GeoQuery("near", POINT, "location", max_distance=1000.0)


@pytest.mark.parametrize(
    ("georel", "expected"),
    [
        ("near;maxDistance==0", ("near", 0.0, None)),
        ("near;minDistance==2.5", ("near", None, 2.5)),
        ("near;minDistance==10;maxDistance==1e3", ("near", 1000.0, 10.0)),
        ("within", ("within", None, None)),
        ("contains", ("contains", None, None)),
        ("intersects", ("intersects", None, None)),
        ("equals", ("equals", None, None)),
        ("disjoint", ("disjoint", None, None)),
        ("overlaps", ("overlaps", None, None)),
    ],
)
def test_georels(georel: str, expected: tuple[str, float | None, float | None]) -> None:
    assert parse_georel(georel) == expected


@pytest.mark.parametrize(
    ("georel", "message"),
    [
        ("near", "near needs maxDistance==N or minDistance==N"),
        ("near;maxDistance==-1", "must be a number of metres >= 0"),
        ("near;maxDistance==abc", "must be a number of metres >= 0"),
        ("near;maxDistance=1", "only near takes maxDistance==N or minDistance==N"),
        ("near;maxDistance==1;maxDistance==2", "maxDistance given twice"),
        ("near;maxDistance==1e999", "too large"),
        ("within;maxDistance==1", "only near takes"),
        ("touches", "expected one of near, within"),
        ("", "expected one of"),
    ],
)
def test_bad_georels(georel: str, message: str) -> None:
    with pytest.raises(BadRequestData, match=message):
        parse_georel(georel)


@pytest.mark.parametrize(
    ("geometry", "coordinates"),
    [
        ("Point", "[139.76,35.68]"),
        ("MultiPoint", "[[139.76,35.68],[139.77,35.69]]"),
        ("LineString", "[[139.76,35.68],[139.77,35.69]]"),
        ("MultiLineString", "[[[139.76,35.68],[139.77,35.69]]]"),
        ("Polygon", "[[[139.76,35.68],[139.77,35.68],[139.77,35.69],[139.76,35.68]]]"),
        ("MultiPolygon", "[[[[139.76,35.68],[139.77,35.68],[139.77,35.69],[139.76,35.68]]]]"),
        ("polygon", "[[[139.76,35.68],[139.77,35.68],[139.77,35.69],[139.76,35.68]]]"),
    ],
)
def test_geometries(geometry: str, coordinates: str) -> None:
    geo = parse_geo_query("intersects", geometry, coordinates, "observationSpace")
    assert geo is not None
    assert geo.geometry["type"].lower() == geometry.lower()
    assert geo.geoproperty == "observationSpace"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("near;maxDistance==1", None, None, None), "missing geometry, coordinates"),
        ((None, "Point", "[1,2]", None), "missing georel"),
        (("within", "Point", None, None), "missing coordinates"),
        ((None, None, None, "location"), "geoproperty needs a geo-query"),
        (("within", "Circle", "[1,2]", None), "invalid geometry 'Circle'"),
        (("within", "GeometryCollection", "[1,2]", None), "invalid geometry"),
        (("within", "Point", "[1,", None), "coordinates must be a JSON array"),
        (("within", "Point", "{}", None), "coordinates must be a JSON array"),
        (("within", "Point", "[200,0]", None), "outside longitude/latitude range"),
        (("within", "Point", "[1]", None), "a position must be"),
        (("within", "LineString", "[[1,2]]", None), "needs at least 2 positions"),
        (("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,1]]]", None), "not closed"),
        (("within", "Polygon", "[[[0,0],[1,1],[1,0],[0,1],[0,0]]]", None), "invalid Polygon"),
        (("within", "Point", "[1,2]", "bad name"), "invalid geoproperty"),
        (("nearby", "Point", "[1,2]", None), "invalid georel"),
    ],
)
def test_bad_parameters(
    args: tuple[str | None, str | None, str | None, str | None], message: str
) -> None:
    with pytest.raises(BadRequestData, match=message):
        parse_geo_query(*args)


def test_json_form() -> None:
    geo = geo_query_from_json(
        {"geometry": "Point", "coordinates": [139.76, 35.68], "georel": "near;minDistance==5"}
    )
    assert geo == GeoQuery("near", POINT, "location", min_distance=5.0)
    geo = geo_query_from_json(
        {
            "geometry": "Point",
            "coordinates": "[139.76,35.68]",
            "georel": "within",
            "geoproperty": "loc",
        }
    )
    assert geo == GeoQuery("within", POINT, "loc")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "geoQ must be a JSON object"),
        ({"geometry": "Point", "coordinates": [1, 2]}, "missing georel"),
        ({"georel": "within"}, "missing geometry, coordinates"),
        ({"georel": 5, "geometry": "Point", "coordinates": [1, 2]}, "georel must be a string"),
        ({"georel": "within", "geometry": 5, "coordinates": [1, 2]}, "invalid geometry"),
        (
            {"georel": "within", "geometry": "Point", "coordinates": [1, 2], "geoproperty": 1},
            "geoproperty must be a string",
        ),
        ({"georel": "within", "geometry": "Point", "coordinates": {"a": 1}}, "JSON array"),
    ],
)
def test_bad_json_form(obj: object, message: str) -> None:
    with pytest.raises(BadRequestData, match=message):
        geo_query_from_json(obj)


def test_resolve_geo() -> None:
    geo = GeoQuery("within", POINT)
    assert resolve_geo(geo, lambda t: f"https://uri.etsi.org/ngsi-ld/{t}").geoproperty == (
        "https://uri.etsi.org/ngsi-ld/location"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"georel": "near"},
        {"georel": "within", "max_distance": 1.0},
        {"georel": "near", "max_distance": -1.0},
        {"georel": "near", "min_distance": float("inf")},
        {"georel": "touches"},
    ],
)
def test_geo_query_invariants(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the messages vary
        GeoQuery(geometry=POINT, **kwargs)  # type: ignore[arg-type]
