"""TemporalService (clause 5.6.11-5.6.18, 5.7.3-5.7.4): the temporal evolution of an
entity as written and read, with time ranges, lastN and paging, on a real SQLite file."""

from __future__ import annotations

from typing import Any

import pytest

from broker.api.deps import Hub
from broker.core.temporal import time_query
from broker.errors import BadRequestData, ResourceNotFound
from broker.model.store import EntityQuery
from tests.broker.core.conftest import CONTEXT, NS

pytestmark = pytest.mark.anyio

EID = "urn:ngsi-ld:河川水位計:多摩川-狛江"
LEVEL = f"{NS}水位"
CONTEXT_T = {**CONTEXT, "水位": f"{NS}水位", "河川水位計": f"{NS}河川水位計"}


def readings(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {
        "id": EID,
        "type": "河川水位計",
        "水位": [
            {"type": "Property", "value": value, "observedAt": at, "unitCode": "MTR"}
            for at, value in pairs
        ],
    }


def values(result: Any) -> list[float]:
    return [i["value"] for e in result.entities for i in e.attrs.get(LEVEL, [])]


async def test_readings_come_back_in_time_order_within_the_range(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT_T)
    created = await hub.temporal.upsert(
        "",
        readings(
            ("2026-06-01T10:00:00Z", 1.2),
            ("2026-06-01T09:00:00Z", 1.0),
            ("2026-06-01T11:00:00Z", 2.4),
        ),
        tm,
    )
    assert created
    everything = time_query(None, None, None, None, None, limit=1000)
    result = await hub.temporal.query("", EntityQuery(ids=[EID]), everything)
    assert values(result) == [1.0, 1.2, 2.4]
    after = time_query("after", "2026-06-01T09:30:00Z", None, None, None, limit=1000)
    assert values(await hub.temporal.query("", EntityQuery(ids=[EID]), after)) == [1.2, 2.4]


async def test_adding_readings_extends_the_evolution(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT_T)
    await hub.temporal.upsert("", readings(("2026-06-01T09:00:00Z", 1.0)), tm)
    again = await hub.temporal.upsert("", readings(("2026-06-01T10:00:00Z", 1.5)), tm)
    assert not again
    await hub.temporal.add_attrs(
        "",
        EID,
        {"水位": {"type": "Property", "value": 3.1, "observedAt": "2026-06-01T12:00:00Z"}},
        tm,
    )
    last = time_query(None, None, None, None, "2", limit=1000)
    assert values(await hub.temporal.query("", EntityQuery(ids=[EID]), last)) == [1.5, 3.1]


async def test_a_limit_pages_and_says_which_range_it_covers(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT_T)
    hours = [(f"2026-06-01T{h:02d}:00:00Z", float(h)) for h in range(6)]
    await hub.temporal.upsert("", readings(*hours), tm)
    result = await hub.temporal.query(
        "", EntityQuery(ids=[EID]), time_query(None, None, None, None, None, limit=3)
    )
    assert values(result) == [0.0, 1.0, 2.0]
    assert result.truncated
    assert result.range_start is not None
    assert result.range_start.startswith("2026-06-01T00")


async def test_a_deleted_evolution_is_gone(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT_T)
    await hub.temporal.upsert("", readings(("2026-06-01T09:00:00Z", 1.0)), tm)
    await hub.temporal.delete("", EID)
    with pytest.raises(ResourceNotFound):
        await hub.temporal.add_attrs("", EID, {"水位": {"type": "Property", "value": 1}}, tm)


@pytest.mark.parametrize(
    ("timerel", "at", "end", "last_n"),
    [
        ("during", "2026-06-01T00:00:00Z", None, None),
        ("after", None, None, None),
        ("between", "2026-06-01T00:00:00Z", None, None),
        ("between", "2026-06-02T00:00:00Z", "2026-06-01T00:00:00Z", None),
        (None, "2026-06-01T00:00:00Z", None, None),
        (None, None, None, "0"),
    ],
)
def test_bad_time_parameters_are_400(
    timerel: str | None, at: str | None, end: str | None, last_n: str | None
) -> None:
    with pytest.raises(BadRequestData):
        time_query(timerel, at, end, None, last_n, limit=100)
