"""NGSI v2 subscriptions (``/v2/subscriptions``) and ``POST /v2/op/notify`` over HTTP, with
notifications delivered to a real HTTP receiver on 127.0.0.1 and to a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import make_settings
from tests.receiver import Receiver
from tests.support import broker, eventually, free_port

S = "/v2/subscriptions"
E = "/v2/entities"
KOMAE = {"Fiware-Service": "komae", "Fiware-ServicePath": "/tama"}


def sub_body(url: str, **notification: Any) -> dict[str, Any]:
    n: dict[str, Any] = {"http": {"url": url}}
    n.update(notification)
    return {
        "description": "多摩川の水位を見守る",
        "subject": {"entities": [{"idPattern": ".*", "type": "WaterLevel"}]},
        "notification": n,
    }


def water(eid: str = "水位計-狛江", level: float = 1.5, **attrs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": eid,
        "type": "WaterLevel",
        "level": {"type": "Number", "value": level, "metadata": {"unitCode": {"value": "MTR"}}},
        "name": {"type": "Text", "value": "多摩川 狛江"},
    }
    body.update(attrs)
    return body


def create(client: TestClient, body: dict[str, Any], headers: dict[str, str] = KOMAE) -> str:
    r = client.post(S, json=body, headers=headers)
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    assert location.startswith(f"{S}/")
    return str(location.rsplit("/", 1)[1])


def status_of(client: TestClient, sub_id: str, headers: dict[str, str] = KOMAE) -> dict[str, Any]:
    r = client.get(f"{S}/{sub_id}", headers=headers)
    assert r.status_code == 200, r.text
    shown: dict[str, Any] = r.json()
    return shown


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_lifecycle(client: TestClient, receiver: Receiver) -> None:
    sub_id = create(client, sub_body(receiver.url, attrs=["level"]))
    assert len(sub_id) == 24
    assert int(sub_id, 16) >= 0
    shown = status_of(client, sub_id)
    assert shown == {
        "id": sub_id,
        "description": "多摩川の水位を見守る",
        "subject": {
            "entities": [{"idPattern": ".*", "type": "WaterLevel"}],
            "condition": {"attrs": [], "notifyOnMetadataChange": True},
        },
        "notification": {
            "http": {"url": receiver.url},
            "attrs": ["level"],
            "attrsFormat": "normalized",
            "onlyChangedAttrs": False,
            "covered": False,
        },
        "status": "active",
    }
    other = create(client, {**sub_body(receiver.url), "description": "二つ目", "throttling": 5})
    listed = client.get(f"{S}?limit=1&offset=1&options=count", headers=KOMAE)
    assert listed.headers["Fiware-Total-Count"] == "2"
    assert [s["id"] for s in listed.json()] == [other]
    assert listed.json()[0]["throttling"] == 5
    patch = {"status": "inactive", "expires": "2099-01-01T00:00:00Z"}
    assert client.patch(f"{S}/{sub_id}", json=patch, headers=KOMAE).status_code == 204
    shown = status_of(client, sub_id)
    assert (shown["status"], shown["expires"]) == ("inactive", "2099-01-01T00:00:00.000Z")
    assert shown["notification"]["attrs"] == ["level"], "what the PATCH did not name stays"
    # another tenant does not see them; NGSI-LD lists its own kind only
    assert client.get(S, headers={"Fiware-Service": "chofu"}).json() == []
    assert client.get("/ngsi-ld/v1/subscriptions", headers={"NGSILD-Tenant": "komae"}).json() == []
    assert client.delete(f"{S}/{sub_id}", headers=KOMAE).status_code == 204
    assert error(client.get(f"{S}/{sub_id}", headers=KOMAE)) == (404, "NotFound")
    assert error(client.delete(f"{S}/{sub_id}", headers=KOMAE)) == (404, "NotFound")
    assert error(client.put(f"{S}/{other}", json={}, headers=KOMAE)) == (405, "MethodNotAllowed")
    assert error(client.post(S, json={"subject": {}}, headers=KOMAE)) == (400, "BadRequest")
    as_json = {**KOMAE, "Content-Type": "application/json"}
    assert error(client.post(S, content=b"{", headers=as_json)) == (400, "ParseError")
    bad_patch = client.patch(f"{S}/{other}", json={"status": "停止"}, headers=KOMAE)
    assert error(bad_patch) == (400, "BadRequest")


def test_notifications_carry_v2_entities_and_headers(
    client: TestClient, receiver: Receiver
) -> None:
    sub_id = create(client, sub_body(receiver.url))
    assert client.post(E, json=water(), headers=KOMAE).status_code == 201
    patch = {"level": {"type": "Number", "value": 2.1}}
    assert client.patch(f"{E}/水位計-狛江/attrs", json=patch, headers=KOMAE).status_code == 204
    (h1, n1), (_, n2) = receiver.wait(2)
    assert h1["ngsiv2-attrsformat"] == "normalized"
    assert h1["fiware-service"] == "komae"
    assert h1["fiware-servicepath"] == "/tama"
    assert h1["fiware-correlator"]
    assert n1 == {
        "subscriptionId": sub_id,
        "data": [
            {
                "id": "水位計-狛江",
                "type": "WaterLevel",
                "level": {
                    "type": "Number",
                    "value": 1.5,
                    "metadata": {"unitCode": {"type": "Text", "value": "MTR"}},
                },
                "name": {"type": "Text", "value": "多摩川 狛江", "metadata": {}},
            }
        ],
    }
    assert n2["data"][0]["level"]["value"] == 2.1
    # writing the same value again is no change: nothing is sent
    assert client.patch(f"{E}/水位計-狛江/attrs", json=patch, headers=KOMAE).status_code == 204
    receiver.quiet(2)

    def counted() -> bool:
        return bool(status_of(client, sub_id)["notification"].get("timesSent") == 2)

    eventually(counted, what="timesSent counting both notifications")
    n = status_of(client, sub_id)["notification"]
    assert n["lastSuccessCode"] == 200
    assert n["lastNotification"].endswith("Z")
    assert "lastSuccess" in n
    assert "failsCounter" not in n
    assert "lastFailure" not in n


def test_conditions_alteration_types_and_expressions(
    client: TestClient, receiver: Receiver
) -> None:
    body = sub_body(receiver.url, attrs=["level", "alterationType"], onlyChangedAttrs=True)
    body["subject"]["condition"] = {
        "attrs": ["level"],
        "expression": {"q": "level>2"},
        "alterationTypes": ["entityCreate", "entityChange", "entityDelete"],
    }
    create(client, body)
    client.post(E, json=water("水位計-低", 1.0), headers=KOMAE)  # q does not hold
    client.post(E, json=water("水位計-高", 3.0), headers=KOMAE)
    rename = {"name": {"type": "Text", "value": "改名"}}
    client.patch(f"{E}/水位計-高/attrs", json=rename, headers=KOMAE)  # not a condition attr
    client.patch(f"{E}/水位計-高/attrs", json={"level": {"value": 3.5}}, headers=KOMAE)
    assert client.delete(f"{E}/水位計-高", headers=KOMAE).status_code == 204
    received = receiver.wait(3)
    receiver.quiet(3)
    kinds = [n["data"][0]["alterationType"]["value"] for _, n in received]
    assert kinds == ["entityCreate", "entityChange", "entityDelete"]
    assert [n["data"][0]["id"] for _, n in received] == ["水位計-高"] * 3
    changed = received[1][1]["data"][0]
    assert set(changed) == {"id", "type", "level", "alterationType"}
    assert changed["level"]["value"] == 3.5


def test_formats(client: TestClient, receiver: Receiver) -> None:
    for fmt in ("keyValues", "values", "simplifiedNormalized", "simplifiedKeyValues", "legacy"):
        create(client, sub_body(receiver.url, attrs=["level"], attrsFormat=fmt))
    client.post(E, json=water(), headers=KOMAE)
    got = {h["ngsiv2-attrsformat"]: n for h, n in receiver.wait(5)}
    assert got["keyValues"]["data"] == [{"id": "水位計-狛江", "type": "WaterLevel", "level": 1.5}]
    assert got["values"]["data"] == [[1.5]]
    assert got["simplifiedKeyValues"] == {"id": "水位計-狛江", "type": "WaterLevel", "level": 1.5}
    assert got["simplifiedNormalized"]["level"]["value"] == 1.5
    legacy = got["legacy"]["contextResponses"][0]
    assert legacy["contextElement"]["attributes"][0]["name"] == "level"
    assert legacy["statusCode"] == {"code": "200", "reasonPhrase": "OK"}


def test_custom_http_notifications(client: TestClient, receiver: Receiver) -> None:
    base = receiver.url.rsplit("/", 1)[0]
    custom = {
        "url": base + "/水位/${id}",
        "method": "PUT",
        "qs": {"種別": "${type}"},
        "headers": {"X-Level": "${level}", "Authorization": "Bearer%20t0ken-1"},
        "json": {"水位": "${level}", "地点": "${name} (${servicePath})"},
    }
    sub_id = create(client, {**sub_body(receiver.url), "notification": {"httpCustom": custom}})
    client.post(E, json=water(), headers=KOMAE)
    receiver.wait(1)
    req = receiver.requests[0]
    assert req.method == "PUT"
    path = urlsplit(req.path)
    assert unquote(path.path) == "/水位/水位計-狛江"
    assert parse_qs(path.query) == {"種別": ["WaterLevel"]}
    assert req.headers["x-level"] == "1.5"
    assert req.headers["authorization"] == "Bearer t0ken-1"
    assert req.headers["ngsiv2-attrsformat"] == "custom"
    assert orjson.loads(req.raw) == {"水位": 1.5, "地点": "多摩川 狛江 (/tama)"}
    # the token is answered masked, and a PATCH echoing it back keeps it
    shown = status_of(client, sub_id)["notification"]
    assert shown["httpCustom"]["headers"]["Authorization"] == "***"
    text = {k: v for k, v in shown["httpCustom"].items() if k != "json"}
    patch = {"notification": {"httpCustom": {**text, "payload": "水位%3D${level}"}}}
    assert client.patch(f"{S}/{sub_id}", json=patch, headers=KOMAE).status_code == 204
    client.patch(f"{E}/水位計-狛江/attrs", json={"level": {"value": 1.7}}, headers=KOMAE)
    receiver.wait(2)
    req = receiver.requests[1]
    assert req.headers["authorization"] == "Bearer t0ken-1"
    assert req.raw.decode() == "水位=1.7"
    assert req.headers["content-type"].startswith("text/plain")


def test_inactive_oneshot_throttling_and_expiry(client: TestClient, receiver: Receiver) -> None:
    inactive = create(client, {**sub_body(receiver.url), "status": "inactive"})
    expired = create(client, {**sub_body(receiver.url), "expires": "2020-01-01T00:00:00Z"})
    assert status_of(client, expired)["status"] == "expired"
    oneshot = create(client, {**sub_body(receiver.url, attrs=["level"]), "status": "oneshot"})
    client.post(E, json=water(level=1.0), headers=KOMAE)
    for level in (1.1, 1.2):
        client.patch(f"{E}/水位計-狛江/attrs", json={"level": {"value": level}}, headers=KOMAE)
    assert [n["subscriptionId"] for _, n in receiver.wait(1)] == [oneshot]
    receiver.quiet(1)
    eventually(lambda: status_of(client, oneshot)["status"] == "inactive", what="inactive")
    # set oneshot again: one more notification
    assert client.patch(f"{S}/{oneshot}", json={"status": "oneshot"}, headers=KOMAE).status_code
    client.patch(f"{E}/水位計-狛江/attrs", json={"level": {"value": 1.3}}, headers=KOMAE)
    client.patch(f"{E}/水位計-狛江/attrs", json={"level": {"value": 1.4}}, headers=KOMAE)
    second = receiver.wait(2)[1][1]
    assert second["data"][0]["level"]["value"] == 1.3
    receiver.quiet(2)
    assert status_of(client, inactive)["notification"].get("timesSent") is None
    # throttling: two changes within the period give one notification
    client.patch(f"{S}/{inactive}", json={"status": "active", "throttling": 60}, headers=KOMAE)
    for level in (2.0, 2.1):
        client.patch(f"{E}/水位計-狛江/attrs", json={"level": {"value": level}}, headers=KOMAE)
    assert receiver.wait(3)[2][1]["subscriptionId"] == inactive
    receiver.quiet(3)


def test_failures_are_shown(client: TestClient) -> None:
    dead = f"http://127.0.0.1:{free_port()}/誰もいない"
    failing = Receiver(status=500)
    hub = client.app.state.hub  # type: ignore[attr-defined]
    hub.subscriptions.delivery.backoff = 0.01
    try:
        unreachable = create(
            client, {**sub_body(dead), "notification": {"http": {"url": dead}, "maxFailsLimit": 1}}
        )
        erroring = create(client, sub_body(failing.url))
        client.post(E, json=water(), headers=KOMAE)
        failing.wait(1)

        def failed(sub_id: str) -> bool:
            return "lastFailure" in status_of(client, sub_id)["notification"]

        eventually(lambda: failed(unreachable) and failed(erroring), what="the failures")
        n = status_of(client, erroring)["notification"]
        assert "500" in n["lastFailureReason"]
        assert n["failsCounter"] >= 1
        assert "lastSuccessCode" not in n
        gone = status_of(client, unreachable)
        assert "connect" in gone["notification"]["lastFailureReason"]
        assert "誰もいない" not in gone["notification"]["lastFailureReason"]
        # over its maxFailsLimit (1), the subscription turns inactive
        eventually(lambda: status_of(client, unreachable)["status"] == "inactive", timeout=15)
    finally:
        failing.close()


def test_endpoints_the_outbound_policy_refuses(client: TestClient) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:1026/v2/entities"):
        r = client.post(S, json=sub_body(url), headers=KOMAE)
        assert error(r) == (400, "BadRequest"), url
    mqtt = {"url": "mqtt://169.254.169.254:1883", "topic": "水位"}
    r = client.post(S, json={**sub_body(""), "notification": {"mqtt": mqtt}}, headers=KOMAE)
    assert error(r) == (400, "BadRequest")
    assert client.get(S, headers=KOMAE).json() == []


def test_service_paths(client: TestClient, receiver: Receiver) -> None:
    tama = create(client, sub_body(receiver.url), {**KOMAE, "Fiware-ServicePath": "/tama/#"})
    create(client, sub_body(receiver.url), {**KOMAE, "Fiware-ServicePath": "/sagami"})
    client.post(E, json=water("水位計-相模"), headers={**KOMAE, "Fiware-ServicePath": "/sagami"})
    client.post(
        E, json=water("水位計-和泉"), headers={**KOMAE, "Fiware-ServicePath": "/tama/izumi"}
    )
    received = receiver.wait(2)
    receiver.quiet(2)
    by_sub = {n["subscriptionId"]: (h, n["data"][0]["id"]) for h, n in received}
    assert by_sub[tama][1] == "水位計-和泉"
    assert by_sub[tama][0]["fiware-servicepath"] == "/tama/izumi"
    listed = client.get(S, headers={**KOMAE, "Fiware-ServicePath": "/tama/#"}).json()
    assert [s["id"] for s in listed] == [tama]
    assert len(client.get(S, headers={"Fiware-Service": "komae"}).json()) == 2


def test_op_notify_applies_a_notification(client: TestClient) -> None:
    notification = {
        "subscriptionId": "5aeb0ee97d4ef10a12a0262f",
        "data": [water("水位計-狛江", 1.9), water("水位計-調布", 0.8)],
    }
    r = client.post("/v2/op/notify", json=notification, headers=KOMAE)
    assert r.status_code == 200, r.text
    got = client.get(f"{E}/水位計-調布/attrs/level/value", headers=KOMAE)
    assert got.json() == 0.8
    notification["data"] = [{"id": "水位計-狛江", "type": "WaterLevel", "level": {"value": 2.2}}]
    assert client.post("/v2/op/notify", json=notification, headers=KOMAE).status_code == 200
    shown = client.get(f"{E}/水位計-狛江", headers=KOMAE).json()
    assert shown["level"]["value"] == 2.2
    assert shown["name"]["value"] == "多摩川 狛江", "append keeps the other attributes"
    r = client.post("/v2/op/notify?options=keyValues", json=notification, headers=KOMAE)
    assert error(r) == (400, "BadRequest")
    assert error(client.post("/v2/op/notify", json={"data": []}, headers=KOMAE)) == (
        400,
        "BadRequest",
    )


def test_registrations_are_not_offered(client: TestClient) -> None:
    r = client.get("/v2/registrations", headers=KOMAE)
    assert error(r) == (501, "NotImplemented")
    assert "registrations" in r.json()["description"]


def test_subscriptions_survive_restart(tmp_path: Path, receiver: Receiver) -> None:
    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as client:
        sub_id = create(client, sub_body(receiver.url))
    with TestClient(create_app(s)) as client:
        client.post(E, json=water(), headers=KOMAE)
        assert receiver.wait(1)[0][1]["subscriptionId"] == sub_id
        eventually(lambda: status_of(client, sub_id)["notification"].get("timesSent") == 1)


@pytest.mark.slow
def test_two_replicas_and_a_federated_copy(tmp_path: Path, receiver: Receiver) -> None:
    """Two brokers on one store share the subscriptions: throttling and oneshot hold
    across them; a third broker keeps a copy through /v2/op/notify."""
    db = tmp_path / "shared.db"
    with broker(db) as a, broker(db) as b, broker(tmp_path / "prefecture.db") as pref:
        throttled = {**sub_body(receiver.url), "throttling": 60}
        assert httpx.post(f"{a}{S}", json=throttled, headers=KOMAE).status_code == 201
        once = {**sub_body(receiver.url, attrs=["name"]), "status": "oneshot"}
        assert httpx.post(f"{b}{S}", json=once, headers=KOMAE).status_code == 201
        copy = sub_body(f"{pref}/v2/op/notify")
        assert httpx.post(f"{a}{S}", json=copy, headers=KOMAE).status_code == 201
        for i, base in enumerate([a, b, a, b]):
            r = httpx.post(f"{base}{E}", json=water(f"水位計-{i}"), headers=KOMAE)
            assert r.status_code == 201, r.text
        received = receiver.wait(2)
        receiver.quiet(2, bound=1.0)
        assert len({n["subscriptionId"] for _, n in received}) == 2

        def copied() -> bool:
            """Every entity copied; a replica sees a subscription made on another within
            its cache's second, so one written on ``b`` meanwhile is written again (an
            upsert: the throttled and the spent oneshot subscriptions stay quiet)."""
            r = httpx.get(f"{pref}{E}?type=WaterLevel&options=keyValues", headers=KOMAE)
            have = {e["id"] for e in r.json()}
            if len(have) < 4 and time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                for i, base in enumerate([a, b, a, b]):
                    if f"水位計-{i}" not in have:
                        body = water(f"水位計-{i}")
                        httpx.post(f"{base}{E}?options=upsert", json=body, headers=KOMAE)
            return len(have) == 4

        last = [time.monotonic()]

        eventually(copied, timeout=15, what="the prefecture's copy")
        receiver.quiet(2, bound=1.0)  # the writes again notified no one else
        listed = httpx.get(f"{b}{S}", headers=KOMAE).json()
        assert sorted(s["status"] for s in listed) == ["active", "active", "inactive"]


@pytest.mark.mqtt
def test_mqtt_notifications(client: TestClient, tmp_path: Path) -> None:
    from tests.support_mqtt import mosquitto, subscribe

    with mosquitto(tmp_path, users={"市役所": "s3cret"}) as mq:
        plain = {
            "url": mq.url,
            "topic": "/komae/水位",
            "qos": 1,
            "user": "市役所",
            "passwd": "s3cret",
        }
        custom = {
            **plain,
            "topic": "komae/${type}/${id}",
            "json": {"水位": "${level}"},
            "retain": True,
        }
        with subscribe(mq, "/komae/水位", user="市役所", password="s3cret") as sub:
            plain_id = create(client, {**sub_body(""), "notification": {"mqtt": plain}})
            create(client, {**sub_body(""), "notification": {"mqttCustom": custom}})
            client.post(E, json=water(), headers=KOMAE)
            (message,) = sub.wait(1, timeout=10)
            body = orjson.loads(message.payload)
            assert body["subscriptionId"] == plain_id
            assert body["data"][0]["level"]["value"] == 1.5
            assert message.qos == 1
        shown = status_of(client, plain_id)["notification"]
        assert shown["mqtt"]["passwd"] == "***"
        assert "s3cret" not in client.get(S, headers=KOMAE).text
        # the custom one was retained: a subscriber that comes later still gets it
        topic = "komae/WaterLevel/水位計-狛江"
        with subscribe(mq, topic, user="市役所", password="s3cret") as late:
            (kept,) = late.wait(1, timeout=10)
            assert orjson.loads(kept.payload) == {"水位": 1.5}
