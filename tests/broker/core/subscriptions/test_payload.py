"""Subscription payloads (clause 5.2.12): what is refused (400 naming the member, 501
for what this version does not do) and what a valid one compiles to."""

from __future__ import annotations

from typing import Any

import pytest

from broker.api.deps import Hub
from broker.errors import BadRequestData, NotImplementedYet
from tests.broker.core.conftest import CONTEXT, NS

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9/通知"


def doc(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "urn:ngsi-ld:Subscription:避難所の変化",
        "type": "Subscription",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": URL}},
        "@context": CONTEXT,
    }
    body.update(members)
    return body


async def test_terms_are_expanded_with_the_subscriptions_context(hub: Hub) -> None:
    sub = await hub.subscriptions.compile(
        "",
        doc(
            watchedAttributes=["収容人数"],
            q="収容人数>100",
            notification={
                "endpoint": {"uri": URL, "accept": "application/ld+json"},
                "attributes": ["名称"],
                "format": "simplified",
            },
            throttling=5,
        ),
    )
    assert sub.selectors[0].types == [[f"{NS}避難所"]]
    assert sub.watched == {f"{NS}収容人数"}
    assert sub.attributes == {f"{NS}名称"}
    assert sub.format == "keyValues"
    assert sub.throttling == 5.0
    assert sub.triggers == {"attributeCreated", "attributeUpdated"}
    assert sub.status == "active"


@pytest.mark.parametrize(
    ("members", "path"),
    [
        ({"type": "避難所"}, "type"),
        ({"id": "避難所の変化"}, "id"),
        ({"entities": []}, "entities"),
        ({"entities": [{"id": "urn:ngsi-ld:避難所:1"}]}, "entities[0]"),
        ({"watchedAttributes": "収容人数"}, "watchedAttributes"),
        ({"timeInterval": 0}, "timeInterval"),
        ({"isActive": "はい"}, "isActive"),
        ({"notificationTrigger": ["避難開始"]}, "notificationTrigger"),
        ({"notification": {"endpoint": {"uri": "ftp://example.jp/"}}}, "notification.endpoint.uri"),
        (
            {"notification": {"endpoint": {"uri": URL, "accept": "text/csv"}}},
            "notification.endpoint.accept",
        ),
        ({"notification": {"endpoint": {"uri": URL}, "format": "表"}}, "notification.format"),
        ({"notification": {"endpoint": {"uri": URL}, "joinLevel": 0}}, "notification.joinLevel"),
        ({"jsonldContext": "文脈"}, "jsonldContext"),
    ],
)
async def test_a_bad_member_is_400_naming_it(hub: Hub, members: dict[str, Any], path: str) -> None:
    with pytest.raises(BadRequestData) as err:
        await hub.subscriptions.compile("", doc(**members))
    assert err.value.status == 400
    assert err.value.detail.startswith(path), err.value.detail


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"entities": None}, "entities or watchedAttributes"),
        ({"timeInterval": 60, "throttling": 5}, "timeInterval cannot be combined"),
        ({"避難所": 1}, "unknown subscription member(s): 避難所"),
        ({"notification": None}, "needs a notification"),
    ],
)
async def test_rules_across_members_are_400(hub: Hub, members: dict[str, Any], says: str) -> None:
    body = doc(**members)
    if body["entities"] is None:  # left out
        del body["entities"]
    with pytest.raises(BadRequestData) as err:
        await hub.subscriptions.compile("", body)
    assert says in err.value.detail


@pytest.mark.parametrize(
    "members",
    [
        {"temporalQ": {"timerel": "after", "timeAt": "2026-04-01T00:00:00Z"}},
        {"notification": {"endpoint": {"uri": URL, "accept": "application/geo+json"}}},
        {"temporalQ": {"timerel": "after"}, "entities": []},  # 501 before the others' errors
    ],
)
async def test_what_this_version_does_not_do_is_501(hub: Hub, members: dict[str, Any]) -> None:
    with pytest.raises(NotImplementedYet):
        await hub.subscriptions.compile("", doc(**members))


async def test_csf_is_a_q_expression(hub: Hub) -> None:
    """csf picks the context sources a subscription is sent on to (broker.api.subscriptions)."""
    await hub.subscriptions.compile("", doc(csf='管理者=="狛江市"'))
    for bad in ("管理者==", 5):
        with pytest.raises(BadRequestData):
            await hub.subscriptions.compile("", doc(csf=bad))


async def test_identity_errors_come_before_501(hub: Hub) -> None:
    with pytest.raises(BadRequestData):
        await hub.subscriptions.compile("", doc(type="Other", csf="管理者==狛江市"))


async def test_expiry_in_the_past_reads_as_expired(hub: Hub) -> None:
    sub = await hub.subscriptions.compile("", doc(expiresAt="2001-01-01T00:00:00Z"))
    assert sub.status == "expired"
    paused = await hub.subscriptions.compile("", doc(isActive=False))
    assert paused.status == "paused"
