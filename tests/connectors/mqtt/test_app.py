"""The provisioning API (iotagent-node-lib paths and bodies), errors and persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from connectors.mqtt.app import create_app
from connectors.mqtt.settings import AgentSettings
from tests.support import free_port

KOMAE = {"fiware-service": "komae", "fiware-servicepath": "/parking"}


def settings(tmp_path: Path) -> AgentSettings:
    # Nothing listens on these ports: provisioning works without MQTT or the broker.
    return AgentSettings(
        mqtt_url=f"mqtt://127.0.0.1:{free_port()}",
        broker_url=f"http://127.0.0.1:{free_port()}",
        iota_db=str(tmp_path / "iota.db"),
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as client:
        yield client


def test_groups_and_the_services_alias(api: TestClient) -> None:
    group = {"apikey": "k1", "entity_type": "Parking", "resource": "/iot/json", "cbroker": "x"}
    assert api.post("/iot/groups", json={"groups": [group]}, headers=KOMAE).status_code == 201
    again = api.post("/iot/services", json={"services": [group]}, headers=KOMAE)
    assert again.status_code == 409
    assert again.json()["name"] == "DUPLICATE_GROUP"
    listed = api.get("/iot/services", headers=KOMAE).json()
    assert listed["count"] == 1
    assert listed["services"][0]["cbroker"] == "x"  # unknown members round-trip
    assert api.get("/iot/groups", headers={"fiware-service": "other"}).json()["count"] == 0
    r = api.put(
        "/iot/groups?apikey=k1&resource=/iot/json", json={"entity_type": "Lot"}, headers=KOMAE
    )
    assert r.status_code == 204
    assert api.get("/iot/groups", headers=KOMAE).json()["groups"][0]["entity_type"] == "Lot"
    assert (
        api.delete("/iot/groups?apikey=nope", headers=KOMAE).json()["name"]
        == "DEVICE_GROUP_NOT_FOUND"
    )
    assert api.delete("/iot/groups?apikey=k1", headers=KOMAE).status_code == 204
    assert api.get("/iot/groups", headers=KOMAE).json()["count"] == 0


def test_devices_crud(api: TestClient) -> None:
    api.post(
        "/iot/groups", json={"groups": [{"apikey": "k1", "entity_type": "Parking"}]}, headers=KOMAE
    )
    devices = [
        {"device_id": f"p{i}", "protocol": "IoTA-JSON", "transport": "MQTT"} for i in range(5)
    ]
    assert api.post("/iot/devices", json={"devices": devices}, headers=KOMAE).status_code == 201
    dup = api.post("/iot/devices", json={"devices": devices[:1]}, headers=KOMAE)
    assert dup.status_code == 409
    assert dup.json()["name"] == "DUPLICATE_DEVICE_ID"
    page = api.get("/iot/devices?limit=2&offset=1", headers=KOMAE).json()
    assert page["count"] == 5
    assert [d["device_id"] for d in page["devices"]] == ["p1", "p2"]
    one = api.get("/iot/devices/p0", headers=KOMAE).json()
    assert one["entity_name"] == "urn:ngsi-ld:Parking:p0"
    assert one["entity_type"] == "Parking"
    r = api.put("/iot/devices/p0", json={"entity_name": "urn:ngsi-ld:Parking:gate"}, headers=KOMAE)
    assert r.status_code == 204
    assert (
        api.get("/iot/devices/p0", headers=KOMAE).json()["entity_name"]
        == "urn:ngsi-ld:Parking:gate"
    )
    assert api.delete("/iot/devices/p0", headers=KOMAE).status_code == 204
    missing = api.get("/iot/devices/p0", headers=KOMAE)
    assert missing.status_code == 404
    assert missing.json() == {
        "name": "DEVICE_NOT_FOUND",
        "message": "no device 'p0' in this service",
    }


def test_errors(api: TestClient) -> None:
    cases = [
        (api.post("/iot/devices", content=b"{nope", headers=KOMAE), 400, "WRONG_SYNTAX"),
        (api.post("/iot/devices", json={"devices": []}, headers=KOMAE), 400, "WRONG_SYNTAX"),
        (
            api.post("/iot/devices", json={"devices": [{"device_id": "a/b"}]}, headers=KOMAE),
            400,
            "WRONG_SYNTAX",
        ),
        (
            api.post("/iot/groups", json={"groups": [{"entity_type": "X"}]}, headers=KOMAE),
            400,
            "WRONG_SYNTAX",
        ),
        (api.get("/iot/devices", headers={"fiware-service": "Bad Name"}), 400, "BAD_REQUEST"),
        (api.get("/iot/devices?limit=-1", headers=KOMAE), 400, "WRONG_SYNTAX"),
        (
            api.post(
                "/iot/groups",
                json={"groups": [{"apikey": "e", "entityNameExp": "id +* 2"}]},
                headers=KOMAE,
            ),
            400,
            "WRONG_SYNTAX",
        ),
    ]
    for response, status, name in cases:
        assert response.status_code == status, response.text
        assert response.json()["name"] == name
        assert response.json()["message"]


def test_health_and_metrics_without_connections(api: TestClient) -> None:
    health = api.get("/health")
    assert health.status_code == 503
    assert health.json()["mqtt"] is False
    assert "# TYPE renkei_iota_measures_stored_total counter" in api.get("/metrics").text


def test_provisioning_survives_a_restart(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as api:
        api.post(
            "/iot/groups",
            json={"groups": [{"apikey": "k1", "entity_type": "Parking"}]},
            headers=KOMAE,
        )
        api.post("/iot/devices", json={"devices": [{"device_id": "p1"}]}, headers=KOMAE)
    with TestClient(create_app(settings(tmp_path))) as api:
        assert api.get("/iot/devices/p1", headers=KOMAE).json()["entity_type"] == "Parking"
        assert api.get("/iot/groups", headers=KOMAE).json()["count"] == 1


def test_lazy_attributes_are_served_through_registrations(api: TestClient) -> None:
    """With commands through registrations (the default) a lazy attribute is accepted:
    the agent registers as its source (tests/connectors/mqtt/test_registrations.py)."""
    lazy = [{"object_id": "b", "name": "電池残量", "type": "Number"}]
    r = api.post(
        "/iot/devices", json={"devices": [{"device_id": "d1", "lazy": lazy}]}, headers=KOMAE
    )
    assert r.status_code == 201, r.text
    assert api.get("/iot/devices/d1", headers=KOMAE).json()["lazy"] == lazy


def test_lazy_attributes_are_refused_not_ignored_with_subscriptions(tmp_path: Path) -> None:
    subscriptions = settings(tmp_path).model_copy(update={"iota_command_mode": "subscription"})
    with TestClient(create_app(subscriptions)) as api:
        refused_everywhere(api)


def refused_everywhere(api: TestClient) -> None:
    lazy = [{"object_id": "b", "name": "battery", "type": "Number"}]
    group = api.post(
        "/iot/groups", json={"groups": [{"apikey": "lz", "lazy": lazy}]}, headers=KOMAE
    )
    assert group.status_code == 501
    assert group.json()["name"] == "NOT_IMPLEMENTED"
    assert "lazy" in group.json()["message"]
    assert "battery" in group.json()["message"]
    assert api.get("/iot/groups", headers=KOMAE).json()["count"] == 0  # nothing half-stored
    device = api.post(
        "/iot/devices", json={"devices": [{"device_id": "d1", "lazy": lazy}]}, headers=KOMAE
    )
    assert device.status_code == 501
    assert "lazy" in device.json()["message"]
    assert api.get("/iot/devices", headers=KOMAE).json()["count"] == 0
    # adding lazy attributes later is refused as well, and the device stays as it was
    assert (
        api.post("/iot/devices", json={"devices": [{"device_id": "d2"}]}, headers=KOMAE)
    ).status_code == 201
    update = api.put("/iot/devices/d2", json={"lazy": lazy}, headers=KOMAE)
    assert update.status_code == 501
    assert api.get("/iot/devices/d2", headers=KOMAE).json()["lazy"] == []
    # an empty list asks for nothing and is accepted
    ok = api.post("/iot/groups", json={"groups": [{"apikey": "lz", "lazy": []}]}, headers=KOMAE)
    assert ok.status_code == 201


def test_a_device_with_a_bad_expression_is_refused_alone(api: TestClient) -> None:
    good = {
        "device_id": "水位計1",
        "attributes": [
            {"object_id": "l", "name": "level", "type": "Number", "expression": "l / 100"}
        ],
    }
    bad = {
        "device_id": "水位計2",
        "attributes": [
            {
                "object_id": "l",
                "name": "level",
                "type": "Number",
                "expression": "l | nosuchtransform",
            }
        ],
    }
    unparsable = {"device_id": "水位計3", "explicitAttrs": "['level',"}
    r = api.post("/iot/devices", json={"devices": [bad, good, unparsable]}, headers=KOMAE)
    assert r.status_code == 400
    assert r.json()["name"] == "WRONG_SYNTAX"
    message = r.json()["message"]
    assert "device '水位計2'" in message
    assert "nosuchtransform" in message
    assert "device '水位計3'" in message
    assert "explicitAttrs" in message
    assert "1 other devices provisioned" in message
    listed = api.get("/iot/devices", headers=KOMAE).json()
    assert [d["device_id"] for d in listed["devices"]] == ["水位計1"]
    assert listed["devices"][0]["attributes"][0]["expression"] == "l / 100"
    # an update to a bad expression is refused and the device stays as it was
    r = api.put("/iot/devices/水位計1", json={"explicitAttrs": "level +"}, headers=KOMAE)
    assert r.status_code == 400
    assert "explicitAttrs" not in api.get("/iot/devices/水位計1", headers=KOMAE).json()


def test_bodies_over_the_limit_are_413_and_change_nothing(tmp_path: Path) -> None:
    limited = settings(tmp_path).model_copy(update={"iota_max_body_bytes": 64 * 1024})
    with TestClient(create_app(limited)) as api:
        group = {"apikey": "k1", "entity_type": "水位計"}
        assert api.post("/iot/groups", json={"groups": [group]}, headers=KOMAE).status_code == 201
        devices = [{"device_id": f"水位計{i}", "protocol": "JSON"} for i in range(2000)]
        r = api.post("/iot/devices", json={"devices": devices}, headers=KOMAE)
        assert r.status_code == 413
        assert r.json() == {
            "name": "PAYLOAD_TOO_LARGE",
            "message": "the body is larger than 65536 bytes",
        }

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"devices": ['
            for i in range(2000):
                yield b'{"device_id": "d%d", "protocol": "JSON"},' % i
            yield b'{"device_id": "last"}]}'

        streamed = api.post("/iot/devices", content=chunks(), headers=KOMAE)
        assert streamed.status_code == 413
        assert api.get("/iot/devices", headers=KOMAE).json()["count"] == 0
        measures = api.post("/iot/json?k=k1&i=水位計1", json={"水位": ["1.2" * 30_000]})
        assert measures.status_code == 413
        assert api.get("/iot/devices", headers=KOMAE).json()["count"] == 0  # not provisioned
        small = api.post("/iot/devices", json={"devices": devices[:10]}, headers=KOMAE)
        assert small.status_code == 201


def test_a_request_with_too_many_devices_is_refused_whole(tmp_path: Path) -> None:
    limited = settings(tmp_path).model_copy(update={"iota_max_devices": 50})
    with TestClient(create_app(limited)) as api:
        devices = [{"device_id": f"水位計{i}", "entity_type": "水位計"} for i in range(51)]
        r = api.post("/iot/devices", json={"devices": devices}, headers=KOMAE)
        assert r.status_code == 400
        assert r.json()["name"] == "BAD_REQUEST"
        assert "at most 50" in r.json()["message"]
        assert api.get("/iot/devices", headers=KOMAE).json()["count"] == 0
        groups = [{"apikey": f"k{i}", "entity_type": "水位計"} for i in range(51)]
        assert api.post("/iot/groups", json={"groups": groups}, headers=KOMAE).status_code == 400
        ok = api.post("/iot/devices", json={"devices": devices[:50]}, headers=KOMAE)
        assert ok.status_code == 201
        assert api.get("/iot/devices", headers=KOMAE).json()["count"] == 50
