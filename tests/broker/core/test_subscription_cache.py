"""The cache of active subscriptions, with writes and subscription changes interleaved.

The hub runs whole, on a real SQLite file, notifying a real HTTP receiver. Only the
subscription list read is held back (``HeldListRead``), so that a change lands while a
reload is under way: an interleaving that real timing produces only now and then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.api.deps import Hub
from broker.app import build_hub, close_hub
from broker.core.subscriptions import Compiled
from tests.conftest import building, make_settings
from tests.receiver import Receiver

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = await build_hub(make_settings(tmp_path))
    yield h
    await close_hub(h)


class HeldListRead:
    """Wraps the store's subscription list: each read is done at once, then its answer is
    held until ``release``; counts the reads."""

    def __init__(self, hub: Hub) -> None:
        self.read = hub.entities.store.list_subscriptions
        self.reads = 0
        self.started = asyncio.Event()
        self.released = asyncio.Event()
        hub.entities.store.list_subscriptions = self  # type: ignore[method-assign]

    async def __call__(self, tenant: str) -> list[dict[str, Any]]:
        self.reads += 1
        docs = await self.read(tenant)
        self.started.set()
        await self.released.wait()
        return docs

    def release(self) -> None:
        self.released.set()


class Matching:
    """Counts the writes that have asked for the active subscriptions: once counted, a
    write waits on the reload under way (or has its answer)."""

    def __init__(self, hub: Hub) -> None:
        registry = hub.subscriptions.registry
        self.active = registry.active
        self.calls = 0
        self.changed = asyncio.Condition()
        registry.active = self  # type: ignore[method-assign]

    async def __call__(self, tenant: str) -> list[Compiled]:
        async with self.changed:
            self.calls += 1
            self.changed.notify_all()
        return await self.active(tenant)

    async def reached(self, calls: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.calls >= calls), 10)


def subscription(url: str) -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": url, "accept": "application/json"}},
    }


def floors_notified(receiver: Receiver) -> list[int]:
    return [e["floors"]["value"] for _, body in list(receiver.received) for e in body["data"]]


def wait_notified(receiver: Receiver, value: int) -> None:
    receiver.wait_for(
        lambda received: value in [e["floors"]["value"] for _, b in received for e in b["data"]],
        what=f"floors={value}",
    )


async def notified(receiver: Receiver, value: int) -> None:
    """Wait (up to 10 s) until a notification carries ``floors`` = ``value``."""
    await asyncio.to_thread(wait_notified, receiver, value)


async def floors(hub: Hub, value: int) -> None:
    tm = await hub.term_map(None)
    await hub.entities.update_attrs(
        "", "urn:ngsi-ld:Building:1", {"floors": {"type": "Property", "value": value}}, tm
    )


async def test_a_subscription_created_during_a_reload_gets_the_next_change(
    hub: Hub, receiver: Receiver
) -> None:
    tm = await hub.term_map(None)
    await hub.entities.create("", building(), tm)  # nothing subscribed yet: nothing sent
    held = HeldListRead(hub)
    hub.subscriptions.registry.expire()  # as after the cache's time-to-live
    first = asyncio.create_task(floors(hub, 6))  # its reload reads: no subscriptions
    await held.started.wait()
    await hub.subscriptions.create("", subscription(receiver.url), None)
    held.release()
    await first
    await floors(hub, 7)  # at once, well within the cache's time-to-live
    await notified(receiver, 7)
    assert floors_notified(receiver) == [7]


async def test_concurrent_writes_share_one_reload(hub: Hub, receiver: Receiver) -> None:
    tm = await hub.term_map(None)
    await hub.entities.create("", building(), tm)
    await hub.subscriptions.create("", subscription(receiver.url), None)
    held = HeldListRead(hub)
    matching = Matching(hub)
    hub.subscriptions.registry.expire()
    writes = [asyncio.create_task(floors(hub, 10 + i)) for i in range(8)]
    await held.started.wait()
    await matching.reached(8)  # every write waits on the reload under way
    held.release()
    await asyncio.gather(*writes)
    assert held.reads == 1
    await notified(receiver, 17)  # the last write (writes in between may go out together)


async def test_a_cancelled_write_does_not_cancel_the_reload_others_wait_for(
    hub: Hub, receiver: Receiver
) -> None:
    tm = await hub.term_map(None)
    await hub.entities.create("", building(), tm)
    await hub.subscriptions.create("", subscription(receiver.url), None)
    held = HeldListRead(hub)
    matching = Matching(hub)
    hub.subscriptions.registry.expire()
    cancelled = asyncio.create_task(floors(hub, 20))
    await held.started.wait()
    waiting = asyncio.create_task(floors(hub, 21))
    await matching.reached(2)  # the second write waits on the same reload
    cancelled.cancel()
    held.release()
    await waiting
    assert held.reads == 1
    await notified(receiver, 21)
