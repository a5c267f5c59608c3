"""The reference evaluator on hand-made entities, one rule at a time."""

from __future__ import annotations

import math
from typing import Any

import pytest

from broker.model.query import GeoQuery
from broker.query.evaluate import (
    EARTH_RADIUS_M,
    distance_m,
    entity_geometry,
    haversine_m,
    matches_geo,
    matches_q,
)
from broker.query.qlang import parse_q, resolve_q

EX = "https://ex.org/"
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"


def expand(term: str) -> str:
    return term if ":" in term else EX + term


def q(text: str, entity: dict[str, Any]) -> bool:
    return matches_q(resolve_q(parse_q(text), expand), entity)


def prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def entity(**attrs: Any) -> dict[str, Any]:
    ent: dict[str, Any] = {"id": "urn:ngsi-ld:Thing:1", "type": [EX + "Thing"]}
    for name, instances in attrs.items():
        ent[EX + name] = instances if isinstance(instances, list) else [instances]
    return ent


# -- values and types -----------------------------------------------------------------------

NUM = entity(temp=prop(20), ratio=prop(0.5), flag=prop(True), name=prop("Komae"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temp==20", True),
        ("temp==20.0", True),
        ("temp!=20", False),
        ("temp!=21", True),
        ("temp>19", True),
        ("temp>20", False),
        ("temp>=20", True),
        ("temp<20.5", True),
        ("temp<=19.99", False),
        ("ratio==0.5", True),
        ("ratio<1", True),
        ("flag==true", True),
        ("flag!=false", True),
        ("flag==1", False),  # booleans are not numbers
        ("temp==true", False),
        ("name==Komae", True),
        ('name=="Komae"', True),
        ('name=="komae"', False),
        ('name>"Kamakura"', True),  # strings order lexicographically
        ('name<"Kamakura"', False),
        ('temp=="20"', False),  # a string never equals a number...
        ('temp!="20"', False),  # ...and != needs comparable values
        ("name!=5", False),
        ("name>5", False),
        ("temp==19..21", True),
        ("temp==20..20", True),
        ("temp==21..30", False),
        ("temp!=21..30", True),
        ("temp!=19..21", False),
        ('name=="K".."L"', True),
        ("name==1..5", False),
        ("name!=1..5", False),
        ("temp==1,20,30", True),
        ("temp==1,2,3", False),
        ("temp!=1,2,3", True),
        ("temp!=1,20", False),
        ('temp=="a",20', True),
        ('temp!="a","b"', False),  # comparable with no element
        ('temp!="a",5', True),
        ("name==urn:x:1,Komae", True),
    ],
)
def test_scalar_comparisons(text: str, expected: bool) -> None:
    assert q(text, NUM) is expected


def test_absent_attribute_matches_no_comparison() -> None:
    ent = entity(temp=prop(20))
    for text in ("humidity==1", "humidity!=1", "humidity>1", "humidity~=.", "humidity!~=x"):
        assert not q(text, ent), text
    assert not q("humidity", ent)
    assert q("!humidity", ent)
    assert q("temp", ent)
    assert not q("!temp", ent)


def test_patterns() -> None:
    ent = entity(name=prop("Komae-shi"), temp=prop(5))
    assert q("name~=mae", ent)  # search, not full match
    assert q("name~=^Ko.*shi$", ent)
    assert not q("name~=^mae", ent)
    assert q("name~=(?i)KOMAE", ent)
    assert q("name!~=Tokyo", ent)
    assert not q("name!~=Komae", ent)
    assert not q("temp~=5", ent)  # not a string
    assert not q("temp!~=x", ent)
    # RE2: a pattern that makes backtracking engines explode answers at once
    assert not q('name~="(a+)+b"', entity(name=prop("a" * 50_000 + "c")))


def test_any_instance_matches() -> None:
    ent = entity(
        temp=[
            prop(10, datasetId="urn:ngsi-ld:Dataset:a"),
            prop(30, datasetId="urn:ngsi-ld:Dataset:b"),
        ]
    )
    assert q("temp==10", ent)
    assert q("temp==30", ent)
    assert q("temp>25", ent)
    assert q("temp<15", ent)
    assert q("temp!=10", ent)  # the other instance differs
    assert not q("temp==20", ent)
    assert q("temp.datasetId==urn:ngsi-ld:Dataset:b", ent)
    assert not q("temp.datasetId==urn:ngsi-ld:Dataset:c", ent)


