"""Access control of the IoT agent, with real parts: the broker's auth file, a broker
process that enforces it, real API keys and real tokens from a test OIDC issuer, a
real Mosquitto and devices publishing through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import _iter_routes_with_context
from fastapi.testclient import TestClient
from starlette.routing import Route

from broker.auth import hash_key
from connectors.mqtt.access import authorize
from connectors.mqtt.agent import NOTIFY_HEADER, notify_token
from connectors.mqtt.app import create_app
from connectors.mqtt.registry import Registry
from connectors.mqtt.settings import AgentSettings
from tests.connectors.mqtt.conftest import Publisher, RunningAgent, run_agent, wait_for
from tests.support import broker, free_port
from tests.support_mqtt import MqttBroker, subscribe
from tests.support_oidc import OidcIssuer, oidc_issuer

pytestmark = pytest.mark.mqtt

KEYS = {
    "komae-iot": "komae-iot-admin-key-0001",
    "chofu-iot": "chofu-iot-admin-key-0002",
    "komae-weather": "komae-weather-admin-key-0003",
    "komae-writer": "komae-writer-key-0004",
    "iot-agent": "iot-agent-broker-key-0005",
    "hub-admin": "hub-admin-key-0006",
}
KOMAE = {"fiware-service": "komae", "fiware-servicepath": "/"}
CHOFU = {"fiware-service": "chofu", "fiware-servicepath": "/"}
ENTITIES = "/ngsi-ld/v1/entities"


def auth_yaml(issuer: OidcIssuer) -> str:
    def entry(name: str, role: str, tenants: str) -> str:
        return (
            f'  - {{name: {name}, key_sha256: "{hash_key(KEYS[name])}", roles: [{role}], '
            f"tenants: {tenants}}}\n"
        )

    return (
        "api_keys:\n"
        + entry("komae-iot", "iot-admin", "[komae]")
        + entry("chofu-iot", "iot-admin", "[chofu]")
        + entry("komae-weather", "weather-admin", "[komae]")
        + entry("komae-writer", "writer", "[komae]")
        + entry("iot-agent", "agent", '["*"]')
        + entry("hub-admin", "admin", '["*"]')
        + f"""oidc:
  issuer: {issuer.issuer}
  audience: renkei
  jwks_url: {issuer.jwks_url}
roles:
  iot-admin: {{read: ["*"], write: ["*"], admin: true}}
  weather-admin: {{read: ["*"], write: [WeatherObserved], admin: true}}
  writer: {{read: ["*"], write: ["*"], subscribe: ["*"]}}
  agent: {{read: ["*"], write: ["*"], subscribe: ["*"], admin: true}}
  admin: {{read: ["*"], write: ["*"], subscribe: ["*"], admin: true}}
"""
    )


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with oidc_issuer() as state:
        yield state


@pytest.fixture(scope="module")
def auth_file(tmp_path_factory: pytest.TempPathFactory, issuer: OidcIssuer) -> Path:
    path = tmp_path_factory.mktemp("auth") / "auth.yaml"
    path.write_text(auth_yaml(issuer), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, auth_file: Path) -> Iterator[str]:
    """A broker process enforcing the same auth file."""
    db = tmp_path_factory.mktemp("hub") / "hub.db"
    with broker(db, "--auth-file", str(auth_file)) as url:
        yield url


def agent_settings(tmp_path: Path, auth_file: Path | None, **more: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "mqtt_url": f"mqtt://127.0.0.1:{free_port()}",
        "broker_url": f"http://127.0.0.1:{free_port()}",
        "iota_db": str(tmp_path / "iota.db"),
        "iota_port": free_port(),
        "iota_window_ms": 20,
        "auth_file": auth_file,
        "audit_log": tmp_path / "audit.jsonl",
    }
    values.update(more)
    return AgentSettings(**values)


@pytest.fixture
def api(tmp_path: Path, auth_file: Path, hub: str) -> Iterator[TestClient]:
    """The agent's HTTP app under the auth file; the broker is real (entity checks)."""
    settings = agent_settings(tmp_path, auth_file, broker_url=hub, broker_api_key=KEYS["iot-agent"])
    with TestClient(create_app(settings)) as client:
        yield client


