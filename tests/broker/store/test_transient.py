"""Transient entities (``expiresAt`` on entities, ETSI GS CIM 009 v1.8.1 clause 4.22):
the store contract, on every backend. An entity past its ``expiresAt`` is gone for every
read and write at once; ``expired_entities`` lists what the background purge deletes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.model.entity import Entity, now_us
from broker.model.store import DELETE, Create, EntityQuery
from broker.store.base import Store

pytestmark = pytest.mark.anyio

T = "https://komae.example/ns/"


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def shelter(name: str, expires: str | None = None) -> Entity:
    ent: Entity = {
        "id": f"urn:ngsi-ld:避難所:{name}",
        "type": [T + "避難所"],
        T + "名称": [{"type": "Property", "value": name}],
    }
    if expires is not None:
        ent["expiresAt"] = expires
    return ent


def keep(cur: Entity | None) -> Any:
    return DELETE if cur is None else cur


async def test_expired_entities_are_gone_for_reads_and_writes(store: Store) -> None:
    lasting, passed, later = shelter("狛江"), shelter("和泉", at(-1)), shelter("岩戸", at(3600))
    results = await store.write("", [(e["id"], Create(e)) for e in (lasting, passed, later)])
    assert all(r.ok for r in results)
    # reads: get and query (with its count) leave the expired one out
    assert await store.get_entity("", passed["id"]) is None
    assert await store.get_entity("", later["id"]) == later
    found, total = await store.query("", EntityQuery(types=[[T + "避難所"]], count=True))
    assert sorted(e["id"] for e in found) == sorted([lasting["id"], later["id"]])
    assert total == 2
    # writes see nothing there: creating the same id again succeeds
    (again,) = await store.write("", [(passed["id"], Create(shelter("和泉")))])
    assert again.ok
    assert again.before is None
    assert await store.get_entity("", passed["id"]) == shelter("和泉")
    assert await store.expired_entities(now_us()) == []


async def test_expired_entities_are_listed_for_the_purge(store: Store) -> None:
    gone = shelter("和泉", at(-1))
    renewed = shelter("岩戸", at(-1))
    await store.write("komae", [(e["id"], Create(e)) for e in (gone, renewed, shelter("狛江"))])
    listed = await store.expired_entities(now_us())
    assert sorted(listed) == sorted([("komae", gone["id"]), ("komae", renewed["id"])])
    # one is given a later expiresAt before the purge runs: the purge keeps it
    (r,) = await store.write("komae", [(renewed["id"], Create(shelter("岩戸", at(3600))))])
    assert r.ok
    results = await store.write("komae", [(eid, keep) for _, eid in listed])
    assert [r.after is None for r in results] == [i == gone["id"] for _, i in listed]
    assert await store.expired_entities(now_us()) == []
    assert (await store.get_entity("komae", renewed["id"])) is not None
    found, _ = await store.query("komae", EntityQuery(types=[[T + "避難所"]]))
    assert sorted(e["id"] for e in found) == sorted([renewed["id"], shelter("狛江")["id"]])
