"""History in the store: recorded in the write transaction, queried, aggregated, expired."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.model.entity import Entity
from broker.model.history import Duration, HistoryPolicy, HistoryRow, from_us, row_for, to_us
from broker.model.store import DELETE, EntityQuery, HistoryQuery
from broker.store.sqlite import SqliteStore

X = "https://example.org/X"
V = "https://example.org/v"


def ent(eid: str, v: float, at: str) -> Entity:
    return {
        "id": eid,
        "type": [X],
        V: [{"type": "Property", "value": v, "observedAt": at}],
    }


@pytest.mark.anyio
async def test_history_follows_writes_and_expires(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.db")
    await store.open()
    try:
        for i, at in enumerate(("2020-01-01T00:00:00Z", "2026-11-01T00:00:00Z")):
            doc = ent("urn:x:1", float(i), at)

            def put(_cur: Entity | None, d: Entity = doc) -> Entity:
                return d

            await store.write("", [("urn:x:1", put)])

        metas, total = await store.history_entities("", EntityQuery(types=[[X]], count=True))
        assert ([m.id for m in metas], total) == (["urn:x:1"], 1)
        hist = await store.history("", ["urn:x:1"], HistoryQuery())
        assert [r.number for r in hist["urn:x:1"][V]] == [0.0, 1.0]
        window = HistoryQuery(timerel="after", time_at=to_us("2026-01-01T00:00:00Z"))
        hist = await store.history("", ["urn:x:1"], window)
        assert [r.number for r in hist["urn:x:1"][V]] == [1.0]
        await store.write("", [("urn:x:1", lambda _cur: DELETE)])
        metas, _ = await store.history_entities("", EntityQuery(ids=["urn:x:1"]))
        assert metas[0].deleted is not None
        store.history_policy = HistoryPolicy({("*", X): 365})
        gone = await store.expire_history(to_us("2026-11-21T00:00:00Z"))
        assert gone == 1  # the 2020 reading; the 2026 one and the deletion records stay
        hist = await store.history("", ["urn:x:1"], HistoryQuery())
        assert [r.number for r in hist["urn:x:1"][V]] == [1.0]
    finally:
        await store.close()


HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def constant(doc: Entity) -> Callable[[Entity | None], Entity]:
    return lambda _current: doc


def brute(rows: list[HistoryRow], periods: list[int], end: int | None) -> dict[str, list[Any]]:
    """Aggregates by definition, from the instances themselves."""
    out: dict[str, list[Any]] = {}
    for k in range(len(periods) - 1):
        stop = periods[k + 1] if end is None else min(periods[k + 1], end)
        inside = [r for r in rows if periods[k] <= r.at < stop]
        nums = [r.number for r in inside if r.number is not None]
        if not inside:
            continue
        start, stop_ = periods[k], periods[k + 1]
        out.setdefault("totalCount", []).append((len(inside), start, stop_))
        if nums:
            out.setdefault("avg", []).append((sum(nums) / len(nums), start, stop_))
            out.setdefault("min", []).append((min(nums), start, stop_))
            out.setdefault("max", []).append((max(nums), start, stop_))
            out.setdefault("sum", []).append((sum(nums), start, stop_))
    return out


def close(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> bool:
    return a.keys() == b.keys() and all(
        len(a[m]) == len(b[m])
        and all(x[1:] == y[1:] and abs(x[0] - y[0]) < 1e-6 for x, y in zip(a[m], b[m], strict=True))
        for m in a
    )


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_daily_rollups_agree_with_the_instances(tmp_path: Path, seed: int) -> None:
    """Aggregates read from the daily rollups (periods and windows on whole days) equal
    those computed from the instances, also after instances are replaced, patched,
    deleted and expired."""
    rng = random.Random(seed)
    store = SqliteStore(tmp_path / "r.db")
    await store.open()
    base = to_us("2026-11-01T00:00:00Z")
    try:
        for _ in range(4):  # writes through the temporal path (same instants replace)
            rows = [
                row_for(
                    V,
                    {
                        "type": "Property",
                        "value": rng.choice([rng.uniform(0, 50), rng.randint(0, 9), "n/a"]),
                        "observedAt": from_us(base + rng.randrange(0, 96 * 4) * HOUR_US // 4),
                    },
                    base,
                )
                for _ in range(40)
            ]
            doc = ent("urn:x:r", 0.0, "2026-11-01T00:00:00Z")
            await store.write("", [("urn:x:r", constant(doc))], history={"urn:x:r": rows})
        for day in (1, 2):  # readings at midnight: those windows read the rollups
            doc = ent("urn:x:r", float(day), from_us(base + day * DAY_US))
            await store.write("", [("urn:x:r", constant(doc))])
        for step in range(6):  # and ordinary writes (each adds one reading)
            doc = ent("urn:x:r", float(step), from_us(base + step * 17 * HOUR_US + 1))
            await store.write("", [("urn:x:r", constant(doc))])
        everything = (await store.history("", ["urn:x:r"], HistoryQuery(limit=10_000)))["urn:x:r"]
        victim, patched = rng.sample(everything[V], 2)
        await store.delete_history("", "urn:x:r", attr=V, instance_id=victim.instance_id)
        moved = row_for(
            V, {"type": "Property", "value": 99.5, "observedAt": from_us(base + 5)}, base
        )
        await store.replace_instance("", "urn:x:r", V, patched.instance_id, moved)
        store.history_policy = HistoryPolicy({("*", X): 1})
        await store.expire_history(base + DAY_US + 90 * 60_000_000)  # mid-day cut
        methods = ["totalCount", "avg", "min", "max", "sum"]
        for window in (
            HistoryQuery(),
            HistoryQuery(timerel="after", time_at=base + 2 * DAY_US),
            HistoryQuery(
                timerel="between", time_at=base + 1 * DAY_US, end_time_at=base + 3 * DAY_US
            ),
        ):
            rows = (await store.history("", ["urn:x:r"], replace(window, limit=10_000)))["urn:x:r"][
                V
            ]
            for period in ("P1D", "P2D", "PT6H"):
                got = await store.aggregate_history(
                    "", ["urn:x:r"], window, methods, Duration.parse(period)
                )
                lo = min(r.at for r in rows)
                periods = Duration.parse(period).boundaries(lo, max(r.at for r in rows) + 1)
                end = window.end_time_at if window.timerel == "between" else None
                assert close(got["urn:x:r"][V].values, brute(rows, periods, end)), (window, period)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_history_deleted_while_the_entity_stays_starts_again(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.db")
    await store.open()
    try:
        await store.write("", [("urn:x:2", constant(ent("urn:x:2", 1.0, "2026-11-01T00:00:00Z")))])
        await store.delete_history("", "urn:x:2")
        assert (await store.history_entities("", EntityQuery(ids=["urn:x:2"])))[0] == []
        await store.write("", [("urn:x:2", constant(ent("urn:x:2", 2.0, "2026-11-02T00:00:00Z")))])
        metas, _ = await store.history_entities("", EntityQuery(types=[[X]]))
        assert [m.id for m in metas] == ["urn:x:2"]
        hist = await store.history("", ["urn:x:2"], HistoryQuery())
        assert [r.number for r in hist["urn:x:2"][V]] == [2.0]
    finally:
        await store.close()
