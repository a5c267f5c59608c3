"""Coalescing windows, retries while the broker is down, the bounded buffer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.client import BatchOutcome, BrokerError
from connectors.mqtt import northbound
from connectors.mqtt.metrics import Metrics
from connectors.mqtt.northbound import Batcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def prop(v: Any, at: str) -> dict[str, Any]:
    return {"type": "Property", "value": v, "observedAt": at}


async def test_window_keeps_every_instance_and_writes_one_batch_per_tenant() -> None:
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
    static = {"type": "Property", "value": "狛江市"}
    b.add("komae", "urn:x:1", "T", {"t": prop(2, "b"), "city": static}, ack=lambda: acked.append(1))
    b.add(
        "komae",
        "urn:x:1",
        "T",
        {"t": prop(1, "a"), "h": prop(5, "a"), "city": static},
        scope="/二階",
        ack=lambda: acked.append(2),
    )
    b.add(None, "urn:x:2", "T", {"t": prop(9, "a")})
    b.add(None, "urn:x:bad", "T", {"t": prop(9, "a")})
    async with asyncio.timeout(5):  # the window ends by itself
        await both_written.wait()
    b.close()
    await task
    assert {t for t, _ in writes} == {"komae", None}
    komae = next(e for t, e in writes if t == "komae")
    # every measure is an instance of its own, in arrival order (the broker orders them
    # by observedAt); a value without observedAt is sent once
    assert komae == [
        {
            "id": "urn:x:1",
            "type": "T",
            "scope": "/二階",
            "t": [prop(2, "b"), prop(1, "a")],
            "city": [static],
            "h": [prop(5, "a")],
        }
    ]
    assert acked == [1, 2]
    assert b.metrics.get("measures_stored_total") == 3
    assert b.metrics.get("dropped_total", "rejected_by_broker") == 1


async def test_a_large_window_is_split_into_requests_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(northbound, "MAX_INSTANCES", 3)
    writes: list[list[dict[str, Any]]] = []

    async def write(tenant: str | None, ents: list[dict[str, Any]]) -> BatchOutcome:
        writes.append(ents)
        return BatchOutcome(success=[e["id"] for e in ents])

    b = Batcher(write, Metrics(), window=10)
    for n in range(5):
        b.add(None, "urn:x:1", "T", {"t": prop(n, f"{n}")})
    b.add(None, "urn:x:2", "T", {"t": prop(9, "9")})
    b.close()
    async with asyncio.timeout(5):
        await b.run()
    assert writes == [
        [{"id": "urn:x:1", "type": "T", "t": [prop(0, "0"), prop(1, "1"), prop(2, "2")]}],
        [
            {"id": "urn:x:1", "type": "T", "t": [prop(3, "3"), prop(4, "4")]},
            {"id": "urn:x:2", "type": "T", "t": [prop(9, "9")]},
        ],
    ]
    assert b.metrics.get("measures_stored_total") == 6


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
    b.add(None, "urn:x:1", "T", {"a": prop(1, "a")}, ack=lambda: acked.append(1), droppable=False)
    async with asyncio.timeout(5):  # in flight, failing
        await failing.wait()
    assert not b.broker_ok
    assert b.add(None, "urn:x:2", "T", {"a": prop(1, "a")})
    assert not b.add(None, "urn:x:3", "T", {"a": prop(1, "a")})  # QoS 0 beyond capacity
    assert b.add(None, "urn:x:4", "T", {"a": prop(1, "a")}, droppable=False)  # QoS 1 waits
    assert acked == []
    b.close()  # run() returns once what it holds is written, retrying until then
    async with asyncio.timeout(10):
        await task
    assert b.metrics.get("measures_stored_total") == 3
    assert acked == [1]
    assert b.broker_ok
    assert b.metrics.get("dropped_total", "buffer_full") == 1
    assert b.metrics.get("broker_write_failures_total") == 3