def group(apikey: str, entity_type: str = "WeatherObserved", **more: Any) -> dict[str, Any]:
    return {"groups": [{"apikey": apikey, "entity_type": entity_type, **more}]}


# -- every route has the dependency ------------------------------------------------------------


def _calls(dependant: Any) -> list[Any]:
    out = []
    for d in dependant.dependencies:
        out.append(d.call)
        out.extend(_calls(d))
    return out


def test_every_agent_route_has_the_access_dependency(tmp_path: Path) -> None:
    """A route added to the agent without the dependency fails here."""
    app = create_app(agent_settings(tmp_path, None))
    seen = set()
    for route, context in _iter_routes_with_context(app.routes):
        dependant = context.dependant if context is not None else getattr(route, "dependant", None)
        if dependant is None:
            assert isinstance(route, Route), route
            assert route.path in {"/openapi.json"}, route.path
            continue
        assert authorize in _calls(dependant), f"{route.path} has no access check"  # type: ignore[attr-defined]
        seen.add(route.path)  # type: ignore[attr-defined]
    assert {"/iot/groups", "/iot/services", "/iot/devices", "/iot/devices/{device_id}"} <= seen
    assert {"/iot/json", "/notify", "/metrics", "/health"} <= seen
    assert {"/ngsi-ld/v1/entities", "/ngsi-ld/v1/entities/{entity_id}/attrs"} <= seen


# -- who may provision ---------------------------------------------------------------------------


def test_provisioning_needs_admin_in_the_service(
    api: TestClient, issuer: OidcIssuer, tmp_path: Path
) -> None:
    body = group("狛江-気象")
    anonymous = api.post("/iot/groups", json=body, headers=KOMAE)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Bearer realm="renkei"')
    assert anonymous.json()["name"] == "UNAUTHORIZED"
    wrong = api.post("/iot/groups", json=body, headers={**KOMAE, "X-API-Key": "nope-0000"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    expired = issuer.sign({"exp": 1, "realm_access": {"roles": ["iot-admin"]}})
    late = api.get("/iot/groups", headers={**KOMAE, "Authorization": f"Bearer {expired}"})
    assert late.status_code == 401
    # a writer is no administrator; komae's administrator is none in chofu
    refusals = [
        api.post("/iot/groups", json=body, headers={**KOMAE, **key("komae-writer")}),
        api.post("/iot/groups", json=body, headers={**CHOFU, **key("komae-iot")}),
        api.get("/iot/groups", headers={**CHOFU, **key("komae-iot")}),
        api.get("/iot/devices/d1", headers={**CHOFU, **key("komae-iot")}),
        api.delete("/iot/groups?apikey=x", headers={**CHOFU, **key("komae-iot")}),
    ]
    for r in refusals:
        assert r.status_code == 403, r.text
        assert r.json() == {
            "name": "ACCESS_FORBIDDEN",
            "message": "not allowed to provision devices in this service",
        }
    ok = api.post("/iot/groups", json=body, headers={**KOMAE, **key("komae-iot")})
    assert ok.status_code == 201, ok.text
    # a token from the city's identity provider, with the role and the tenant
    token = issuer.sign({"realm_access": {"roles": ["iot-admin"]}, "tenants": ["komae"]})
    listed = api.get("/iot/groups", headers={**KOMAE, "Authorization": f"Bearer {token}"})
    assert listed.status_code == 200
    assert [g["apikey"] for g in listed.json()["groups"]] == ["狛江-気象"]
    # open doors: probes; /metrics needs admin
    assert api.get("/iot/about").status_code == 200
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=key("komae-writer")).status_code == 403
    assert api.get("/metrics", headers=key("hub-admin")).status_code == 200


def test_audit_log_records_provisioning_and_refusals_without_secrets(
    api: TestClient, tmp_path: Path
) -> None:
    h = {**KOMAE, **key("komae-iot")}
    assert api.post("/iot/groups", json=group("監査"), headers=h).status_code == 201
    devices = {"devices": [{"device_id": "温度計1"}, {"device_id": "温度計2"}]}
    assert api.post("/iot/devices", json=devices, headers=h).status_code == 201
    api.get("/iot/devices", headers=h)  # reads are not recorded
    assert api.delete("/iot/devices/温度計2", headers=h).status_code == 204
    api.post("/iot/groups", json=group("x"), headers={**CHOFU, **key("komae-iot")})
    api.get("/iot/groups", headers={**KOMAE, "X-API-Key": "wrong-key-0000"})
    text = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    for secret in (*KEYS.values(), "wrong-key-0000"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["operation"], x["status"], x["tenant"]) for x in lines] == [
        ("POST /iot/groups", 201, "komae"),
        ("POST /iot/devices", 201, "komae"),
        ("DELETE /iot/devices/{device_id}", 204, "komae"),
        ("POST /iot/groups", 403, "chofu"),
        ("GET /iot/groups", 401, "komae"),
    ]
    assert lines[0]["principal"] == "komae-iot"
    assert lines[1]["entities"]["ids"] == [
        "urn:ngsi-ld:WeatherObserved:温度計1",
        "urn:ngsi-ld:WeatherObserved:温度計2",
    ]
    assert lines[2]["entities"]["ids"] == ["urn:ngsi-ld:WeatherObserved:温度計2"]
    assert lines[4]["principal"] == "-"


