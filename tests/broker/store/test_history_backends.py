"""Attribute history through the store contract, on every backend (``store`` fixture):
recorded with each write, read by time range and last N, aggregated, edited, expired."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from broker.model.entity import Entity
from broker.model.history import (
    AGGR_METHODS,
    Duration,
    HistoryPolicy,
    HistoryRow,
    from_us,
    row_for,
    to_us,
)
from broker.model.store import DELETE, Aggregates, EntityQuery, HistoryQuery
from broker.store.base import Store
from broker.store.mongodb import MongoStore
from broker.store.sqlite import SqliteStore

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


async def test_explicit_rows_replace_instances_at_the_same_time(store: Store) -> None:
    """The temporal API's rows replace the instances of the same attribute, datasetId
    and observedAt (a sensor-week sent again is not recorded twice), series by series:
    another datasetId or another attribute at those times is kept."""
    eid = "urn:ngsi-ld:水位計:多摩川-1"
    w = "https://example.org/水位"
    now = to_us("2026-02-01T00:00:00Z")

    def rows(value: float, ds: str | None = None, attr: str = V) -> list[HistoryRow]:
        extra = {"datasetId": ds} if ds else {}
        return [
            row_for(attr, {"type": "Property", "value": value + i, "observedAt": at, **extra}, now)
            for i, at in enumerate(TIMES)
        ]

    ent = {"id": eid, "type": [X]}
    for batch in (rows(1.0), rows(10.0, "urn:ds:副"), rows(5.0, attr=w), rows(20.0)):
        (result,) = await store.write("", [(eid, put(ent))], history={eid: batch})
        assert result.ok
    hist = await store.history("", [eid], HistoryQuery())
    by_ds: dict[str | None, list[float | None]] = {}
    for r in hist[eid][V]:
        by_ds.setdefault(r.dataset_id, []).append(r.number)
    assert by_ds == {None: [20.0, 21.0, 22.0], "urn:ds:副": [10.0, 11.0, 12.0]}
    assert [r.number for r in hist[eid][w]] == [5.0, 6.0, 7.0]


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


# -- aggregations: the same answers on every backend ----------------------------------------

W = "https://example.org/w"
MIXED: tuple[tuple[str, float | bool | str], ...] = (
    ("2026-01-15T10:00:00Z", 4.0),
    ("2026-01-15T10:20:00Z", "high"),  # not a number: counted, never summed
    ("2026-01-31T23:00:00Z", 6.0),
    ("2026-02-20T12:00:00Z", 6.0),
    ("2026-03-02T00:00:00Z", 2.0),
    ("2026-03-20T00:00:00Z", "low"),  # a period with no number at all
)


def observed(eid: str, attr: str, value: float | bool | str, at: str) -> Entity:
    return {"id": eid, "type": [X], attr: [{"type": "Property", "value": value, "observedAt": at}]}


async def load_mixed(store: Store) -> None:
    for at, value in MIXED:
        (result,) = await store.write("", [("urn:x:m", put(observed("urn:x:m", V, value, at)))])
        assert result.ok
    # a second entity, hourly with a boolean and a repeated value among numbers
    hourly: tuple[float | bool | str, ...] = (1.5, 1.5, True, 3.0, "off", 0.25)
    for i, reading_ in enumerate(hourly):
        at = f"2026-02-01T{i:02d}:{15 * (i % 4):02d}:00Z"
        (result,) = await store.write("", [("urn:x:h", put(observed("urn:x:h", W, reading_, at)))])
        assert result.ok


@pytest.fixture
async def mixed(store: Store) -> Store:
    await load_mixed(store)
    return store


def flat(aggs: Aggregates, eid: str, attr: str) -> dict[str, list[tuple[object, str, str]]]:
    """method -> [(value, start, end)], times as text for readable failures."""
    return {
        m: [(v, from_us(s), from_us(e)) for v, s, e in vs]
        for m, vs in aggs[eid][attr].values.items()
    }


async def test_monthly_periods_start_at_the_first_instance(mixed: Store) -> None:
    aggs = await mixed.aggregate_history(
        "", ["urn:x:m"], HistoryQuery(), list(AGGR_METHODS), Duration.parse("P1M")
    )
    got = flat(aggs, "urn:x:m", V)
    jan, feb, mar, apr = (f"2026-{m:02d}-15T10:00:00Z" for m in (1, 2, 3, 4))
    assert got["totalCount"] == [(3, jan, feb), (2, feb, mar), (1, mar, apr)]
    assert got["distinctCount"] == [(3, jan, feb), (2, feb, mar), (1, mar, apr)]
    # the numeric methods skip "high" and leave out the period of "low" alone
    assert got["sum"] == [(10.0, jan, feb), (8.0, feb, mar)]
    assert got["avg"] == [(5.0, jan, feb), (4.0, feb, mar)]
    assert got["min"] == [(4.0, jan, feb), (2.0, feb, mar)]
    assert got["max"] == [(6.0, jan, feb), (6.0, feb, mar)]
    assert got["sumsq"] == [(52.0, jan, feb), (40.0, feb, mar)]
    assert [(v, s, e) for v, s, e in got["stddev"]] == [
        (pytest.approx(1.0), jan, feb),
        (pytest.approx(2.0), feb, mar),
    ]
    assert aggs["urn:x:m"][V].kind == "Property"


async def test_daily_periods_within_a_range(mixed: Store) -> None:
    between = HistoryQuery(
        timerel="between",
        time_at=to_us("2026-01-20T00:00:00Z"),
        end_time_at=to_us("2026-03-10T00:00:00Z"),
    )
    aggs = await mixed.aggregate_history(
        "", ["urn:x:m"], between, ["sum", "totalCount"], Duration.parse("P1D")
    )
    # periods start at the first instance inside the range, empty days are left out
    assert flat(aggs, "urn:x:m", V)["sum"] == [
        (6.0, "2026-01-31T23:00:00Z", "2026-02-01T23:00:00Z"),
        (6.0, "2026-02-19T23:00:00Z", "2026-02-20T23:00:00Z"),
        (2.0, "2026-03-01T23:00:00Z", "2026-03-02T23:00:00Z"),
    ]


async def test_one_period_spans_the_range(mixed: Store) -> None:
    before = HistoryQuery(timerel="before", time_at=to_us("2026-01-16T00:00:00Z"))
    aggs = await mixed.aggregate_history("", ["urn:x:m"], before, ["totalCount", "sum"], None)
    # from the first instance to just after the last one (before: no start given)
    assert flat(aggs, "urn:x:m", V) == {
        "totalCount": [(2, "2026-01-15T10:00:00Z", "2026-01-15T10:20:00.000001Z")],
        "sum": [(4.0, "2026-01-15T10:00:00Z", "2026-01-15T10:20:00.000001Z")],
    }
    after = HistoryQuery(timerel="after", time_at=to_us("2026-03-01T00:00:00Z"))
    aggs = await mixed.aggregate_history("", ["urn:x:m"], after, ["max", "distinctCount"], None)
    assert flat(aggs, "urn:x:m", V) == {
        "max": [(2.0, "2026-03-01T00:00:00Z", "2026-03-20T00:00:00.000001Z")],
        "distinctCount": [(2, "2026-03-01T00:00:00Z", "2026-03-20T00:00:00.000001Z")],
    }
    nothing = HistoryQuery(timerel="after", time_at=to_us("2027-01-01T00:00:00Z"))
    assert await mixed.aggregate_history("", ["urn:x:m"], nothing, ["sum"], None) == {}


async def test_text_only_periods_count_but_do_not_sum(mixed: Store) -> None:
    aggs = await mixed.aggregate_history(
        "",
        ["urn:x:h"],
        HistoryQuery(),
        ["totalCount", "distinctCount", "sum"],
        Duration.parse("PT1H"),
    )
    got = flat(aggs, "urn:x:h", W)
    assert [v for v, _, _ in got["totalCount"]] == [1, 1, 1, 1, 1, 1]
    # 1.5 twice and true (1): two distinct over the first three hours; "off" has no sum
    assert [v for v, _, _ in got["sum"]] == [1.5, 1.5, 1.0, 3.0, 0.25]
    assert [s for _, s, _ in got["sum"]][-1] == "2026-02-01T05:00:00Z"


RANGES: dict[str, HistoryQuery] = {
    "all": HistoryQuery(),
    "some-attrs": HistoryQuery(attrs=[W, "https://example.org/absent"]),
    "before": HistoryQuery(timerel="before", time_at=to_us("2026-02-20T12:00:00Z")),
    "after": HistoryQuery(timerel="after", time_at=to_us("2026-01-15T10:20:00Z")),
    "between-hours": HistoryQuery(
        timerel="between",
        time_at=to_us("2026-01-01T00:00:00Z"),
        end_time_at=to_us("2026-03-01T00:00:00Z"),
    ),
    "between-odd": HistoryQuery(
        timerel="between",
        time_at=to_us("2026-01-15T10:07:00Z"),
        end_time_at=to_us("2026-02-01T03:30:00Z"),
    ),
}


@pytest.mark.mongo
@pytest.mark.parametrize("period", [None, "PT1H", "PT15M", "P1D", "P1W", "P1M", "P1M1D"])
@pytest.mark.parametrize("window", list(RANGES))
async def test_backends_aggregate_alike(
    tmp_path: Path, mongo_url: str, period: str | None, window: str
) -> None:
    """SQLite (daily rollups or instances) and MongoDB (aggregation pipeline) give
    the same periods and values for every method."""
    results = []
    for backend in (SqliteStore(tmp_path / "store.db"), MongoStore(mongo_url)):
        await backend.open()
        try:
            await load_mixed(backend)
            for methods in (list(AGGR_METHODS), ["avg", "max"], ["totalCount", "distinctCount"]):
                results.append(
                    await backend.aggregate_history(
                        "",
                        ["urn:x:m", "urn:x:h", "urn:x:none"],
                        RANGES[window],
                        methods,
                        Duration.parse(period) if period else None,
                    )
                )
        finally:
            await backend.close()
    sqlite, mongo = results[:3], results[3:]
    for left, right in zip(sqlite, mongo, strict=True):
        assert comparable(right) == comparable(left, approx=True)


def comparable(aggs: Aggregates, *, approx: bool = False) -> dict[str, object]:
    """Sums may differ in the last bits (summation order, the stddev formula)."""
    return {
        eid: {
            attr: (
                agg.kind,
                {
                    m: [
                        (pytest.approx(v, rel=1e-12, abs=1e-9) if approx else v, s, e)
                        for v, s, e in vs
                    ]
                    for m, vs in agg.values.items()
                },
            )
            for attr, agg in per_attr.items()
        }
        for eid, per_attr in aggs.items()
    }


async def test_entities_by_attribute_and_time_window(mixed: Store) -> None:
    async def ids(query: EntityQuery, window: HistoryQuery | None = None) -> list[str]:
        return [m.id for m in (await mixed.history_entities("", query, window))[0]]

    assert await ids(EntityQuery(attrs=[W])) == ["urn:x:h"]
    march = HistoryQuery(timerel="after", time_at=to_us("2026-03-01T00:00:00Z"))
    assert await ids(EntityQuery(types=[[X]]), march) == ["urn:x:m"]
    feb_1 = HistoryQuery(
        timerel="between",
        time_at=to_us("2026-02-01T00:00:00Z"),
        end_time_at=to_us("2026-02-01T06:00:00Z"),
    )
    assert await ids(EntityQuery(), replace(feb_1, attrs=[V])) == []
    assert await ids(EntityQuery(attrs=[W, V]), replace(feb_1, attrs=[W])) == ["urn:x:h"]
    page = await mixed.history_entities("", EntityQuery(limit=1, offset=1, count=True))
    assert ([m.id for m in page[0]], page[1]) == (["urn:x:m"], 2)
