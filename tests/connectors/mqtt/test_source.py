"""The agent's NGSI-LD endpoints on their own (no broker, no MQTT): what a forwarded
read or command may say, and how the agent answers it. End to end through a real broker
and Mosquitto: ``test_registrations.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from connectors.mqtt.app import create_app
from connectors.mqtt.registrations import SOURCE_HEADER
from connectors.mqtt.settings import AgentSettings
from tests.support import free_port

SERVICE = {"fiware-service": "komae", "fiware-servicepath": "/suiro"}
ENTITIES = "/ngsi-ld/v1/entities"
GROUP = {
    "apikey": "水門key",
    "entity_type": "水門",
    "transport": "HTTP",
    "lazy": [
        {"object_id": "lv", "name": "水位", "type": "Number"},
        {"object_id": "st", "name": "状態", "type": "Text"},
    ],
    "commands": [{"name": "開度"}],
}


def gate(n: int) -> str:
    return f"urn:ngsi-ld:水門:水門{n}"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = AgentSettings(
        mqtt_url=f"mqtt://127.0.0.1:{free_port()}",
        broker_url=f"http://127.0.0.1:{free_port()}",
        iota_db=str(tmp_path / "iota.db"),
    )
    with TestClient(create_app(settings)) as client:
        assert (
            client.post("/iot/groups", json={"groups": [GROUP]}, headers=SERVICE).status_code == 201
        )
        devices = [{"device_id": f"水門{n}"} for n in (1, 2, 3)]
        r = client.post("/iot/devices", json={"devices": devices}, headers=SERVICE)
        assert r.status_code == 201, r.text
        for n, level in ((1, 1.5), (2, 3.25)):
            r = client.post(
                "/iot/json", params={"k": "水門key", "i": f"水門{n}"}, json={"lv": level}
            )
            assert r.status_code == 200, r.text
        token = client.app.state.agent.notify_token  # type: ignore[attr-defined]
        client.headers.update({SOURCE_HEADER: token, "NGSILD-Tenant": "komae"})
        yield client


def test_lazy_values_are_read_and_queried(api: TestClient) -> None:
    one = api.get(f"{ENTITIES}/{gate(1)}")
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["type"], body["scope"], body["水位"]["value"]) == ("水門", "/suiro", 1.5)
    assert "observedAt" in body["水位"]
    assert api.get(f"{ENTITIES}/{gate(1)}", params={"options": "keyValues"}).json()["水位"] == 1.5
    # nothing reported yet, or not asked for: missing, as the broker expects
    assert api.get(f"{ENTITIES}/{gate(3)}").status_code == 404
    assert api.get(f"{ENTITIES}/{gate(1)}", params={"attrs": "状態"}).status_code == 404
    missing = api.get(f"{ENTITIES}/urn:ngsi-ld:水門:ない")
    assert missing.status_code == 404
    assert missing.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    # another tenant's devices are not these
    assert api.get(f"{ENTITIES}/{gate(1)}", headers={"NGSILD-Tenant": "chofu"}).status_code == 404

    def ids(**params: str) -> list[str]:
        r = api.get(ENTITIES, params=params)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()]

    assert ids(type="水門") == [gate(1), gate(2)]
    assert ids(type="https://uri.etsi.org/ngsi-ld/default-context/水門") == [gate(1), gate(2)]
    assert ids(type="水門", q="水位>2") == [gate(2)]
    assert ids(type="水門", q="水位==1.5|水位==3.25", idPattern=".*1$") == [gate(1)]
    assert ids(id=gate(2)) == [gate(2)]
    assert ids(type="水門", scopeQ="/suiro") == [gate(1), gate(2)]
    assert ids(type="水門", scopeQ="/douro") == []
    assert ids(type="水門", attrs="状態") == []
    assert ids(type="別の型") == []
    page = api.get(ENTITIES, params={"type": "水門", "limit": "1", "offset": "1", "count": "true"})
    assert [e["id"] for e in page.json()] == [gate(2)]
    assert page.headers["NGSILD-Results-Count"] == "2"
    bad = api.get(ENTITIES, params={"type": "水門", "q": "水位>>"})
    assert bad.status_code == 400
    assert bad.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert api.get(ENTITIES, params={"type": "水門", "limit": "-1"}).status_code == 400


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        ({"開度": {"type": "Property", "value": 30}}, 30),
        ({"開度": {"value": {"角度": 45}}}, {"角度": 45}),
        ({"開度": "全開"}, "全開"),  # concise
        ({"https://uri.etsi.org/ngsi-ld/default-context/開度": {"value": 10}}, 10),
    ],
)
def test_a_command_in_any_form_reaches_the_polling_device(
    api: TestClient, body: dict[str, Any], sent: Any
) -> None:
    r = api.patch(f"{ENTITIES}/{gate(1)}/attrs", json=body)
    assert r.status_code == 204, r.text
    polled = api.get("/iot/json", params={"k": "水門key", "i": "水門1", "getCmd": 1})
    assert polled.json() == {"開度": sent}


def test_commands_by_every_forwarded_operation_and_what_is_refused(api: TestClient) -> None:
    def polled() -> Any:
        return api.get("/iot/json", params={"k": "水門key", "i": "水門2", "getCmd": 1}).json()

    attr = f"{ENTITIES}/{gate(2)}/attrs/開度"
    assert api.patch(attr, json={"value": 1}).status_code == 204
    assert polled() == {"開度": 1}
    assert api.put(attr, json={"type": "Property", "value": 2}).status_code == 204
    assert polled() == {"開度": 2}
    assert api.patch(f"{ENTITIES}/{gate(2)}", json={"開度": {"value": 3}}).status_code == 204
    assert polled() == {"開度": 3}
    whole = {"id": gate(2), "type": "水門", "開度": {"type": "Property", "value": 4}}
    assert api.put(f"{ENTITIES}/{gate(2)}", json=whole).status_code == 204
    assert polled() == {"開度": 4}
    assert api.post(f"{ENTITIES}/{gate(2)}/attrs", json={"開度": {"value": 5}}).status_code == 204
    assert polled() == {"開度": 5}
    # a command with a lazy attribute beside it: sent, the other named
    r = api.patch(f"{ENTITIES}/{gate(2)}/attrs", json={"開度": {"value": 6}, "水位": {"value": 0}})
    assert r.status_code == 207
    assert r.json()["updated"] == ["開度"]
    assert r.json()["notUpdated"][0]["attributeName"] == "水位"
    assert polled() == {"開度": 6}
    # nothing to send: 400, nothing held
    for body in (
        {"水位": {"value": 0}},
        {"開度": "urn:ngsi-ld:null"},
        {"開度": {"type": "Property"}},
        {"知らない": {"value": 1}},
    ):
        r = api.patch(f"{ENTITIES}/{gate(2)}/attrs", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert polled() == {}
    assert api.patch(f"{ENTITIES}/{gate(2)}/attrs", content=b"{oops").status_code == 400
    assert api.patch(f"{ENTITIES}/{gate(2)}/attrs", json=[1]).status_code == 400
    unknown = api.patch(f"{ENTITIES}/urn:ngsi-ld:水門:ない/attrs", json={"開度": 1})
    assert unknown.status_code == 404


def test_without_the_secret_nothing_is_answered(api: TestClient) -> None:
    api.headers.pop(SOURCE_HEADER)
    for r in (
        api.get(f"{ENTITIES}/{gate(1)}"),
        api.get(ENTITIES, params={"type": "水門"}),
        api.patch(f"{ENTITIES}/{gate(1)}/attrs", json={"開度": 1}),
        api.get(f"{ENTITIES}/{gate(1)}", headers={SOURCE_HEADER: "not-the-secret"}),
    ):
        assert r.status_code == 401
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Unauthorized"
    assert api.get("/iot/json", params={"k": "水門key", "i": "水門1", "getCmd": 1}).json() == {}
