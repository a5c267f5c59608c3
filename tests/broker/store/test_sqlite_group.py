"""The SQLite writer applies a group of writes with one statement per table; these pin
what that must keep: every step of an entity written several times in one group, its
index and history in the final state, and per-entity failure when SQLite refuses a row."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from broker.errors import InternalError
from broker.model.entity import Entity
from broker.model.history import row_for, to_us
from broker.model.query import AttrPath, Comparison, GeoQuery
from broker.model.store import DELETE, EntityQuery, HistoryQuery
from broker.store.sqlite import SqliteStore
from broker.store.sqlwriter import ThreadWriter

pytestmark = pytest.mark.anyio

T = "https://example.org/"
LOC = "https://uri.etsi.org/ngsi-ld/location"


def ent(eid: str, level: float, lon: float = 139.5, name: str = "gauge") -> Entity:
    return {
        "id": eid,
        "type": [T + "Gauge"],
        T + "level": [{"type": "Property", "value": level}],
        T + "name": [{"type": "Property", "value": name}],
        LOC: [{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, 35.6]}}],
    }


def put(doc: Entity) -> Callable[[Entity | None], Entity]:
    return lambda _cur: doc


@pytest.fixture(params=["process", "thread"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "g.db", writer=request.param)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def ids(store: SqliteStore, **kw: Any) -> list[str]:
    found, _ = await store.query("", EntityQuery(limit=100, **kw))
    return sorted(e["id"] for e in found)


def level_at_least(x: float) -> Comparison:
    return Comparison(AttrPath(T + "level"), ">=", x)


def near(lon: float) -> GeoQuery:
    point = {"type": "Point", "coordinates": [lon, 35.6]}
    return GeoQuery("near", point, LOC, max_distance=100)


async def test_steps_of_one_entity_in_one_group(store: SqliteStore) -> None:
    await store.write("", [("urn:g:old", put(ent("urn:g:old", 1.0)))])
    results = await store.write(
        "",
        [
            ("urn:g:new", put(ent("urn:g:new", 5.0, lon=139.6))),
            ("urn:g:new", put(ent("urn:g:new", 7.0, lon=139.7))),  # sees the step before
            ("urn:g:old", lambda _cur: DELETE),
            ("urn:g:old", put(ent("urn:g:old", 9.0, lon=139.8, name="reborn"))),
            ("urn:g:gone", put(ent("urn:g:gone", 3.0))),
            ("urn:g:gone", lambda _cur: DELETE),
        ],
    )
    assert all(r.ok for r in results)
    assert results[1].before is not None
    assert results[1].before[T + "level"][0]["value"] == 5.0
    assert results[3].before is None  # deleted by the step before
    assert await store.get_entity("", "urn:g:gone") is None
    assert (await store.get_entity("", "urn:g:new") or {})[T + "level"][0]["value"] == 7.0
    assert await ids(store, types=[[T + "Gauge"]]) == ["urn:g:new", "urn:g:old"]
    # the side tables hold the final states only
    assert await ids(store, q=level_at_least(6.0)) == ["urn:g:new", "urn:g:old"]
    assert await ids(store, q=level_at_least(2.0), geo=near(139.6)) == []
    assert await ids(store, geo=near(139.7)) == ["urn:g:new"]
    assert await ids(store, geo=near(139.8)) == ["urn:g:old"]
    assert await ids(store, geo=near(139.5)) == []
    # every step is in the history, in order
    hist = await store.history("", ["urn:g:new", "urn:g:old", "urn:g:gone"], HistoryQuery())
    assert [r.number for r in hist["urn:g:new"][T + "level"]] == [5.0, 7.0]
    assert [r.number for r in hist["urn:g:old"][T + "level"]] == [1.0, 9.0]
    assert [r.number for r in hist["urn:g:gone"][T + "level"]] == [3.0]
    deletions = await store.history(
        "", ["urn:g:old", "urn:g:gone"], HistoryQuery(time_property="deletedAt")
    )
    assert [len(deletions[e][T + "level"]) for e in ("urn:g:old", "urn:g:gone")] == [1, 1]
    metas, _ = await store.history_entities("", EntityQuery(types=[[T + "Gauge"]]))
    deleted = {m.id: m.deleted is not None for m in metas}
    assert deleted == {"urn:g:new": False, "urn:g:old": False, "urn:g:gone": True}


async def test_concurrent_requests_share_a_group_and_keep_their_results(
    store: SqliteStore,
) -> None:
    batches = [
        [(f"urn:g:{b}:{i}", put(ent(f"urn:g:{b}:{i}", float(i)))) for i in range(50)]
        for b in range(8)
    ]
    outcomes = await asyncio.gather(*(store.write("", batch) for batch in batches))
    assert [[r.id for r in out] for out in outcomes] == [[eid for eid, _ in b] for b in batches]
    assert len(await ids(store, q=level_at_least(45.0))) == 8 * 5


async def test_a_row_sqlite_refuses_fails_only_its_entity(tmp_path: Path) -> None:
    # The test reaches into the writer's connection, so the writer runs in this process.
    store = SqliteStore(tmp_path / "g.db", writer="thread")
    await store.open()
    try:
        await _a_row_sqlite_refuses_fails_only_its_entity(store)
    finally:
        await store.close()


async def _a_row_sqlite_refuses_fails_only_its_entity(store: SqliteStore) -> None:
    await store.write("", [("urn:g:keep", put(ent("urn:g:keep", 1.0)))])
    # A real SQLite limit, lowered so that one document of the group exceeds it.
    assert isinstance(store._writer, ThreadWriter)
    assert store._writer.host.writer is not None
    store._writer.host.writer.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 4000)
    results = await store.write(
        "",
        [
            ("urn:g:a", put(ent("urn:g:a", 2.0))),
            ("urn:g:big", put(ent("urn:g:big", 3.0, name="x" * 5000))),
            ("urn:g:keep", put(ent("urn:g:keep", 4.0))),
        ],
    )
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, InternalError)
    assert results[1].after is None
    assert await store.get_entity("", "urn:g:big") is None
    assert await ids(store, q=level_at_least(0.0)) == ["urn:g:a", "urn:g:keep"]
    hist = await store.history("", ["urn:g:keep", "urn:g:big"], HistoryQuery())
    assert [r.number for r in hist["urn:g:keep"][T + "level"]] == [1.0, 4.0]
    assert not hist.get("urn:g:big")


def file_size(path: str) -> int:
    return os.path.getsize(path)


async def test_committed_pages_reach_the_database_file_off_the_write_path(
    store: SqliteStore,
) -> None:
    # Far below the writer's own checkpoint threshold: only the checkpointer copies them.
    empty = file_size(store.path)
    await store.write("", [(f"urn:g:{i}", put(ent(f"urn:g:{i}", float(i)))) for i in range(300)])
    deadline = time.monotonic() + 5
    while file_size(store.path) <= empty:
        assert time.monotonic() < deadline, "committed pages stayed in the WAL"
        await asyncio.sleep(0.05)
    assert await store.get_entity("", "urn:g:299") is not None


async def test_explicit_history_rows_in_a_group_replace_only_their_own(
    store: SqliteStore,
) -> None:
    """The temporal API's rows (explicit) and entity writes (what changed) share groups:
    an explicit observation sent again replaces the stored one; an entity write never
    replaces, and the daily rollups stay right."""
    now = to_us("2026-12-06T00:00:00Z")

    def observed(value: float, second: int) -> dict[str, Any]:
        at = f"2026-12-06T00:00:0{second}Z"
        return {"type": "Property", "value": value, "observedAt": at}

    def measured(eid: str, *instances: dict[str, Any]) -> Entity:
        return {"id": eid, "type": [T + "Gauge"], T + "level": [instances[-1]]}

    async def explicit(eid: str, *instances: dict[str, Any]) -> None:
        rows = [row_for(T + "level", inst, now) for inst in instances]
        (result,) = await store.write(
            "", [(eid, put(measured(eid, *instances)))], history={eid: rows}
        )
        assert result.ok

    async def ordinary(eid: str, inst: dict[str, Any]) -> None:
        (result,) = await store.write("", [(eid, put(measured(eid, inst)))])
        assert result.ok

    await asyncio.gather(
        explicit("urn:g:水位1", observed(1.0, 1), observed(2.0, 2)),
        ordinary("urn:g:水位2", observed(5.0, 1)),
    )
    await asyncio.gather(
        explicit("urn:g:水位1", observed(3.0, 2)),  # the same observation: replaces 2.0
        ordinary("urn:g:水位2", observed(6.0, 1)),  # an entity write: recorded beside
    )
    hist = await store.history("", ["urn:g:水位1", "urn:g:水位2"], HistoryQuery())
    assert [r.number for r in hist["urn:g:水位1"][T + "level"]] == [1.0, 3.0]
    assert sorted(r.number or 0.0 for r in hist["urn:g:水位2"][T + "level"]) == [5.0, 6.0]
    totals = await store.aggregate_history(
        "", ["urn:g:水位1", "urn:g:水位2"], HistoryQuery(), ["sum", "totalCount"], None
    )
    first = totals["urn:g:水位1"][T + "level"].values
    assert (first["sum"][0][0], first["totalCount"][0][0]) == (4.0, 2)
    second = totals["urn:g:水位2"][T + "level"].values
    assert (second["sum"][0][0], second["totalCount"][0][0]) == (11.0, 2)