# -- what a group or device may write -------------------------------------------------------------


def test_a_group_or_device_writing_a_type_the_principal_may_not_write_is_refused(
    api: TestClient, hub: str
) -> None:
    # an AED in komae, that no weather device may take over
    aed = {
        "id": "urn:ngsi-ld:AEDLocation:狛江市役所",
        "type": "AEDLocation",
        "name": {"type": "Property", "value": "狛江市役所"},
    }
    made = httpx.post(
        hub + ENTITIES, json=aed, headers={**key("hub-admin"), "NGSILD-Tenant": "komae"}
    )
    assert made.status_code == 201, made.text
    w = {**KOMAE, **key("komae-weather")}
    refused = [
        api.post("/iot/groups", json=group("aed", "AEDLocation"), headers=w),
        api.post(
            "/iot/groups",
            json=group(
                "multi",
                attributes=[
                    {"object_id": "n", "name": "name", "entity_name": "x", "entity_type": "AED"}
                ],
            ),
            headers=w,
        ),
    ]
    assert api.post("/iot/groups", json=group("気象"), headers=w).status_code == 201
    refused += [
        api.post(
            "/iot/devices",
            json={"devices": [{"device_id": "d1", "apikey": "気象", "entity_type": "AEDLocation"}]},
            headers=w,
        ),
        # the declared type is allowed, but the entity it names is an AEDLocation
        api.post(
            "/iot/devices",
            json={
                "devices": [
                    {"device_id": "d2", "apikey": "気象", "entity_name": aed["id"]},
                ]
            },
            headers=w,
        ),
    ]
    for r in refused:
        assert r.status_code == 403, r.text
        assert r.json()["name"] == "ACCESS_FORBIDDEN"
    assert api.get("/iot/devices", headers=w).json()["count"] == 0
    # an entity of its own type, existing or not, is fine
    ok = api.post(
        "/iot/devices",
        json={
            "devices": [
                {
                    "device_id": "d3",
                    "apikey": "気象",
                    "entity_name": "urn:ngsi-ld:WeatherObserved:屋上",
                }
            ]
        },
        headers=w,
    )
    assert ok.status_code == 201, ok.text
    # and a change cannot point it elsewhere
    moved = api.put("/iot/devices/d3", json={"entity_name": aed["id"]}, headers=w)
    assert moved.status_code == 403
    retyped = api.put("/iot/devices/d3", json={"entity_type": "AEDLocation"}, headers=w)
    assert retyped.status_code == 403
    regrouped = api.put("/iot/groups?apikey=気象", json={"entity_type": "AEDLocation"}, headers=w)
    assert regrouped.status_code == 403
    kept = api.get("/iot/devices/d3", headers=w).json()
    assert kept["entity_name"] == "urn:ngsi-ld:WeatherObserved:屋上"
    assert kept["entity_type"] == "WeatherObserved"
    # an administrator who may write AEDLocation may
    a = {**KOMAE, **key("komae-iot")}
    assert api.put("/iot/devices/d3", json={"entity_name": aed["id"]}, headers=a).status_code == 204


