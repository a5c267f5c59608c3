"""Registration subscriptions and registration queries, clause by clause (ETSI GS CIM 009
v1.8.1 §5.2.12, §5.8.2 and §5.11 as applied to context source registrations, §5.5.9 and
§6.3.4), against a real ``renkei serve`` process over HTTP, with a real HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.broker.api.test_csubscriptions import registration
from tests.receiver import Receiver
from tests.support import broker

R = "/ngsi-ld/v1/csourceRegistrations"
CS = "/ngsi-ld/v1/csourceSubscriptions"
JSON = {"Content-Type": "application/json"}
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
REG = "urn:ngsi-ld:ContextSourceRegistration:"
SUB = "urn:ngsi-ld:Subscription:"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db: Path = tmp_path_factory.mktemp("csource") / "広域連携.db"
    with broker(db) as url:
        yield url


def subscription(name: str, url: str, *types: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": SUB + name,
        "type": "Subscription",
        "entities": [{"type": t} for t in types],
        "notification": {"format": "keyValues", "endpoint": {"uri": url}},
        **extra,
    }


def post(url: str, body: dict[str, Any]) -> None:
    r = httpx.post(url, json=body, headers=JSON)
    assert r.status_code == 201, r.text


def delete(url: str) -> None:
    assert httpx.delete(url).status_code == 204


def test_a_retrieve_shows_the_members_given_and_the_status(hub: str) -> None:
    """§5.2.12: isActive "Allows clients to temporarily pause the subscription [...]
    The default value is true" (a default, not a member the broker adds); status
    "Read-only. Provided by the system when querying the details of a subscription"."""
    post(f"{hub}{CS}", subscription("避難所の登録", "http://127.0.0.1:9/notify", "避難所"))
    try:
        got = httpx.get(f"{hub}{CS}/{SUB}避難所の登録").json()
        assert "isActive" not in got
        assert got["status"] == "active"
        assert got["entities"] == [{"type": "避難所"}]
        patch = {"isActive": False}
        assert (
            httpx.patch(f"{hub}{CS}/{SUB}避難所の登録", json=patch, headers=JSON).status_code == 204
        )
        got = httpx.get(f"{hub}{CS}/{SUB}避難所の登録").json()
        assert (got["isActive"], got["status"]) == (False, "paused")
    finally:
        delete(f"{hub}{CS}/{SUB}避難所の登録")


def test_an_update_replaces_notification_whole(hub: str) -> None:
    """§5.8.2 (applied to registration subscriptions by §5.11.3): "For each term in the
    SubscriptionFragment, if the target Subscription does not contain it, it shall be
    added, otherwise its value shall be replaced"; "If the data types and restrictions
    expressed by clause 5.2.12 are not met by the Subscription resulting from the
    update, an error of type BadRequestData shall be raised". A notification without
    its endpoint is such a Subscription; nothing changes."""
    url = f"{hub}{CS}/{SUB}給水所の登録"
    post(f"{hub}{CS}", subscription("給水所の登録", "http://127.0.0.1:9/notify", "給水所"))
    try:
        r = httpx.patch(url, json={"notification": {"format": "normalized"}}, headers=JSON)
        assert r.status_code == 400, r.text
        assert r.json()["type"] == ERR + "BadRequestData"
        assert httpx.get(url).json()["notification"]["format"] == "keyValues"
        fresh = {"endpoint": {"uri": "http://127.0.0.1:9/新しい受信先"}}
        assert httpx.patch(url, json={"notification": fresh}, headers=JSON).status_code == 204
        shown = httpx.get(url).json()["notification"]
        assert shown["endpoint"]["uri"] == "http://127.0.0.1:9/新しい受信先"
        assert "format" not in shown  # replaced, not merged: the default applies again
    finally:
        delete(url)


def test_an_update_tells_what_matches_now(hub: str) -> None:
    """§5.3.2 (ContextSourceNotification) triggerReason "newlyMatching": a registration
    that the subscription did not select before its update and selects after it starts
    to match, so the subscriber is told of it, as on creation (§5.11.2); registrations
    that match neither way are not sent."""
    receiver = Receiver()
    post(f"{hub}{R}", registration("狛江市", "AED設置場所"))
    post(f"{hub}{R}", registration("調布市", "避難所"))
    post(f"{hub}{CS}", subscription("切替", receiver.url, "給水所"))
    try:
        patch = {"entities": [{"type": "AED設置場所"}]}
        assert httpx.patch(f"{hub}{CS}/{SUB}切替", json=patch, headers=JSON).status_code == 204
        _headers, note = receiver.wait(1)[0]
        assert note["subscriptionId"] == SUB + "切替"
        assert note["triggerReason"] == "newlyMatching"
        assert [d["id"] for d in note["data"]] == [REG + "狛江市"]
        both = {"entities": [{"type": "AED設置場所"}, {"type": "避難所"}]}
        assert httpx.patch(f"{hub}{CS}/{SUB}切替", json=both, headers=JSON).status_code == 204
        _headers, note = receiver.wait(2)[1]
        assert sorted(d["id"] for d in note["data"]) == [REG + "狛江市", REG + "調布市"]
        receiver.quiet(2)
    finally:
        delete(f"{hub}{CS}/{SUB}切替")
        delete(f"{hub}{R}/{REG}狛江市")
        delete(f"{hub}{R}/{REG}調布市")
        receiver.close()


def test_a_deleted_subscription_sends_nothing_more(hub: str) -> None:
    """§5.11.6 (Delete Context Source Registration Subscription) removes the
    subscription: a notification whose delivery was failing and would have been tried
    again is not sent once it is deleted."""
    receiver = Receiver(status=503)  # the subscriber is down: the hub would try again
    post(f"{hub}{CS}", subscription("削除後", receiver.url, "防災倉庫"))
    try:
        post(f"{hub}{R}", registration("稲城市", "防災倉庫"))
        receiver.wait(1)  # the first attempt
        delete(f"{hub}{CS}/{SUB}削除後")
        receiver.quiet(1, bound=3.0)  # the retries (0.5 s, then 1 s later) never come
    finally:
        delete(f"{hub}{R}/{REG}稲城市")
        receiver.close()


def test_listings_link_the_neighbouring_pages(hub: str) -> None:
    """§5.5.9 / §6.3.10: a page of a listing links the previous and the next page
    (``Link`` with rel="prev" and rel="next"), for registration subscriptions and for
    registration queries alike."""
    names = ["一", "二", "三"]
    for n in names:
        post(f"{hub}{CS}", subscription(f"頁{n}", "http://127.0.0.1:9/notify", "公園"))
        post(f"{hub}{R}", registration(f"頁{n}", "公園"))
    try:
        page = httpx.get(f"{hub}{CS}", params={"limit": 1, "offset": 1})
        assert len(page.json()) == 1
        links = [v for k, v in page.headers.multi_items() if k == "link"]
        assert any('rel="prev"' in v and "offset=0" in v for v in links), links
        assert any('rel="next"' in v and "offset=2" in v for v in links), links
        last = httpx.get(f"{hub}{CS}", params={"limit": 2, "offset": 2})
        rels = " ".join(v for k, v in last.headers.multi_items() if k == "link")
        assert 'rel="prev"' in rels
        assert 'rel="next"' not in rels
        found = httpx.get(f"{hub}{R}", params={"type": "公園", "limit": 2})
        assert len(found.json()) == 2
        rels = " ".join(v for k, v in found.headers.multi_items() if k == "link")
        assert 'rel="next"' in rels
        assert "offset=2" in rels
        assert 'rel="prev"' not in rels
    finally:
        for n in names:
            delete(f"{hub}{CS}/{SUB}頁{n}")
            delete(f"{hub}{R}/{REG}頁{n}")


def test_a_body_without_media_type_that_is_not_json_is_invalid(hub: str) -> None:
    """§6.3.4: request payloads are application/json or application/ld+json, others are
    415; a request with no Content-Type at all leaves the recipient to examine the data
    (IETF RFC 9110 §8.3): a body that is no JSON document is InvalidRequest (400), as
    under either JSON type, and one that is JSON still needs its media type (415)."""
    url = f"{hub}{CS}/{SUB}媒体型"
    post(f"{hub}{CS}", subscription("媒体型", "http://127.0.0.1:9/notify", "公衆トイレ"))
    try:
        broken = b'{"notification": {"format": "keyValues",,}}'
        r = httpx.patch(url, content=broken)
        assert r.status_code == 400, r.text
        assert r.json()["type"] == ERR + "InvalidRequest"
        r = httpx.patch(url, content=b'{"isActive": false}')
        assert r.status_code == 415, r.text
        r = httpx.patch(url, content=broken, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415, r.text
        assert "isActive" not in httpx.get(url).json()
    finally:
        delete(url)