def test_list_values_match_any_element() -> None:
    ent = entity(tags=prop(["a", "b", 3]), nested=prop([[1, 2]]))
    assert q("tags==a", ent)
    assert q("tags==3", ent)
    assert q("tags!=a", ent)  # "b" differs
    assert q("tags~=^b$", ent)
    assert not q("tags==c", ent)
    assert not q("nested==1", ent)  # one level only
    assert q("tags", ent)


def test_attribute_types() -> None:
    ent = entity(
        owner={"type": "Relationship", "object": "urn:ngsi-ld:Person:1"},
        links={"type": "Relationship", "object": ["urn:ngsi-ld:A:1", "urn:ngsi-ld:A:2"]},
        label={
            "type": "LanguageProperty",
            "languageMap": {"en": "Town hall", "ja": ["市役所", "役場"]},
        },
        category={"type": "VocabProperty", "vocab": EX + "Public"},
        cats={"type": "VocabProperty", "vocab": [EX + "A", EX + "B"]},
        doc={"type": "JsonProperty", "json": {"a": {"b": 1}, "list": [{"k": "x"}, {"k": "y"}]}},
        readings={"type": "ListProperty", "valueList": [1, 5, 9]},
        route={
            "type": "ListRelationship",
            "objectList": [{"object": "urn:ngsi-ld:S:1"}, "urn:ngsi-ld:S:2"],
        },
        untyped={"value": 7},
    )
    assert q("owner==urn:ngsi-ld:Person:1", ent)
    assert q('owner=="urn:ngsi-ld:Person:1"', ent)
    assert q("owner.object==urn:ngsi-ld:Person:1", ent)
    assert not q("owner==urn:ngsi-ld:Person:2", ent)
    assert q("links==urn:ngsi-ld:A:2", ent)
    assert q('label=="Town hall"', ent)
    assert q("label==役場", ent)
    assert q("label[ja]==市役所", ent)
    assert not q('label[ja]=="Town hall"', ent)
    assert q("label[en]", ent)
    assert not q("label[fr]", ent)
    assert q(f"category=={EX}Public", ent)
    assert q(f"cats=={EX}B", ent)
    assert q("doc[a][b]==1", ent)
    assert q("doc[list][k]==y", ent)  # keys go through lists
    assert not q("doc[a]==1", ent)  # an object compares with nothing
    assert q("doc[a]", ent)
    assert not q("doc[z]", ent)
    assert q("readings>8", ent)
    assert q("readings==5", ent)
    assert not q("readings>9", ent)
    assert q("route==urn:ngsi-ld:S:1", ent)
    assert q("route==urn:ngsi-ld:S:2", ent)
    assert q("untyped==7", ent)


def test_json_keys_in_property_values() -> None:
    ent = entity(
        address=prop({"city": "Komae", "zip": None, "lines": ["a", "b"]}),
        items=prop([{"n": 1}, {"n": 2}, "x"]),
        location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [139.0, 35.0]}},
    )
    assert q("address[city]==Komae", ent)
    assert q("address[zip]", ent)  # present, even as null
    assert not q("address[zip]==1", ent)
    assert not q("address[zip]!=1", ent)
    assert q("address[lines]==b", ent)
    assert not q("address[city][x]", ent)
    assert q("items[n]==2", ent)
    assert not q("items[n]==3", ent)
    assert q("location[type]==Point", ent)
    assert q("location[coordinates]==139.0", ent)