# -- one registry per tenant -------------------------------------------------------------------


def test_the_same_apikey_in_two_services_is_two_groups_and_discloses_nothing(
    api: TestClient,
) -> None:
    k = {**KOMAE, **key("komae-iot")}
    c = {**CHOFU, **key("chofu-iot")}
    assert api.post("/iot/groups", json=group("共有キー"), headers=k).status_code == 201
    # not 409: chofu cannot learn that komae uses this apikey
    assert (
        api.post("/iot/groups", json=group("共有キー", "Streetlight"), headers=c).status_code == 201
    )
    dup = api.post("/iot/groups", json=group("共有キー"), headers=k)
    assert dup.status_code == 409  # within one service the apikey is unique still
    devices = {"devices": [{"device_id": "街灯1", "apikey": "共有キー"}]}
    assert api.post("/iot/devices", json=devices, headers=k).status_code == 201
    assert api.post("/iot/devices", json=devices, headers=c).status_code == 201
    komae = api.get("/iot/devices/街灯1", headers=k).json()
    chofu = api.get("/iot/devices/街灯1", headers=c).json()
    assert (komae["service"], komae["entity_type"]) == ("komae", "WeatherObserved")
    assert (chofu["service"], chofu["entity_type"]) == ("chofu", "Streetlight")
    assert [g["entity_type"] for g in api.get("/iot/groups", headers=c).json()["groups"]] == [
        "Streetlight"
    ]
    assert api.delete("/iot/devices/街灯1", headers=c).status_code == 204
    assert api.get("/iot/devices/街灯1", headers=k).status_code == 200


def test_notifications_need_the_agents_secret(api: TestClient) -> None:
    notification = {"data": [{"id": "urn:ngsi-ld:Thing:x", "type": "Thing"}]}
    r = api.post("/notify", json=notification)
    assert r.status_code == 401
    assert r.json()["name"] == "UNAUTHORIZED"
    forged = api.post("/notify", json=notification, headers={NOTIFY_HEADER: "guess"})
    assert forged.status_code == 401
    token = api.app.state.agent.notify_token  # type: ignore[attr-defined]
    assert api.post("/notify", json=notification, headers={NOTIFY_HEADER: token}).status_code == 204


# -- MQTT measures through the agent to a broker with access control ------------------------------


@pytest.fixture
def agent(tmp_path: Path, auth_file: Path, hub: str, mqtt: MqttBroker) -> Iterator[RunningAgent]:
    settings = agent_settings(
        tmp_path,
        auth_file,
        broker_url=hub,
        mqtt_url=mqtt.url,
        broker_api_key=KEYS["iot-agent"],
    )
    with run_agent(settings) as running:
        yield running


def stored(hub: str, tenant: str, entity_id: str, attr: str) -> Any:
    """The value of ``attr`` of an entity at the broker, or None."""
    r = httpx.get(
        f"{hub}{ENTITIES}/{entity_id}",
        params={"options": "keyValues"},
        headers={**key("hub-admin"), "NGSILD-Tenant": tenant},
    )
    return r.json().get(attr) if r.status_code == 200 else None


