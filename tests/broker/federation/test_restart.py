"""What a hub keeps across a restart of the same store: the name it gives itself in
``Via`` (so a loop through it is still recognised), and the delivery counts of its
registration subscriptions. A real ``renkei serve`` process on a SQLite file, stopped
and started again."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.broker.federation.source import source
from tests.receiver import Receiver
from tests.support import broker as hub
from tests.support import eventually

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
CS = "/ngsi-ld/v1/csourceSubscriptions"
JSON = {"Content-Type": "application/json"}
SUB = "urn:ngsi-ld:Subscription:都の登録監視"


def registration(url: str) -> dict[str, object]:
    return {
        "id": "urn:ngsi-ld:ContextSourceRegistration:狛江市",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "AEDLocation"}]}],
        "endpoint": url,
    }


def test_the_via_name_survives_a_restart(tmp_path: Path) -> None:
    """Clause 4.3.6.4: "a specific field listing all previously encountered Context
    Sources (e.g. a Via header ...) shall be passed as part of the request and this
    field can be used to exclude duplicated sources". With neither RENKEI_HUB_ID nor
    RENKEI_PUBLIC_URL the hub makes its name up once and keeps it in the store: a
    request that left before a restart and comes back after it is still a loop."""
    db = tmp_path / "東京都.db"
    with source() as komae:
        komae.answer("GET", "/ngsi-ld/v1/entities", 200, [])
        with hub(db) as tokyo:
            r = httpx.post(f"{tokyo}{R}", json=registration(komae.url), headers=JSON)
            assert r.status_code == 201, r.text
            assert httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation"}).status_code == 200
            first = komae.requests[-1].headers["via"]
        assert first.startswith("1.1 renkei-")
        with hub(db) as tokyo:
            assert httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation"}).status_code == 200
            assert komae.requests[-1].headers["via"] == first
            # the request it forwarded before the restart, coming back: 508
            back = httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation"}, headers={"Via": first})
            assert back.status_code == 508, back.text
            assert back.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LoopDetected"


def test_registration_subscription_counts_survive_a_restart(tmp_path: Path) -> None:
    """``timesSent``, ``lastNotification`` and ``lastSuccess`` of a registration
    subscription (clause 5.2.12's NotificationParams, applied to csourceSubscriptions)
    are kept in the store, as those of entity subscriptions are."""
    db = tmp_path / "東京都.db"
    receiver = Receiver()
    try:
        with hub(db) as tokyo:
            r = httpx.post(
                f"{tokyo}{R}", json=registration("http://komae-hub.example:1026"), headers=JSON
            )
            assert r.status_code == 201, r.text
            sub = {
                "id": SUB,
                "type": "Subscription",
                "entities": [{"type": "AEDLocation"}],
                "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}},
            }
            assert httpx.post(f"{tokyo}{CS}", json=sub, headers=JSON).status_code == 201
            (_headers, note), *_ = receiver.wait(1)
            assert note["triggerReason"] == "newlyMatching"
            # an attempt is counted before it is sent; its success once it is answered
            assert httpx.get(f"{tokyo}{CS}/{SUB}").json()["notification"]["timesSent"] == 1
            eventually(
                lambda: "lastSuccess" in httpx.get(f"{tokyo}{CS}/{SUB}").json()["notification"],
                what="the delivery recorded as a success",
            )
            before = httpx.get(f"{tokyo}{CS}/{SUB}").json()["notification"]
        with hub(db) as tokyo:
            after = httpx.get(f"{tokyo}{CS}/{SUB}").json()["notification"]
            assert after["timesSent"] == 1
            assert after["lastNotification"] == before["lastNotification"]
            assert after["lastSuccess"] == after["lastNotification"]
            assert "lastFailure" not in after
    finally:
        receiver.close()
