"""NGSI v2 names, service paths and geo values on the NGSI-LD model (Orion's behaviour):
what a v2 client writes and reads back."""

from __future__ import annotations

import pytest

from broker.core.v2map import (
    from_geojson,
    in_paths,
    infer_type,
    query_paths,
    to_geojson,
    write_path,
)
from broker.errors import BadRequestData


def test_service_paths_of_writes_and_queries() -> None:
    assert write_path("/komae/bousai") == "/komae/bousai"
    assert write_path("/") is None  # the root: no scope
    assert write_path(None) is None
    assert query_paths("/komae/#, /chofu") == ["/komae/#", "/chofu"]
    assert query_paths("/#") is None  # every entity


@pytest.mark.parametrize(
    "header", ["komae", "/狛江", "/a,/b", "/komae/#", "/" + "/".join("abcdefghijk")]
)
def test_bad_service_paths_of_a_write_are_400(header: str) -> None:
    with pytest.raises(BadRequestData):
        write_path(header)


def test_an_entity_is_in_its_path_and_below_a_subtree() -> None:
    ent = {"id": "urn:ngsi-ld:避難所:1", "type": ["避難所"], "scope": ["/komae/bousai"]}
    assert in_paths(ent, ["/komae/bousai"])
    assert in_paths(ent, ["/komae/#"])
    assert not in_paths(ent, ["/komae"])
    assert not in_paths(ent, ["/chofu/#"])
    assert in_paths(ent, None)


def test_types_inferred_as_orion_does() -> None:
    assert [infer_type(v) for v in (None, True, 3, 2.5, "狛江", {"階": 3}, [1])] == [
        "None",
        "Boolean",
        "Number",
        "Number",
        "Text",
        "StructuredValue",
        "StructuredValue",
    ]


def test_geo_point_round_trips_in_lat_lon_order() -> None:
    geom = to_geojson("geo:point", "35.634, 139.578", "location")
    assert geom == {"type": "Point", "coordinates": [139.578, 35.634]}  # GeoJSON: lon, lat
    assert from_geojson("geo:point", geom) == "35.634, 139.578"


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("geo:point", "狛江市役所"),
        ("geo:point", "95, 139.5"),
        ("geo:line", ["35.6, 139.5"]),
        ("geo:box", ["35.6, 139.5"]),
    ],
)
def test_bad_geo_values_are_400(kind: str, value: object) -> None:
    with pytest.raises(BadRequestData):
        to_geojson(kind, value, "location")