def test_devices_of_two_services_are_kept_apart_on_mqtt(
    agent: RunningAgent, hub: str, mqtt: MqttBroker
) -> None:
    k = {**KOMAE, **key("komae-iot")}
    c = {**CHOFU, **key("chofu-iot")}
    with httpx.Client(base_url=agent.url, timeout=10) as http:
        assert http.post("/iot/groups", json=group("komae-k"), headers=k).status_code == 201
        assert http.post("/iot/groups", json=group("chofu-k"), headers=c).status_code == 201
        # the same device id in both services, under each one's apikey
        for headers, apikey in ((k, "komae-k"), (c, "chofu-k")):
            devices = {"devices": [{"device_id": "水位計", "apikey": apikey}]}
            assert http.post("/iot/devices", json=devices, headers=headers).status_code == 201
    device = Publisher(mqtt)
    try:
        device.publish("/komae-k/水位計/attrs", '{"level": 1.5}', qos=1)
        device.publish("/chofu-k/水位計/attrs", '{"level": 2.5}', qos=1)
        eid = "urn:ngsi-ld:WeatherObserved:水位計"
        in_komae = wait_for(lambda: stored(hub, "komae", eid, "level"), what="komae's measure")
        in_chofu = wait_for(lambda: stored(hub, "chofu", eid, "level"), what="chofu's measure")
        assert (in_komae, in_chofu) == (1.5, 2.5)
    finally:
        device.close()


def test_an_apikey_of_two_services_is_ambiguous_until_pinned(
    agent: RunningAgent, hub: str, mqtt: MqttBroker
) -> None:
    k = {**KOMAE, **key("komae-iot")}
    c = {**CHOFU, **key("chofu-iot")}
    with httpx.Client(base_url=agent.url, timeout=10) as http:
        assert http.post("/iot/groups", json=group("同じキー"), headers=k).status_code == 201
        assert http.post("/iot/groups", json=group("同じキー"), headers=c).status_code == 201
    eid = "urn:ngsi-ld:WeatherObserved:雨量計"
    device = Publisher(mqtt)
    try:
        device.publish("/同じキー/雨量計/attrs", '{"rain": 3}', qos=1)
        wait_for(
            lambda: agent.metric("bad_input_total", "ambiguous_device") == 1,
            what="the ambiguous measure counted",
        )
        assert stored(hub, "komae", eid, "rain") is None
        assert stored(hub, "chofu", eid, "rain") is None
        # over HTTP the device answers as unknown, saying nothing of the two services
        r = httpx.post(f"{agent.url}/iot/json", params={"k": "同じキー", "i": "雨量計"}, json={})
        assert r.status_code == 404
        assert r.json()["name"] == "DEVICE_NOT_FOUND"
        assert "chofu" not in r.text
        assert agent.metric("bad_input_total", "ambiguous_device") == 2
        # the operator pins the apikey to komae (as `renkei iot mosquitto-acl` does,
        # another process on the agent's file): komae gets the measures, chofu none
        other = Registry(agent.settings.iota_db)
        other.pin("同じキー", "komae")
        other.close()
        device.publish("/同じキー/雨量計/attrs", '{"rain": 4}', qos=1)
        got = wait_for(lambda: stored(hub, "komae", eid, "rain"), what="the pinned measure")
        assert got == 4
        assert stored(hub, "chofu", eid, "rain") is None
        assert agent.metric("bad_input_total", "ambiguous_device") == 2
    finally:
        device.close()