def test_sub_attributes_and_meta_members() -> None:
    ent = entity(
        temp=prop(
            20,
            observedAt="2024-04-01T09:00:00+09:00",
            unitCode="CEL",
            createdAt="2024-04-01T00:00:00.000000Z",
            modifiedAt="2024-04-02T00:00:00.000000Z",
            **{
                EX + "accuracy": prop(
                    0.5,
                    **{EX + "method": prop("calibrated"), "observedAt": "2024-03-01T00:00:00Z"},
                ),
                EX + "sensor": {"type": "Relationship", "object": "urn:ngsi-ld:Sensor:1"},
            },
        )
    )
    assert q("temp.accuracy==0.5", ent)
    assert q("temp.accuracy<1", ent)
    assert q("temp.accuracy.value<1", ent)
    assert q("temp.accuracy.method==calibrated", ent)
    assert q("temp.sensor==urn:ngsi-ld:Sensor:1", ent)
    assert q("temp.accuracy", ent)
    assert q("temp.accuracy.method", ent)
    assert not q("temp.precision", ent)
    assert q("!temp.precision", ent)
    assert not q("temp.precision!=1", ent)
    assert q("temp.unitCode==CEL", ent)
    assert q("temp.observedAt", ent)
    assert not q("temp.datasetId", ent)
    # 09:00+09:00 is 00:00Z: both sides are normalised to UTC.
    assert q("temp.observedAt==2024-04-01T00:00:00Z", ent)
    assert q("temp.observedAt>2024-03-31T23:59:59Z", ent)
    assert q("temp.observedAt<2024-04-01T00:00:01Z", ent)
    assert q("temp.observedAt==2024-03-31T00:00Z..2024-04-01T00:00Z", ent)
    assert q("temp.createdAt<2024-04-01T00:00:01Z;temp.modifiedAt>=2024-04-02T00:00:00Z", ent)
    assert q("temp.accuracy.observedAt<2024-04-01T00:00:00Z", ent)
    assert not q('temp.observedAt=="2024-04-01T00:00:00Z"', ent)  # quoted: a string


def test_temporal_literals() -> None:
    ent = entity(
        day=prop("2024-04-01"),
        at=prop("2024-04-01T12:00:00.5"),
        opens=prop("09:00:00+09:00"),
        closes=prop("18:00"),
        text=prop("soon"),
    )
    assert q("day==2024-04-01", ent)
    assert q("day>2024-03-31", ent)
    assert q("day==2024-01-01..2024-12-31", ent)
    assert not q("day==2024-04-01T00:00:00Z", ent)  # a date is not a date-time
    assert not q("day!=2024-04-01T00:00:00Z", ent)
    assert q("at>2024-04-01T12:00:00Z", ent)  # no offset means UTC
    assert q("at==2024-04-01T21:00:00.5+09:00", ent)
    assert not q("at==2024-04-01", ent)
    assert q("opens==00:00Z", ent)
    assert q("opens<01:00", ent)
    assert q("closes==17:00..19:00", ent)
    assert q("closes==18:00:00+00:00", ent)
    assert not q("text>2024-01-01", ent)
    assert not q("text!=12:00", ent)


def test_boolean_structure() -> None:
    ent = entity(temp=prop(20), name=prop("Komae"))
    assert q("temp>10;name==Komae", ent)
    assert not q("temp>30;name==Komae", ent)
    assert q("temp>30|name==Komae", ent)
    assert not q("temp>30|name==Tokyo", ent)
    assert q("(temp>30|name==Komae);!humidity", ent)
    assert not q("(temp>30|name==Komae);humidity", ent)


# -- geo ------------------------------------------------------------------------------------

TOKYO = (139.76, 35.68)
KM_DEG = math.degrees(1000 / EARTH_RADIUS_M)  # one kilometre of latitude, in degrees


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def square(lon: float, lat: float, size: float) -> dict[str, Any]:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


def located(geometry: dict[str, Any], attr: str = NGSI_LD + "location") -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Place:1",
        "type": [EX + "Place"],
        attr: [{"type": "GeoProperty", "value": geometry}],
    }


def near(
    geometry: dict[str, Any], max_d: float | None = None, min_d: float | None = None
) -> GeoQuery:
    return GeoQuery("near", geometry, NGSI_LD + "location", max_distance=max_d, min_distance=min_d)


