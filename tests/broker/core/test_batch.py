"""BatchService (clause 5.6.7-5.6.10): each entity succeeds or fails on its own."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.core.batch import BatchItem
from broker.errors import ResourceNotFound
from tests.broker.core.conftest import CONTEXT, NS, shelter

pytestmark = pytest.mark.anyio


async def test_a_bad_entity_fails_alone_and_the_others_are_created(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    items = [
        BatchItem(shelter(1), tm),
        BatchItem({**shelter(2), "id": "避難所2"}, tm),  # not a URI
        BatchItem(shelter(3), tm),
    ]
    result = await hub.batch.run("", "create", items, set())
    assert result.success == ["urn:ngsi-ld:避難所:狛江-001", "urn:ngsi-ld:避難所:狛江-003"]
    assert [e["entityId"] for e in result.errors] == ["避難所2"]
    assert result.errors[0]["error"]["status"] == 400
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-003")
    assert got[f"{NS}名称"][0]["value"] == "狛江第3小学校"


async def test_create_of_an_existing_entity_fails_for_that_entity(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.batch.run("", "create", [BatchItem(shelter(1), tm)], set())
    result = await hub.batch.run(
        "", "create", [BatchItem(shelter(1, capacity=5), tm), BatchItem(shelter(2), tm)], set()
    )
    assert result.success == ["urn:ngsi-ld:避難所:狛江-002"]
    assert result.errors[0]["error"]["status"] == 409
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-001")
    assert got[f"{NS}収容人数"][0]["value"] == 120


async def test_upsert_reports_which_entities_it_created(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.batch.run("", "create", [BatchItem(shelter(1), tm)], set())
    result = await hub.batch.run(
        "", "upsert", [BatchItem(shelter(1, capacity=200), tm), BatchItem(shelter(2), tm)], set()
    )
    assert sorted(result.success) == ["urn:ngsi-ld:避難所:狛江-001", "urn:ngsi-ld:避難所:狛江-002"]
    assert result.created == ["urn:ngsi-ld:避難所:狛江-002"]
    got = await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-001")
    assert got[f"{NS}収容人数"][0]["value"] == 200


async def test_delete_reports_missing_entities_and_deletes_the_others(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.batch.run("", "create", [BatchItem(shelter(1), tm)], set())
    result = await hub.batch.delete("", ["urn:ngsi-ld:避難所:狛江-001", "urn:ngsi-ld:避難所:無い"])
    assert result.success == ["urn:ngsi-ld:避難所:狛江-001"]
    assert [e["entityId"] for e in result.errors] == ["urn:ngsi-ld:避難所:無い"]
    assert result.errors[0]["error"]["status"] == 404
    with pytest.raises(ResourceNotFound):
        await hub.entities.retrieve("", "urn:ngsi-ld:避難所:狛江-001")