def test_a_command_reaches_the_device_of_the_service_its_apikey_is_pinned_to(
    agent: RunningAgent, hub: str, mqtt: MqttBroker
) -> None:
    """Devices of two services share an apikey and a device id, so they read the same
    command topic: only the service the apikey is pinned to may send commands there."""
    lamp = {"device_id": "街灯", "commands": [{"name": "switch"}]}
    with httpx.Client(base_url=agent.url, timeout=10) as http:
        for headers in ({**KOMAE, **key("komae-iot")}, {**CHOFU, **key("chofu-iot")}):
            r = http.post("/iot/groups", json=group("灯り", "Streetlight"), headers=headers)
            assert r.status_code == 201, r.text
            r = http.post("/iot/devices", json={"devices": [lamp]}, headers=headers)
            assert r.status_code == 201, r.text
    other = Registry(agent.settings.iota_db)
    other.pin("灯り", "komae")
    other.close()
    assert len(agent.agent.registrations.held) == 2  # one in each service
    eid = "urn:ngsi-ld:Streetlight:街灯"

    def switch(tenant: str, value: str) -> httpx.Response:
        return httpx.post(
            f"{hub}{ENTITIES}/{eid}/attrs",
            json={"switch": {"type": "Property", "value": value}},
            headers={**key("hub-admin"), "NGSILD-Tenant": tenant},
        )

    with subscribe(mqtt, "/灯り/街灯/cmd") as sub:
        refused = switch("chofu", "調布から点灯")
        assert refused.status_code == 207  # the agent could not send it, and said so
        assert refused.json()["success"] == []
        wait_for(
            lambda: stored(hub, "chofu", eid, "switch_status") == "ERROR",
            what="chofu's command refused",
        )
        assert switch("komae", "狛江から点灯").status_code == 204
        (msg,) = sub.wait(1, timeout=10)
        assert json.loads(msg.payload) == {"switch": "狛江から点灯"}
        wait_for(
            lambda: stored(hub, "komae", eid, "switch_status") == "PENDING",
            what="komae's command sent",
        )
        assert len(sub.messages) == 1


def test_the_agents_ngsi_ld_endpoints_take_the_broker_or_a_principal_with_rights(
    agent: RunningAgent, hub: str, mqtt: MqttBroker
) -> None:
    """The endpoints the broker forwards commands and lazy reads to: the broker's
    requests carry the agent's secret; anyone else needs read (lazy attributes) or write
    (commands) on the device's type in the tenant."""
    lamp = {
        "device_id": "門灯",
        "commands": [{"name": "点灯"}],
        "lazy": [{"object_id": "b", "name": "電池", "type": "Number"}],
    }
    with httpx.Client(base_url=agent.url, timeout=10) as http:
        h = {**KOMAE, **key("komae-iot")}
        assert (
            http.post("/iot/groups", json=group("門", "Streetlight"), headers=h).status_code == 201
        )
        r = http.post("/iot/devices", json={"devices": [lamp]}, headers=h)
        assert r.status_code == 201, r.text
    eid = "urn:ngsi-ld:Streetlight:門灯"
    path = f"{ENTITIES}/{eid}/attrs"
    body = {"点灯": {"type": "Property", "value": "直接"}}
    in_komae = {"NGSILD-Tenant": "komae"}
    device = Publisher(mqtt)
    try:
        device.publish("/門/門灯/attrs", '{"b": 64}', qos=1)
        wait_for(lambda: agent.agent.lazy.of("komae", eid), what="the lazy value kept")
    finally:
        device.close()
    with subscribe(mqtt, "/門/門灯/cmd") as sub, httpx.Client(base_url=agent.url) as direct:
        anonymous = direct.patch(path, json=body, headers=in_komae)
        assert anonymous.status_code == 401
        assert anonymous.json()["type"].endswith("/Unauthorized")
        # a read refused answers as missing, as the broker answers it
        hidden = direct.get(f"{ENTITIES}/{eid}", headers={**key("chofu-iot"), **in_komae})
        assert hidden.status_code == 404
        assert hidden.json()["type"].endswith("/ResourceNotFound")
        for who, tenant in (("chofu-iot", "komae"), ("komae-weather", "komae")):
            r = direct.patch(path, json=body, headers={**key(who), "NGSILD-Tenant": tenant})
            assert r.status_code == 403, (who, r.text)
            assert r.json()["type"].endswith("/Forbidden")
        # komae-weather may read every type: the lazy value, but not a command
        r = direct.get(f"{ENTITIES}/{eid}", headers={**key("komae-weather"), **in_komae})
        assert r.status_code == 200, r.text
        assert r.json()["電池"]["value"] == 64
        # a writer of komae commands the device directly
        r = direct.patch(path, json=body, headers={**key("komae-writer"), **in_komae})
        assert r.status_code == 204, r.text
        assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"点灯": "直接"}
        # and through the broker, which forwards with the agent's secret
        r = httpx.patch(
            f"{hub}{path}",
            json={"点灯": {"type": "Property", "value": "経由"}},
            headers={**key("komae-writer"), **in_komae},
        )
        assert r.status_code == 204, r.text
        assert json.loads(sub.wait(2, timeout=10)[1].payload) == {"点灯": "経由"}
        assert len(sub.messages) == 2
    assert agent.settings.audit_log is not None
    lines = [json.loads(x) for x in agent.settings.audit_log.read_text().splitlines()]
    commanded = [x for x in lines if x["operation"].startswith("PATCH /ngsi-ld/")]
    assert [(x["principal"], x["status"]) for x in commanded][-1] == ("komae-writer", 204)
    assert commanded[-1]["entities"]["ids"] == [eid]


