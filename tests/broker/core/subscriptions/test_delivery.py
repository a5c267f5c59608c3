"""Delivery (clause 5.11): retries of a failing endpoint, and the status a client reads
(``timesSent``, ``timesFailed``, ``lastSuccess``, ``lastFailure``)."""

from __future__ import annotations

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
