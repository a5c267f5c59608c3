"""Coalescing windows, retries while the broker is down, the bounded buffer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.client import BatchOutcome, BrokerError
from connectors.mqtt.metrics import Metrics
from connectors.mqtt.northbound import Batcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def prop(v: Any, at: str) -> dict[str, Any]:
    return {"type": "Property", "value": v, "observedAt": at}


async def test_window_coalesces_and_later_observation_wins() -> None:
    writes: list[tuple[str | None, list[dict[str, Any]]]] = []
    both_written = asyncio.Event()

    async def write(tenant: str | None, ents: list[dict[str, Any]]) -> BatchOutcome:
        writes.append((tenant, ents))
        if len(writes) == 2:  # one batch per tenant
            both_written.set()
        return BatchOutcome(
            success=[e["id"] for e in ents if e["id"] != "urn:x:bad"],
            errors=[("urn:x:bad", {"title": "nope"})],
        )

    acked: list[int] = []
    b = Batcher(write, Metrics(), window=0.05)
    task = asyncio.create_task(b.run())
    b.add("komae", "urn:x:1", "T", {"t": prop(2, "b")}, 2.0, ack=lambda: acked.append(1))
    b.add(
        "komae",
        "urn:x:1",
        "T",
        {"t": prop(1, "a"), "h": prop(5, "a")},
        1.0,
        ack=lambda: acked.append(2),
    )
    b.add(None, "urn:x:2", "T", {"t": prop(9, "a")}, 1.0)
    b.add(None, "urn:x:bad", "T", {"t": prop(9, "a")}, 1.0)
    async with asyncio.timeout(5):  # the window ends by itself
        await both_written.wait()
    b.close()
    await task
    assert {t for t, _ in writes} == {"komae", None}
    komae = next(e for t, e in writes if t == "komae")
    assert komae == [{"id": "urn:x:1", "type": "T", "t": prop(2, "b"), "h": prop(5, "a")}]
    assert acked == [1, 2]
    assert b.metrics.get("measures_stored_total") == 3
    assert b.metrics.get("dropped_total", "rejected_by_broker") == 1


async def test_retries_until_the_broker_accepts_and_drops_qos0_when_full() -> None:
    fail = 3
    failing = asyncio.Event()

    async def write(tenant: str | None, ents: list[dict[str, Any]]) -> BatchOutcome:
        nonlocal fail
        if fail:
            fail -= 1
            failing.set()
            raise BrokerError("down")
        return BatchOutcome(success=[e["id"] for e in ents])

    b = Batcher(write, Metrics(), window=0.01, capacity=2)
    task = asyncio.create_task(b.run())
    acked: list[int] = []
    b.add(
        None, "urn:x:1", "T", {"a": prop(1, "a")}, 1.0, ack=lambda: acked.append(1), droppable=False
    )
    async with asyncio.timeout(5):  # in flight, failing
        await failing.wait()
    assert not b.broker_ok
    assert b.add(None, "urn:x:2", "T", {"a": prop(1, "a")}, 1.0)
    assert not b.add(None, "urn:x:3", "T", {"a": prop(1, "a")}, 1.0)  # QoS 0 beyond capacity
    assert b.add(None, "urn:x:4", "T", {"a": prop(1, "a")}, 1.0, droppable=False)  # QoS 1 waits
    assert acked == []
    b.close()  # run() returns once what it holds is written, retrying until then
    async with asyncio.timeout(10):
        await task
    assert b.metrics.get("measures_stored_total") == 3
    assert acked == [1]
    assert b.broker_ok
    assert b.metrics.get("dropped_total", "buffer_full") == 1
    assert b.metrics.get("broker_write_failures_total") == 3