def test_without_admin_at_the_broker_the_agent_cannot_register(
    tmp_path: Path, auth_file: Path, hub: str, mqtt: MqttBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Registrations need admin at the broker: with a writer's key the agent says so
    (commands then stay at the broker, as if no agent were there)."""
    settings = agent_settings(
        tmp_path, auth_file, broker_url=hub, mqtt_url=mqtt.url, broker_api_key=KEYS["komae-writer"]
    )
    lamp = {"device_id": "裏門灯", "commands": [{"name": "点灯"}]}
    with run_agent(settings) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        h = {**KOMAE, **key("komae-iot")}
        assert (
            http.post("/iot/groups", json=group("裏", "Streetlight"), headers=h).status_code == 201
        )
        assert http.post("/iot/devices", json={"devices": [lamp]}, headers=h).status_code == 201
        assert running.agent.registrations.held == {}
    assert any("needs the admin role" in r.getMessage() for r in caplog.records)
    found = httpx.get(
        f"{hub}/ngsi-ld/v1/csourceRegistrations",
        params={"type": "Streetlight"},
        headers={**key("hub-admin"), "NGSILD-Tenant": "komae"},
    )
    assert found.status_code == 200
    assert [r for r in found.json() if r["endpoint"] == running.url] == []


def test_without_its_key_the_agent_keeps_the_measures_for_later(
    tmp_path: Path, auth_file: Path, hub: str, mqtt: MqttBroker
) -> None:
    settings = agent_settings(
        tmp_path, auth_file, broker_url=hub, mqtt_url=mqtt.url, broker_api_key="not-a-key-0000"
    )
    with run_agent(settings) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        h = {**KOMAE, **key("komae-iot")}
        assert http.post("/iot/groups", json=group("鍵なし"), headers=h).status_code == 201
        device = Publisher(mqtt)
        try:
            device.publish("/鍵なし/風速計/attrs", '{"wind": 7}', qos=1)
            wait_for(
                lambda: running.metric("broker_write_failures_total") >= 1,
                what="a refused write",
            )
        finally:
            device.close()
        assert running.metric("dropped_total", "rejected_by_broker") == 0
        assert stored(hub, "komae", "urn:ngsi-ld:WeatherObserved:風速計", "wind") is None


def test_replicas_with_one_key_agree_on_the_notification_secret(tmp_path: Path) -> None:
    def token(db: str, **more: Any) -> str:
        settings = AgentSettings(iota_db=str(tmp_path / db), **more)
        registry = Registry(settings.iota_db)
        try:
            return notify_token(settings, registry)
        finally:
            registry.close()

    shared = {"broker_api_key": KEYS["iot-agent"], "iota_public_url": "http://iota:4041"}
    assert token("a.db", **shared) == token("b.db", **shared)
    assert KEYS["iot-agent"] not in token("a.db", **shared)
    assert token("a.db", **shared) != token("a.db", **{**shared, "broker_api_key": "other"})
    # without a key: made once, kept in the agent's file
    assert token("c.db") == token("c.db") != token("d.db")
    assert token("c.db", iota_notify_token="given-0001") == "given-0001"
