"""EntityService (clause 5.6): writes as a client sees them, on a real SQLite store."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.errors import AlreadyExists, BadRequestData, ResourceNotFound
from tests.broker.core.conftest import CONTEXT, NS, shelter

pytestmark = pytest.mark.anyio


async def test_created_entity_reads_back_with_its_japanese_terms_expanded(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.entities.create("", shelter(1), tm)
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-001")
    assert got["type"] == [f"{NS}避難所"]
    assert got[f"{NS}名称"][0]["value"] == "狛江第1小学校"
    assert got[f"{NS}収容人数"][0]["value"] == 120
    assert tm.compact(f"{NS}収容人数") == "収容人数"


async def test_creating_the_same_id_twice_is_refused_and_keeps_the_first(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.entities.create("", shelter(1), tm)
    with pytest.raises(AlreadyExists):
        await hub.entities.create("", shelter(1, capacity=999), tm)
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-001")
    assert got[f"{NS}収容人数"][0]["value"] == 120


async def test_update_attrs_changes_only_the_named_attribute(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.entities.create("", shelter(2), tm)
    await hub.entities.update_attrs(
        "", "urn:ngsi-ld:避難所:狛江-002", {"収容人数": {"type": "Property", "value": 80}}, tm
    )
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-002")
    assert got[f"{NS}収容人数"][0]["value"] == 80
    assert got[f"{NS}名称"][0]["value"] == "狛江第2小学校"


async def test_deleted_attribute_and_entity_are_gone(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.entities.create("", shelter(3), tm)
    await hub.entities.delete_attr("", "urn:ngsi-ld:避難所:狛江-003", "収容人数", tm)
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-003")
    assert f"{NS}収容人数" not in got
    await hub.entities.delete("", "urn:ngsi-ld:避難所:狛江-003")
    with pytest.raises(ResourceNotFound):
        await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-003")


async def test_bad_input_is_refused_and_nothing_is_stored(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    with pytest.raises(BadRequestData):
        await hub.entities.create("", {**shelter(4), "id": "狛江の避難所"}, tm)  # not a URI
    rel = {"type": "Relationship"}  # a relationship without its object
    with pytest.raises(BadRequestData):
        await hub.entities.create("", {**shelter(5), "所在地区": rel}, tm)
    with pytest.raises(ResourceNotFound):
        await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-005")


async def test_tenants_do_not_see_each_other(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.entities.create("komae", shelter(6), tm)
    with pytest.raises(ResourceNotFound):
        await hub.entities.retrieve("chofu", "urn:ngsi-ld:避難所:狛江-006")
    assert (await hub.entities.retrieve("komae", "urn:ngsi-ld:避難所:狛江-006"))["id"]


async def test_linked_follows_relationships_up_to_the_levels_asked(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    district = {"id": "urn:ngsi-ld:地区:和泉本町", "type": "地区"}
    await hub.entities.create("", district, tm)
    rel = {"type": "Relationship", "object": "urn:ngsi-ld:地区:和泉本町"}
    await hub.entities.create("", shelter(7, 所在地区=rel), tm)
    root = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-007")
    assert set(await hub.entities.linked("", [root], 1)) == {
        "urn:ngsi-ld:避難所:狛江-007",
        "urn:ngsi-ld:地区:和泉本町",
    }
    assert set(await hub.entities.linked("", [root], 0)) == {"urn:ngsi-ld:避難所:狛江-007"}
