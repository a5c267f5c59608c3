"""Parsing payloads into the internal form and rendering them back (clause 4.5, 5.2):
the representations a client asks for, in its own terms."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.core.model import Parser, View
from broker.errors import BadRequestData
from tests.broker.core.conftest import CONTEXT, NS, shelter

pytestmark = pytest.mark.anyio


async def test_concise_input_reads_as_normalized(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    ent = Parser(tm).entity(
        {"id": "urn:ngsi-ld:避難所:1", "type": "避難所", "名称": "狛江第1小学校", "収容人数": 120}
    )
    assert ent["type"] == [f"{NS}避難所"]
    assert ent[f"{NS}名称"][0]["type"] == "Property"
    assert ent[f"{NS}名称"][0]["value"] == "狛江第1小学校"


async def test_bad_payloads_are_400(hub: Hub) -> None:
    parser = Parser(await hub.term_map(CONTEXT))
    with pytest.raises(BadRequestData):
        parser.entity({"type": "避難所"})  # no id
    with pytest.raises(BadRequestData):
        parser.entity({"id": "urn:ngsi-ld:避難所:1"})  # no type
    with pytest.raises(BadRequestData):
        parser.entity({**shelter(1), "location": {"type": "GeoProperty", "value": "狛江"}})


async def test_each_representation(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    ent = Parser(tm).entity(shelter(1))
    normalized = View(tm).entity(ent)
    assert normalized["名称"] == {"type": "Property", "value": "狛江第1小学校"}
    key_values = View(tm, format="keyValues").entity(ent)
    assert key_values["収容人数"] == 120
    assert key_values["type"] == "避難所"
    concise = View(tm, format="concise").entity(ent)
    assert concise["収容人数"] == 120  # a Property with a value alone: just the value
    assert concise["location"] == {"value": {"type": "Point", "coordinates": [139.571, 35.63]}}


async def test_attrs_pick_and_omit_select_members(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    ent = Parser(tm).entity(shelter(1))
    only = View(tm, format="keyValues", attrs={f"{NS}収容人数"}).entity(ent)
    assert set(only) == {"id", "type", "収容人数"}
    picked = View(tm, format="keyValues", pick={"id": None, f"{NS}名称": None}).entity(ent)
    assert picked == {"id": "urn:ngsi-ld:避難所:狛江-001", "名称": "狛江第1小学校"}
    omitted = View(
        tm, format="keyValues", omit={"https://uri.etsi.org/ngsi-ld/location": None}
    ).entity(ent)
    assert "location" not in omitted


async def test_a_geojson_feature_carries_the_location_as_geometry(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    ent = Parser(tm).entity(shelter(1))
    feature = View(tm, format="keyValues").feature(ent, "https://uri.etsi.org/ngsi-ld/location")
    assert feature["type"] == "Feature"
    assert feature["geometry"] == {"type": "Point", "coordinates": [139.571, 35.63]}
    assert feature["properties"]["名称"] == "狛江第1小学校"
