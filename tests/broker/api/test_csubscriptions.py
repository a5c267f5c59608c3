"""Subscriptions to context source registrations over HTTP, with notifications to a real
HTTP receiver: newlyMatching, updated and noLongerMatching (clause 5.11 applied to
registrations), and their create, retrieve, query, update and delete."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import JSON
from tests.receiver import Receiver

CS = "/ngsi-ld/v1/csourceSubscriptions"
R = "/ngsi-ld/v1/csourceRegistrations"
REG = "urn:ngsi-ld:ContextSourceRegistration:"


def registration(city: str, *types: str) -> dict[str, Any]:
    return {
        "id": REG + city,
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": t}], "propertyNames": ["名称"]} for t in types],
        "endpoint": f"http://{city}-hub.example:1026",
    }


def subscription(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Subscription:都の監視",
        "type": "Subscription",
        "entities": [{"type": "AEDLocation"}],
        "notification": {"endpoint": {"uri": url, "accept": "application/json"}},
        **extra,
    }


def post(client: TestClient, url: str, body: dict[str, Any]) -> None:
    r = client.post(url, json=body, headers=JSON)
    assert r.status_code == 201, r.text


def test_notifications_follow_the_registrations(client: TestClient, receiver: Receiver) -> None:
    post(client, R, registration("komae", "AEDLocation", "EvacuationShelter"))
    post(client, CS, subscription(receiver.url))
    # initially: what already matches, with only the matching information groups
    first = receiver.wait(1)[0][1]
    assert first["type"] == "ContextSourceNotification"
    assert first["subscriptionId"] == "urn:ngsi-ld:Subscription:都の監視"
    assert first["triggerReason"] == "newlyMatching"
    assert [d["id"] for d in first["data"]] == [REG + "komae"]
    assert first["data"][0]["information"] == [
        {"entities": [{"type": "AEDLocation"}], "propertyNames": ["名称"]}
    ]
    # a new matching registration
    post(client, R, registration("chofu", "AEDLocation"))
    second = receiver.wait(2)[1][1]
    assert (second["triggerReason"], second["data"][0]["id"]) == ("newlyMatching", REG + "chofu")
    # a registration that does not match: nothing
    post(client, R, registration("inagi", "EvacuationShelter"))
    # one that changes while matching
    patch = {"endpoint": "http://chofu-hub-2.example:1026"}
    assert client.patch(f"{R}/{REG}chofu", json=patch, headers=JSON).status_code == 204
    third = receiver.wait(3)[2][1]
    assert (third["triggerReason"], third["data"][0]["endpoint"]) == (
        "updated",
        "http://chofu-hub-2.example:1026",
    )
    # one that stops matching, and one deleted
    info = {"information": registration("x", "EvacuationShelter")["information"]}
    assert client.patch(f"{R}/{REG}komae", json=info, headers=JSON).status_code == 204
    fourth = receiver.wait(4)[3][1]
    assert (fourth["triggerReason"], fourth["data"][0]["id"]) == ("noLongerMatching", REG + "komae")
    assert client.delete(f"{R}/{REG}chofu").status_code == 204
    fifth = receiver.wait(5)[4][1]
    assert (fifth["triggerReason"], fifth["data"][0]["id"]) == ("noLongerMatching", REG + "chofu")
    receiver.quiet(5)
    # delivery counts show on the subscription
    got = client.get(f"{CS}/urn:ngsi-ld:Subscription:都の監視").json()
    assert got["status"] == "active"
    assert got["notification"]["timesSent"] == 5


def test_paused_subscriptions_stay_quiet(client: TestClient, receiver: Receiver) -> None:
    post(client, CS, subscription(receiver.url, isActive=False))
    post(client, R, registration("komae", "AEDLocation"))
    assert client.get(f"{CS}/urn:ngsi-ld:Subscription:都の監視").json()["status"] == "paused"
    assert (
        client.patch(
            f"{CS}/urn:ngsi-ld:Subscription:都の監視", json={"isActive": True}, headers=JSON
        ).status_code
        == 204
    )
    # resumed: told, as after any update, of what matches now (komae began to match
    # while it was paused), then of what changes
    assert receiver.wait(1)[0][1]["data"][0]["id"] == REG + "komae"
    post(client, R, registration("chofu", "AEDLocation"))
    assert receiver.wait(2)[1][1]["data"][0]["id"] == REG + "chofu"
    receiver.quiet(2)


def test_lifecycle_and_validation(client: TestClient, receiver: Receiver) -> None:
    post(client, CS, subscription(receiver.url, watchedAttributes=["名称"]))
    sid = "urn:ngsi-ld:Subscription:都の監視"
    assert client.post(CS, json=subscription(receiver.url), headers=JSON).status_code == 409
    got = client.get(f"{CS}/{sid}").json()
    assert got["entities"] == [{"type": "AEDLocation"}]
    assert got["watchedAttributes"] == ["名称"]
    listed = client.get(f"{CS}?count=true")
    assert listed.headers["NGSILD-Results-Count"] == "1"
    assert client.delete(f"{CS}/{sid}").status_code == 204
    assert client.get(f"{CS}/{sid}").status_code == 404
    assert client.delete(f"{CS}/{sid}").status_code == 404
    bad = [
        {**subscription(receiver.url), "type": "登録"},
        {k: v for k, v in subscription(receiver.url).items() if k != "notification"},
        subscription(receiver.url, q="名称=="),
        subscription(receiver.url, expiresAt="2020-01-01T00:00:00Z"),
        subscription(receiver.url, watchedAttributes=[]),
        subscription("ftp://komae.example/notify"),
    ]
    for body in bad:
        r = client.post(CS, json=body, headers=JSON)
        assert r.status_code == 400, (body, r.text)
    assert client.get(f"{CS}/not-a-uri").status_code == 400


def test_time_interval_sends_what_matches_again(client: TestClient, receiver: Receiver) -> None:
    post(client, R, registration("komae", "AEDLocation"))
    post(client, CS, subscription(receiver.url, timeInterval=1))
    got = receiver.wait(3, timeout=15)  # at creation, then every second
    assert {n["subscriptionId"] for _h, n in got} == {"urn:ngsi-ld:Subscription:都の監視"}
    assert all(n["data"][0]["id"] == REG + "komae" for _h, n in got)
