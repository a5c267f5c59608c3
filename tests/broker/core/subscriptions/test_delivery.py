"""Delivery (clause 5.11): retries of a failing endpoint, and the status a client reads
(``timesSent``, ``timesFailed``, ``lastSuccess``, ``lastFailure``)."""

from __future__ import annotations

import asyncio

import pytest

from broker.api.deps import Hub
from broker.core.subscriptions.delivery import Delivery
from tests.broker.core.conftest import CONTEXT
from tests.receiver import Receiver

pytestmark = pytest.mark.anyio


def subscription(url: str) -> dict[str, object]:
    return {
        "type": "Subscription",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": url}},
    }


async def test_a_failing_endpoint_is_tried_again_and_counted(hub: Hub) -> None:
    failing = Receiver(status=503)  # an endpoint that answers "unavailable", for real
    try:
        sid = await hub.subscriptions.create("", subscription(failing.url), CONTEXT)
        sub = await hub.subscriptions.compile("", await hub.subscriptions.get("", sid))
        delivery = Delivery(
            hub.entities.store, hub.subscriptions.senders, max_attempts=3, backoff=0.01
        )
        delivery.submit(sub, [{"id": "urn:ngsi-ld:避難所:狛江-001", "type": "避難所"}])
        await delivery.idle()  # three attempts, then it gives up
        assert len(failing.received) == 3
        await delivery.aclose()  # writes the outcomes
        stored = (await hub.subscriptions.get("", sid))["notificationStatus"]
        assert stored["timesSent"] == 3
        assert stored["timesFailed"] == 3
        assert "lastFailure" in stored
        assert "lastSuccess" not in stored
    finally:
        failing.close()


async def test_a_client_reads_outcomes_not_yet_written(hub: Hub, receiver: Receiver) -> None:
    tm = await hub.term_map(CONTEXT)
    sid = await hub.subscriptions.create("", subscription(receiver.url), CONTEXT)
    hub.subscriptions.delivery.status_interval = 60.0  # nothing written during the test
    sub = await hub.subscriptions.compile("", await hub.subscriptions.get("", sid))
    hub.subscriptions.submit(sub, [{"id": "urn:ngsi-ld:避難所:狛江-001", "type": "避難所"}])
    await hub.subscriptions.delivery.idle()
    assert len(receiver.received) == 1
    stored = await hub.subscriptions.get("", sid)
    assert stored.get("notificationStatus", {}).get("timesSent", 0) == 0  # not yet written
    shown = await hub.subscriptions.render("", stored, tm)
    assert shown["notification"]["status"] == "ok"


async def test_a_stop_hands_what_was_not_delivered_to_the_next_process(hub: Hub) -> None:
    """Changes between retries and changes queued behind them are not lost when the
    process stops: the store keeps them, and a process on the same store sends them."""
    endpoint = Receiver(status=503)  # unavailable while the first process runs
    try:
        sid = await hub.subscriptions.create("", subscription(endpoint.url), CONTEXT)
        sub = await hub.subscriptions.compile("", await hub.subscriptions.get("", sid))
        stopping = Delivery(hub.entities.store, hub.subscriptions.senders, backoff=30.0)
        ids = [f"urn:ngsi-ld:避難所:狛江-{n:03d}" for n in range(1, 6)]
        stopping.submit(sub, [{"id": ids[0], "type": "避難所"}])
        await asyncio.to_thread(endpoint.wait, 1)  # refused once: now waiting 30 s
        for eid in ids[1:]:
            stopping.submit(sub, [{"id": eid, "type": "避難所"}])  # queued behind it
        await stopping.aclose()
        assert stopping.unsent() == []
        endpoint.status = 200  # the endpoint is back; the hub's own process takes over
        await hub.subscriptions.matcher.take_over()
        await hub.subscriptions.delivery.idle()
        received = endpoint.wait_for(
            lambda r: [e["id"] for _, body in r[1:] for e in body["data"]] == ids,
            what="the handed-over changes, in order",
        )
        assert all(body["subscriptionId"] == sid for _, body in received)
        assert await hub.entities.store.take_over(10) == []  # each sent once
    finally:
        endpoint.close()


async def test_handed_over_notifications_of_a_deleted_subscription_are_dropped(
    hub: Hub, receiver: Receiver
) -> None:
    from broker.model.store import PendingNotification

    sid = await hub.subscriptions.create("", subscription(receiver.url), CONTEXT)
    gone = await hub.subscriptions.create("", subscription(receiver.url), CONTEXT)
    await hub.subscriptions.delete("", gone)
    change = [{"id": "urn:ngsi-ld:避難所:狛江-001", "type": "避難所"}]
    await hub.entities.store.hand_over(
        [PendingNotification("", gone, change), PendingNotification("", sid, change)]
    )
    await hub.subscriptions.matcher.take_over()
    await hub.subscriptions.delivery.idle()
    received = receiver.wait(1)
    assert [body["subscriptionId"] for _, body in received] == [sid]
    receiver.quiet(1)


class SlowStatusWrites:
    """The store, except that writing delivery outcomes waits for ``release``: a write
    slower than the reads around it, which a local SQLite file does not do on demand."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def record_notifications(self, records: list[object]) -> None:
        self.started.set()
        await self.release.wait()
        await self.store.record_notifications(records)  # type: ignore[attr-defined]


async def test_the_status_shown_never_goes_back(hub: Hub, receiver: Receiver) -> None:
    """While outcomes are being written, and after, a status read from the store before
    the write still shows them."""
    sid = await hub.subscriptions.create("", subscription(receiver.url), CONTEXT)
    sub = await hub.subscriptions.compile("", await hub.subscriptions.get("", sid))
    slow = SlowStatusWrites(hub.entities.store)
    delivery = Delivery(slow, hub.subscriptions.senders)  # type: ignore[arg-type]
    delivery.submit(sub, [{"id": "urn:ngsi-ld:避難所:狛江-001", "type": "避難所"}])
    await delivery.idle()
    before = (await hub.subscriptions.get("", sid))["notificationStatus"]
    assert before["timesSent"] == 0
    assert delivery.status("", sid, before)["timesSent"] == 1  # pending
    flushing = asyncio.create_task(delivery.flush())
    await slow.started.wait()
    assert delivery.status("", sid, before)["timesSent"] == 1  # being written
    slow.release.set()
    await flushing
    assert delivery.status("", sid, before)["timesSent"] == 1  # read before the write
    after = (await hub.subscriptions.get("", sid))["notificationStatus"]
    assert delivery.status("", sid, after)["timesSent"] == 1  # written: counted once
    await delivery.aclose()
