"""DiscoveryService (clause 5.7.5-5.7.8): types and attributes present, in the
client's terms."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.errors import ResourceNotFound
from tests.broker.core.conftest import CONTEXT, NS, shelter

pytestmark = pytest.mark.anyio


async def test_types_and_their_attributes_in_the_clients_terms(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    for n in (1, 2):
        await hub.entities.create("", shelter(n), tm)
    listed = await hub.discovery.types("", tm, details=False)
    assert listed["typeList"] == ["避難所"]
    detailed = await hub.discovery.types("", tm, details=True)
    assert detailed[0]["typeName"] == "避難所"
    assert {"名称", "収容人数", "location"} <= set(detailed[0]["attributeNames"])


async def test_type_info_counts_entities_and_names_attribute_types(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    for n in (1, 2, 3):
        await hub.entities.create("", shelter(n), tm)
    info = await hub.discovery.type_info("", tm, "避難所")
    assert info["id"] == f"{NS}避難所"
    assert info["entityCount"] == 3
    kinds = {d["attributeName"]: d["attributeTypes"] for d in info["attributeDetails"]}
    assert kinds["収容人数"] == ["Property"]
    assert kinds["location"] == ["GeoProperty"]


async def test_an_absent_type_is_not_found(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    with pytest.raises(ResourceNotFound):
        await hub.discovery.type_info("", tm, "避難所")
    assert (await hub.discovery.types("", tm, details=False))["typeList"] == []
