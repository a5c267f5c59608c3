"""V2Service (NGSI v2, Orion's behaviour) on the same store as NGSI-LD: what a v2
client writes is what it reads, under its service path."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.core.v2entities import Target, Unprocessable, V2Service
from broker.core.v2map import V2Mapper
from broker.errors import ResourceNotFound

pytestmark = pytest.mark.anyio

SHELTER = {
    "id": "Hinanjo-001",
    "type": "Hinanjo",
    "name": {"type": "Text", "value": "狛江第1小学校"},
    "capacity": {"type": "Number", "value": 120, "metadata": {"unit": {"value": "人"}}},
    "location": {"type": "geo:point", "value": "35.634, 139.578"},
}


async def v2(hub: Hub) -> V2Service:
    return V2Service(hub.entities, V2Mapper(await hub.term_map(None)))


async def test_an_entity_reads_back_as_written(hub: Hub) -> None:
    svc = await v2(hub)
    assert await svc.create("", SHELTER, "/komae/bousai")
    ent = await svc.get("", Target("Hinanjo-001"))
    out = svc.mapper.entity_out(ent)
    assert out["name"] == {"type": "Text", "value": "狛江第1小学校", "metadata": {}}
    assert out["capacity"]["metadata"]["unit"]["value"] == "人"
    assert out["location"]["type"] == "geo:point"
    assert out["location"]["value"] == "35.634, 139.578"
    assert svc.mapper.entity_out(ent, mode="keyValues")["capacity"] == 120


async def test_creating_twice_is_unprocessable_and_upsert_updates(hub: Hub) -> None:
    svc = await v2(hub)
    await svc.create("", SHELTER, None)
    with pytest.raises(Unprocessable):
        await svc.create("", SHELTER, None)
    changed = {**SHELTER, "capacity": {"type": "Number", "value": 80}}
    assert not await svc.create("", changed, None, upsert=True)
    out = svc.mapper.entity_out(await svc.get("", Target("Hinanjo-001")))
    assert out["capacity"]["value"] == 80
    assert out["capacity"]["metadata"]["unit"]["value"] == "人"  # kept, as Orion does


async def test_another_service_path_or_type_does_not_see_it(hub: Hub) -> None:
    svc = await v2(hub)
    await svc.create("", SHELTER, "/komae/bousai")
    assert await svc.get("", Target("Hinanjo-001", paths=["/komae/#"]))
    with pytest.raises(ResourceNotFound):
        await svc.get("", Target("Hinanjo-001", paths=["/chofu"]))
    with pytest.raises(ResourceNotFound):
        await svc.get("", Target("Hinanjo-001", type="Koen"))
    await svc.delete("", Target("Hinanjo-001"))
    with pytest.raises(ResourceNotFound):
        await svc.get("", Target("Hinanjo-001"))
