"""Subscriptions over HTTP, with notifications delivered to a real HTTP receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import JSON, building, make_settings
from tests.receiver import Receiver
from tests.support import broker, eventually, free_port

S = "/ngsi-ld/v1/subscriptions"
E = "/ngsi-ld/v1/entities"


def subscription(url: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": url, "accept": "application/json"}},
    }
    body.update(extra)
    return body


def create_sub(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post(S, json=body, headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.headers["location"].rsplit("/", 1)[1])


def test_lifecycle_and_validation(client: TestClient, receiver: Receiver) -> None:
    sid = create_sub(
        client, subscription(receiver.url, id="urn:ngsi-ld:Subscription:1", q="floors>2")
    )
    assert sid == "urn:ngsi-ld:Subscription:1"
    assert client.post(S, json=subscription(receiver.url, id=sid), headers=JSON).status_code == 409
    got = client.get(f"{S}/{sid}").json()
    assert got["status"] == "active"
    assert got["notification"]["timesSent"] == 0
    assert got["notification"]["format"] == "normalized"
    assert client.patch(f"{S}/{sid}", json={"isActive": False}, headers=JSON).status_code == 204
    assert client.get(f"{S}/{sid}").json()["status"] == "paused"
    listed = client.get(f"{S}?count=true")
    assert listed.headers["ngsild-results-count"] == "1"
    assert [s["id"] for s in listed.json()] == [sid]
    assert client.get(f"{S}?limit=many").status_code == 400  # paged like /entities
    assert client.get(f"{S}?limit=5000").status_code == 403
    assert client.delete(f"{S}/{sid}").status_code == 204
    assert client.get(f"{S}/{sid}").status_code == 404
    bad = [
        {
            "type": "Subscription",
            "notification": {"endpoint": {"uri": receiver.url}},
        },  # nothing watched
        subscription("ftp://x/y"),
        subscription(receiver.url, q="floors>>2"),
        subscription(receiver.url, timeInterval=5, throttling=2),
        subscription(receiver.url, notificationTrigger=["somethingHappened"]),
        subscription(receiver.url, expiresAt="2001-01-01T00:00:00Z"),
        {**subscription(receiver.url), "type": "Other"},
    ]
    for body in bad:
        assert client.post(S, json=body, headers=JSON).status_code == 400, body
    assert (
        client.post(S, json=subscription(receiver.url, csf="name=="), headers=JSON).status_code
        == 400
    )
    assert (
        client.post(
            S, json=subscription(receiver.url, csf='自治体=="狛江市"'), headers=JSON
        ).status_code
        == 201
    )


def test_notifications_follow_writes(client: TestClient, receiver: Receiver) -> None:
    create_sub(
        client,
        subscription(
            receiver.url,
            watchedAttributes=["floors"],
            q="floors>2",
            notification={
                "endpoint": {
                    "uri": receiver.url,
                    "receiverInfo": [{"key": "X-Komae", "value": "1"}],
                },
                "format": "keyValues",
            },
        ),
    )
    client.post(E, json=building(), headers=JSON)  # floors=5: created, matches
    headers, note = receiver.wait(1)[0]
    assert note["type"] == "Notification"
    assert note["data"] == [
        {
            "id": "urn:ngsi-ld:Building:1",
            "type": "Building",
            "name": "Komae City Hall",
            "floors": 5,
            "location": {"type": "Point", "coordinates": [139.578, 35.634]},
        }
    ]
    assert headers["content-type"] == "application/json"
    assert "ngsi-ld-core-context" in headers["link"]
    assert headers["x-komae"] == "1"
    client.patch(
        f"{E}/urn:ngsi-ld:Building:1/attrs", json={"name": "renamed"}, headers=JSON
    )  # not watched
    client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": 1}, headers=JSON)  # fails q
    client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": 7}, headers=JSON)
    received = receiver.wait(2)
    assert [d["floors"] for _, note in received for d in note["data"]] == [5, 7]
    receiver.quiet(2, bound=0.5)  # the unwatched and the failing change sent nothing


def test_triggers_and_show_changes(client: TestClient, receiver: Receiver) -> None:
    create_sub(client, subscription(receiver.url, notificationTrigger=["entityDeleted"]))
    create_sub(
        client,
        subscription(
            receiver.url,
            notificationTrigger=["attributeUpdated"],
            notification={"endpoint": {"uri": receiver.url}, "showChanges": True},
        ),
    )
    client.post(E, json=building(), headers=JSON)
    client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": 6}, headers=JSON)
    note = receiver.wait(1)[0][1]
    assert note["data"][0]["floors"] == {"type": "Property", "value": 6, "previousValue": 5}
    client.delete(f"{E}/urn:ngsi-ld:Building:1")
    deleted = receiver.wait(2)[1][1]["data"][0]
    assert deleted["id"] == "urn:ngsi-ld:Building:1"
    assert "deletedAt" in deleted


def test_throttling_and_failing_endpoints(client: TestClient, receiver: Receiver) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    failing = create_sub(client, subscription(dead))
    create_sub(client, subscription(receiver.url, throttling=30))
    for floors in (1, 2, 3):
        client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": floors}, headers=JSON)
        client.post(E, json=building(floors={"type": "Property", "value": floors}), headers=JSON)
    receiver.wait(1)
    receiver.quiet(1, bound=0.5)  # throttled

    def failure_counted() -> bool:
        return bool(client.get(f"{S}/{failing}").json()["notification"].get("timesFailed"))

    eventually(failure_counted, what="the failed delivery's count")
    status = client.get(f"{S}/{failing}").json()["notification"]
    assert status["status"] == "failed"
    assert "lastFailure" in status


def test_time_interval(client: TestClient, receiver: Receiver) -> None:
    client.post(E, json=building(), headers=JSON)
    create_sub(client, subscription(receiver.url, timeInterval=1))
    received = receiver.wait(2, timeout=6)
    assert all(n["data"][0]["id"] == "urn:ngsi-ld:Building:1" for _, n in received)


def test_subscriptions_survive_restart(tmp_path: Path, receiver: Receiver) -> None:
    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as client:
        create_sub(client, subscription(receiver.url))
    with TestClient(create_app(s)) as client:
        client.post(E, json=building(), headers=JSON)
        receiver.wait(1)

        def times_sent() -> int:
            return int(client.get(S).json()[0]["notification"].get("timesSent", 0))

        eventually(lambda: times_sent() >= 1, what="the delivery's count")
        assert times_sent() == 1


@pytest.mark.slow
def test_throttling_holds_across_two_processes(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "shared.db"
    with broker(db) as a, broker(db) as b:
        r = httpx.post(f"{a}{S}", json=subscription(receiver.url, throttling=60), headers=JSON)
        assert r.status_code == 201
        for i, base in enumerate([a, b, a, b]):
            body = building(f"urn:ngsi-ld:Building:{i}")
            assert httpx.post(f"{base}{E}", json=body, headers=JSON).status_code == 201
        receiver.wait(1)
        receiver.quiet(1, bound=1.0)


@pytest.mark.mqtt
def test_mqtt_notifications_end_to_end(client: TestClient, tmp_path: Path) -> None:
    import orjson

    from tests.support_mqtt import mosquitto, subscribe

    with (
        mosquitto(tmp_path, users={"city": "s3cret"}) as mq,
        subscribe(mq, "komae/buildings", user="city", password="s3cret") as sub,
    ):
        endpoint = {
            "uri": mq.endpoint("komae/buildings", "city", "s3cret"),
            "notifierInfo": [
                {"key": "MQTT-QoS", "value": "1"},
                {"key": "MQTT-Version", "value": "mqtt5.0"},
            ],
            "receiverInfo": [{"key": "X-Komae", "value": "1"}],
        }
        create_sub(
            client,
            subscription(
                "http://unused", notification={"endpoint": endpoint, "format": "keyValues"}
            ),
        )
        client.post(E, json=building(), headers=JSON)
        client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": 9}, headers=JSON)
        messages = sub.wait(2, timeout=10)
        first = orjson.loads(messages[0].payload)
        assert first["metadata"]["Content-Type"] == "application/json"
        assert first["metadata"]["X-Komae"] == "1"
        assert first["body"]["type"] == "Notification"
        assert orjson.loads(messages[1].payload)["body"]["data"][0]["floors"] == 9
        assert messages[0].qos == 1


def test_status_counts_are_current_before_they_are_written(
    client: TestClient, receiver: Receiver
) -> None:
    hub = client.app.state.hub  # type: ignore[attr-defined]
    hub.subscriptions.delivery.status_interval = 60.0  # outcomes stay pending for the whole test
    sid = create_sub(client, subscription(receiver.url))
    client.post(E, json=building(), headers=JSON)
    receiver.wait(1)
    eventually(
        lambda: client.get(f"{S}/{sid}").json()["notification"].get("timesSent", 0) == 1,
        timeout=5,
        what="timesSent counting the delivery",
    )
    status = client.get(f"{S}/{sid}").json()["notification"]
    assert status["status"] == "ok"
    assert "lastSuccess" in status


def test_attribute_deletions_are_notified(client: TestClient, receiver: Receiver) -> None:
    create_sub(
        client,
        subscription(
            receiver.url,
            watchedAttributes=["name"],
            q='name=="Komae%20Hall"',
            notificationTrigger=["attributeDeleted"],
        ),
    )
    client.post(
        E,
        headers=JSON,
        json=building(
            name=[
                {"type": "Property", "value": "Komae Hall"},
                {"type": "Property", "value": "狛江", "datasetId": "urn:ngsi-ld:Dataset:ja"},
            ]
        ),
    )
    client.delete(f"{E}/urn:ngsi-ld:Building:1/attrs/name?datasetId=urn:ngsi-ld:Dataset:ja")
    name = receiver.wait(1)[0][1]["data"][0]["name"]
    assert {
        "type": "Property",
        "datasetId": "urn:ngsi-ld:Dataset:ja",
        "value": "urn:ngsi-ld:null",
    } in name
    client.delete(
        f"{E}/urn:ngsi-ld:Building:1"
    )  # deleting the entity deletes its watched attribute
    deleted = receiver.wait(2)[1][1]["data"][0]
    assert deleted["id"] == "urn:ngsi-ld:Building:1"
    assert deleted["name"] == {"type": "Property", "value": "urn:ngsi-ld:null"}


def test_changes_for_a_slow_endpoint_go_out_together_in_order(client: TestClient) -> None:
    """While a notification is on its way, later changes queue and leave in one
    notification: nothing is lost, and each entity's changes keep their order."""
    slow = Receiver(delay=0.3)
    try:
        create_sub(
            client,
            subscription(
                slow.url,
                notification={
                    "endpoint": {"uri": slow.url},
                    "format": "keyValues",
                    "attributes": ["floors"],
                },
            ),
        )
        client.post(E, json=building(), headers=JSON)
        for floors in range(6, 26):
            r = client.patch(
                f"{E}/urn:ngsi-ld:Building:1/attrs", json={"floors": floors}, headers=JSON
            )
            assert r.status_code == 204

        def notified(received: list[tuple[dict[str, str], Any]]) -> list[int]:
            return [d["floors"] for _, note in received for d in note["data"]]

        received = slow.wait_for(lambda r: 25 in notified(r), timeout=20, what="floors=25")
        assert notified(received) == list(range(5, 26))
        assert len(slow.received) < 10  # 21 changes, far fewer notifications
    finally:
        slow.close()
