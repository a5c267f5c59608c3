"""The SQLite store's geo check of a stored Point (``sqlindex.geo_match``) answers what the
reference evaluator answers, on its short way (two numbers: ``near`` a Point,
``within``/``intersects`` a rectangle) and on the general one (shapely)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model.query import GeoQuery
from broker.query.evaluate import haversine_m, matches_geo
from broker.store.sqlindex import _geo_row, _point_test, geo_match, register_geo, release_geo

LOC = "https://uri.etsi.org/ngsi-ld/location"

#: a grid fine enough that points fall on sides and corners of the boxes
COORD = st.integers(0, 12).map(lambda n: n / 1000)


@st.composite
def points(draw: st.DrawFn) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [139.7 + draw(COORD), 35.6 + draw(COORD)]}


@st.composite
def rectangles(draw: st.DrawFn) -> dict[str, Any]:
    x0, y0 = 139.7 + draw(COORD), 35.6 + draw(COORD)
    x1, y1 = x0 + draw(COORD.filter(bool)), y0 + draw(COORD.filter(bool))
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    if draw(st.booleans()):  # clockwise, starting from another corner
        ring = [[x1, y1], [x1, y0], [x0, y0], [x0, y1], [x1, y1]]
    return {"type": "Polygon", "coordinates": [ring]}


@st.composite
def other_polygons(draw: st.DrawFn) -> dict[str, Any]:
    """Polygons the short way must leave to shapely: a triangle, a box with a hole."""
    x0, y0 = 139.7 + draw(COORD), 35.6 + draw(COORD)
    if draw(st.booleans()):
        ring = [[x0, y0], [x0 + 0.01, y0], [x0, y0 + 0.01], [x0, y0]]
        return {"type": "Polygon", "coordinates": [ring]}
    outer = [[x0, y0], [x0 + 0.01, y0], [x0 + 0.01, y0 + 0.01], [x0, y0 + 0.01], [x0, y0]]
    hole = [
        [x0 + 0.002, y0 + 0.002],
        [x0 + 0.004, y0 + 0.002],
        [x0 + 0.004, y0 + 0.004],
        [x0 + 0.002, y0 + 0.004],
        [x0 + 0.002, y0 + 0.002],
    ]
    return {"type": "Polygon", "coordinates": [outer, hole]}


@st.composite
def geo_queries(draw: st.DrawFn, subject: dict[str, Any]) -> GeoQuery:
    rel = draw(st.sampled_from(["near", "within", "intersects", "contains", "disjoint"]))
    if rel == "near":
        geometry = draw(st.one_of(points(), rectangles()))
        d = float(draw(st.sampled_from([0, 50, 111.19, 500, 1500])))
        if geometry["type"] == "Point" and draw(st.booleans()):
            d = haversine_m(*geometry["coordinates"], *subject["coordinates"])  # on the edge
        if draw(st.booleans()):
            return GeoQuery("near", geometry, LOC, max_distance=d)
        return GeoQuery("near", geometry, LOC, min_distance=d)
    return GeoQuery(rel, draw(st.one_of(rectangles(), other_polygons(), points())), LOC)


@settings(max_examples=3000, deadline=None)
@given(data=st.data(), point=points())
def test_a_stored_point_matches_as_the_reference_says(
    data: st.DataObject, point: dict[str, Any]
) -> None:
    geo = data.draw(geo_queries(point))
    row = _geo_row(LOC, point)
    assert row is not None
    entity = {"id": "urn:ngsi-ld:避難所:1", LOC: [{"type": "GeoProperty", "value": point}]}
    qid = register_geo(geo)
    try:
        assert bool(geo_match(row.wkb, qid)) == matches_geo(geo, entity)
    finally:
        release_geo(qid)


def test_the_short_way_is_taken_for_points_and_rectangles_only() -> None:
    box = {
        "type": "Polygon",
        "coordinates": [
            [[139.7, 35.6], [139.8, 35.6], [139.8, 35.7], [139.7, 35.7], [139.7, 35.6]]
        ],
    }
    point = {"type": "Point", "coordinates": [139.7, 35.6]}
    assert _point_test(GeoQuery("near", point, LOC, max_distance=500.0)) is not None
    assert _point_test(GeoQuery("within", box, LOC)) is not None
    assert _point_test(GeoQuery("intersects", box, LOC)) is not None
    assert _point_test(GeoQuery("near", box, LOC, max_distance=500.0)) is None
    assert _point_test(GeoQuery("contains", box, LOC)) is None
    skewed = {
        "type": "Polygon",
        "coordinates": [
            [[139.7, 35.6], [139.8, 35.61], [139.8, 35.7], [139.7, 35.7], [139.7, 35.6]]
        ],
    }
    assert _point_test(GeoQuery("within", skewed, LOC)) is None
