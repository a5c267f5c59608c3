"""Attribute history through the store contract, on every backend (``store`` fixture):
recorded with each write, read by time range and last N, aggregated, edited, expired."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from broker.core.history import Duration, HistoryPolicy, to_us
from broker.core.model import Entity
from broker.store.base import DELETE, EntityQuery, HistoryQuery, Store

pytestmark = pytest.mark.anyio

X = "https://example.org/X"
V = "https://example.org/v"
TIMES = ("2026-01-01T00:00:00Z", "2026-01-01T01:30:00Z", "2026-01-02T00:00:00Z")


def reading(eid: str, value: float, at: str) -> Entity:
    return {"id": eid, "type": [X], V: [{"type": "Property", "value": value, "observedAt": at}]}


def put(doc: Entity) -> Callable[[Entity | None], Entity]:
    return lambda _current: doc


@pytest.fixture
async def readings(store: Store) -> Store:
    for i, at in enumerate(TIMES):
        (result,) = await store.write("", [("urn:x:1", put(reading("urn:x:1", float(i), at)))])
        assert result.ok
    await store.write("", [("urn:x:2", put(reading("urn:x:2", 7.0, TIMES[0])))])
    return store


async def values(store: Store, eid: str, query: HistoryQuery) -> list[float | None]:
    hist = await store.history("", [eid], query)
    return [r.number for r in hist[eid].get(V, [])]


async def test_history_follows_writes(readings: Store) -> None:
    metas, total = await readings.history_entities("", EntityQuery(types=[[X]], count=True))
    assert ([m.id for m in metas], total) == (["urn:x:1", "urn:x:2"], 2)
    assert await values(readings, "urn:x:1", HistoryQuery()) == [0.0, 1.0, 2.0]
    assert await values(readings, "urn:x:1", HistoryQuery(last_n=2)) == [1.0, 2.0]
    after = HistoryQuery(timerel="after", time_at=to_us(TIMES[1]))
    assert await values(readings, "urn:x:1", after) == [1.0, 2.0]
    before = HistoryQuery(timerel="before", time_at=to_us(TIMES[1]))
    assert await values(readings, "urn:x:1", before) == [0.0]
    window = HistoryQuery(timerel="after", time_at=to_us(TIMES[2]))
    metas, _ = await readings.history_entities("", EntityQuery(), window)
    assert [m.id for m in metas] == ["urn:x:1"]


async def test_aggregates_per_period(readings: Store) -> None:
    whole = await readings.aggregate_history(
        "", ["urn:x:1"], HistoryQuery(), ["totalCount", "sum", "max", "avg"], None
    )
    got = {m: [v[0] for v in vs] for m, vs in whole["urn:x:1"][V].values.items()}
    assert got == {"totalCount": [3], "sum": [3.0], "max": [2.0], "avg": [1.0]}
    daily = await readings.aggregate_history(
        "", ["urn:x:1"], HistoryQuery(), ["sum"], Duration.parse("P1D")
    )
    assert [(v[0], v[1]) for v in daily["urn:x:1"][V].values["sum"]] == [
        (1.0, to_us(TIMES[0])),
        (2.0, to_us(TIMES[2])),
    ]


async def test_instances_replaced_and_deleted(readings: Store) -> None:
    hist = await readings.history("", ["urn:x:1"], HistoryQuery())
    first, second, _ = hist["urn:x:1"][V]
    assert first.instance is not None
    new = replace(first, instance={**first.instance, "value": 10.0})
    assert await readings.replace_instance("", "urn:x:1", V, first.instance_id, new)
    assert await readings.delete_history("", "urn:x:1", attr=V, instance_id=second.instance_id) == 1
    assert await values(readings, "urn:x:1", HistoryQuery()) == [10.0, 2.0]
    assert await readings.delete_history("", "urn:x:2") == 1
    metas, _ = await readings.history_entities("", EntityQuery())
    assert [m.id for m in metas] == ["urn:x:1"]


async def test_deleted_entities_keep_history_until_it_expires(readings: Store) -> None:
    await readings.write("", [("urn:x:1", lambda _cur: DELETE)])
    metas, _ = await readings.history_entities("", EntityQuery(ids=["urn:x:1"]))
    assert metas[0].deleted is not None
    readings.history_policy = HistoryPolicy({("*", X): 1})
    gone = await readings.expire_history(to_us("2026-01-02T12:00:00Z"))
    assert gone == 3  # urn:x:1's first two readings and urn:x:2's one
    assert await values(readings, "urn:x:1", HistoryQuery()) == [2.0]
