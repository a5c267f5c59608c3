"""The subscription registry (clause 5.8.1-5.8.5): create, read, update, delete, as a
client sees them, and endpoints refused by the outbound policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.api.deps import Hub
from broker.app import build_hub, close_hub
from broker.errors import AlreadyExists, BadRequestData, ResourceNotFound
from tests.broker.core.conftest import CONTEXT
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9/通知"


def subscription(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "subscriptionName": "避難所の空き状況",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": URL}, "attributes": ["収容人数"]},
    }
    body.update(members)
    return body


async def test_read_back_in_the_readers_terms_with_its_status(hub: Hub) -> None:
    sid = await hub.subscriptions.create("", subscription(), CONTEXT)
    assert sid.startswith("urn:ngsi-ld:Subscription:")
    stored = await hub.subscriptions.get("", sid)
    shown = await hub.subscriptions.render("", stored, await hub.term_map(CONTEXT))
    assert shown["subscriptionName"] == "避難所の空き状況"
    assert shown["entities"] == [{"type": "避難所"}]
    assert shown["notification"]["attributes"] == ["収容人数"]
    assert shown["status"] == "active"
    # under the core context alone, the same terms read as full IRIs
    core = await hub.subscriptions.render("", stored, await hub.term_map(None))
    assert core["entities"][0]["type"] == "https://renkei.example/ns/避難所"


async def test_update_merges_notification_and_can_pause(hub: Hub) -> None:
    sid = await hub.subscriptions.create("", subscription(), CONTEXT)
    await hub.subscriptions.update(
        "", sid, {"isActive": False, "notification": {"format": "keyValues"}}, CONTEXT
    )
    stored = await hub.subscriptions.get("", sid)
    assert stored["notification"]["endpoint"] == {"uri": URL}  # kept
    assert stored["notification"]["format"] == "keyValues"
    shown = await hub.subscriptions.render("", stored, await hub.term_map(CONTEXT))
    assert shown["status"] == "paused"


async def test_an_invalid_update_leaves_the_subscription_as_it_was(hub: Hub) -> None:
    sid = await hub.subscriptions.create("", subscription(), CONTEXT)
    with pytest.raises(BadRequestData):
        await hub.subscriptions.update("", sid, {"throttling": -1}, CONTEXT)
    with pytest.raises(BadRequestData):
        await hub.subscriptions.update("", sid, {"expiresAt": "2001-01-01T00:00:00Z"}, CONTEXT)
    assert "throttling" not in await hub.subscriptions.get("", sid)


async def test_ids_are_unique_and_deletion_is_final(hub: Hub) -> None:
    sid = await hub.subscriptions.create(
        "", subscription(id="urn:ngsi-ld:Subscription:避難所"), CONTEXT
    )
    with pytest.raises(AlreadyExists):
        await hub.subscriptions.create("", subscription(id=sid), CONTEXT)
    await hub.subscriptions.delete("", sid)
    with pytest.raises(ResourceNotFound):
        await hub.subscriptions.get("", sid)
    with pytest.raises(ResourceNotFound):
        await hub.subscriptions.delete("", sid)


async def test_tenants_have_their_own_subscriptions(hub: Hub) -> None:
    sid = await hub.subscriptions.create("komae", subscription(), CONTEXT)
    assert [s["id"] for s in await hub.subscriptions.all("komae")] == [sid]
    assert await hub.subscriptions.all("") == []


async def test_an_endpoint_the_outbound_policy_refuses_is_400(tmp_path: Path) -> None:
    hub = await build_hub(make_settings(tmp_path, outbound_deny=["127.0.0.0/8"]))
    try:
        with pytest.raises(BadRequestData) as err:
            await hub.subscriptions.create("", subscription(), CONTEXT)
        assert "127.0.0.1" in err.value.detail
        assert await hub.subscriptions.all("") == []
    finally:
        await close_hub(hub)