def test_haversine_known_distances() -> None:
    lon, lat = TOKYO
    assert haversine_m(lon, lat, lon, lat + KM_DEG) == pytest.approx(1000, abs=1e-6)
    # One degree of longitude at 35.68N is cos(35.68deg) of a degree at the equator.
    expected = math.radians(1) * EARTH_RADIUS_M * math.cos(math.radians(lat))
    assert haversine_m(lon, lat, lon + 1, lat) == pytest.approx(expected, rel=1e-4)
    assert haversine_m(0, 0, 180, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_near_points_one_km_apart_in_tokyo() -> None:
    lon, lat = TOKYO
    ent = located(point(lon, lat + KM_DEG))
    here = point(lon, lat)
    assert distance_m(here, point(lon, lat + KM_DEG)) == pytest.approx(1000, abs=1e-6)
    assert matches_geo(near(here, max_d=1000.5), ent)
    assert not matches_geo(near(here, max_d=999.5), ent)
    assert matches_geo(near(here, min_d=999.5), ent)
    assert not matches_geo(near(here, min_d=1000.5), ent)
    assert matches_geo(near(here, max_d=1001, min_d=999), ent)
    assert not matches_geo(near(here, max_d=2000, min_d=1001), ent)


def test_near_uses_nearest_points_of_other_geometries() -> None:
    lon, lat = TOKYO
    ent = located(square(lon, lat, 0.01))
    below = point(lon + 0.005, lat - KM_DEG / 2)  # 500 m south of the bottom edge
    assert matches_geo(near(below, max_d=501), ent)
    assert not matches_geo(near(below, max_d=499), ent)
    inside = point(lon + 0.005, lat + 0.005)
    assert matches_geo(near(inside, max_d=0), ent)
    assert not matches_geo(near(inside, min_d=1), ent)
    line = {"type": "LineString", "coordinates": [[lon - 1, lat - KM_DEG], [lon + 1, lat - KM_DEG]]}
    assert matches_geo(near(line, max_d=1000.5), ent)
    assert not matches_geo(near(line, max_d=999.5), ent)


@pytest.mark.parametrize(
    ("georel", "entity_geometry_", "query_geometry", "expected"),
    [
        ("within", point(139.765, 35.685), square(139.76, 35.68, 0.01), True),
        ("within", point(139.8, 35.685), square(139.76, 35.68, 0.01), False),
        ("within", square(139.76, 35.68, 0.01), point(139.765, 35.685), False),
        ("contains", square(139.76, 35.68, 0.01), point(139.765, 35.685), True),
        ("contains", point(139.765, 35.685), square(139.76, 35.68, 0.01), False),
        ("intersects", square(139.76, 35.68, 0.01), square(139.765, 35.685, 0.01), True),
        ("intersects", square(139.76, 35.68, 0.01), square(139.8, 35.8, 0.01), False),
        ("disjoint", square(139.76, 35.68, 0.01), square(139.8, 35.8, 0.01), True),
        ("disjoint", square(139.76, 35.68, 0.01), square(139.765, 35.685, 0.01), False),
        ("overlaps", square(139.76, 35.68, 0.01), square(139.765, 35.685, 0.01), True),
        ("overlaps", square(139.76, 35.68, 0.01), square(139.761, 35.681, 0.001), False),
        ("equals", square(139.76, 35.68, 0.01), square(139.76, 35.68, 0.01), True),
        ("equals", point(139.76, 35.68), point(139.76, 35.68), True),
        ("equals", point(139.76, 35.68), point(139.76, 35.681), False),
    ],
)
def test_relations(
    georel: str, entity_geometry_: dict[str, Any], query_geometry: dict[str, Any], expected: bool
) -> None:
    geo = GeoQuery(georel, query_geometry, NGSI_LD + "location")
    assert matches_geo(geo, located(entity_geometry_)) is expected


def test_which_geometry_is_used() -> None:
    here = point(*TOKYO)
    query = near(here, max_d=10)
    assert not matches_geo(query, {"id": "urn:ngsi-ld:Place:1", "type": [EX + "Place"]})
    assert matches_geo(query, located(here))
    other = located(here, EX + "servedArea")
    assert not matches_geo(query, other)
    assert matches_geo(GeoQuery("near", here, EX + "servedArea", max_distance=10), other)
    # The first GeoProperty instance counts; a Property holding coordinates does not.
    ent: dict[str, Any] = {
        "id": "urn:ngsi-ld:Place:1",
        "type": [EX + "Place"],
        NGSI_LD + "location": [
            {"type": "Property", "value": "somewhere"},
            {"type": "GeoProperty", "value": point(0, 0), "datasetId": "urn:ngsi-ld:Dataset:a"},
            {"type": "GeoProperty", "value": here, "datasetId": "urn:ngsi-ld:Dataset:b"},
        ],
    }
    assert entity_geometry(ent, NGSI_LD + "location") == point(0, 0)
    assert not matches_geo(query, ent)
    ent[NGSI_LD + "location"][1]["value"] = "urn:ngsi-ld:null"
    assert entity_geometry(ent, NGSI_LD + "location") is None
