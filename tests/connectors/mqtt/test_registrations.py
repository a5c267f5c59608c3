"""Commands and lazy attributes through context source registrations, end to end: a
real broker process forwarding to the agent, a real Mosquitto, devices publishing."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from connectors.mqtt.registrations import ID_PREFIX, SOURCE_HEADER
from tests.connectors.mqtt.conftest import AgentFactory, Publisher, RunningAgent, wait_for
from tests.support import free_port
from tests.support_mqtt import MqttBroker, subscribe

pytestmark = pytest.mark.mqtt

KOMAE = {"NGSILD-Tenant": "komae"}
TYPE = "街路灯"
GROUP = {
    "apikey": "灯key",
    "entity_type": TYPE,
    "attributes": [{"object_id": "t", "name": "温度", "type": "Number"}],
    "lazy": [{"object_id": "b", "name": "電池残量", "type": "Number"}],
    "commands": [{"name": "点灯", "type": "command"}],
}


def provision(agent: RunningAgent, group: dict[str, Any], *devices: dict[str, Any]) -> None:
    with agent.http() as http:
        r = http.post("/iot/groups", json={"groups": [group]})
        assert r.status_code == 201, r.text
        if devices:
            r = http.post("/iot/devices", json={"devices": list(devices)})
            assert r.status_code == 201, r.text


def entity(hub: str, eid: str, **params: str) -> dict[str, Any] | None:
    r = httpx.get(f"{hub}/ngsi-ld/v1/entities/{eid}", params=params, headers=KOMAE, timeout=10)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def registrations(hub: str, agent: RunningAgent) -> list[dict[str, Any]]:
    """The broker's registrations whose endpoint is this agent."""
    r = httpx.get(
        f"{hub}/ngsi-ld/v1/csourceRegistrations",
        params={"q": f'endpoint=="{agent.url}"'},
        headers=KOMAE,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


def registered_ids(hub: str, agent: RunningAgent) -> list[list[str]]:
    return sorted(
        sorted(e["id"] for info in reg["information"] for e in info["entities"])
        for reg in registrations(hub, agent)
    )


def command(hub: str, eid: str, name: str, value: Any, path: str = "/attrs") -> httpx.Response:
    """A client writes a command attribute at the broker."""
    if path == "/attrs":
        body: Any = {name: {"type": "Property", "value": value}}
    elif path == "":  # merge
        body = {name: {"value": value}}
    else:
        body = {"type": "Property", "value": value}
    return httpx.patch(
        f"{hub}/ngsi-ld/v1/entities/{eid}{path}", json=body, headers=KOMAE, timeout=10
    )


def test_commands_and_lazy_attributes_through_the_broker(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker, device: Publisher
) -> None:
    eid = f"urn:ngsi-ld:{TYPE}:灯1"
    with agent_factory() as agent, subscribe(mqtt, "/灯key/灯1/cmd") as sub:
        provision(agent, GROUP, {"device_id": "灯1"})
        # the registration is in place when provisioning answered
        (reg,) = registrations(hub, agent)
        assert reg["id"].startswith(ID_PREFIX)
        assert reg["mode"] == "exclusive"
        assert sorted(reg["operations"]) == [
            "appendAttrs",
            "mergeEntity",
            "retrieveOps",
            "updateOps",
        ]
        assert reg["information"] == [
            {"entities": [{"id": eid, "type": TYPE}], "propertyNames": ["点灯", "電池残量"]}
        ]
        assert reg["contextSourceInfo"] == [{"key": SOURCE_HEADER, "value": "***"}]
        wait_for(lambda: entity(hub, eid), what="the device's entity")

        # a client writes the command at the broker: the device gets it over MQTT
        r = command(hub, eid, "点灯", {"明るさ": 80})
        assert r.status_code == 204, r.text
        assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"点灯": {"明るさ": 80}}
        got = wait_for(lambda: (e := entity(hub, eid)) and "点灯_status" in e and e, what="PENDING")
        assert got["点灯_status"]["value"] == "PENDING"
        assert "点灯" not in got  # the command lives at the agent, never at the broker
        device.publish("/灯key/灯1/cmdexe", json.dumps({"点灯": "点灯しました"}), qos=1)
        got = wait_for(
            lambda: (e := entity(hub, eid)) and e["点灯_status"]["value"] == "OK" and e,
            what="the command's result",
        )
        assert got["点灯_info"]["value"] == "点灯しました"
        # one attribute, and a merge of the entity, are forwarded as well
        r = command(hub, eid, "点灯", "消灯", path="/attrs/点灯")
        assert r.status_code == 204, r.text
        assert command(hub, eid, "点灯", "半灯", path="").status_code == 204
        payloads = [json.loads(m.payload) for m in sub.wait(3, timeout=10)]
        assert payloads[1:] == [{"点灯": "消灯"}, {"点灯": "半灯"}]

        # a lazy attribute: the device reports it, the agent keeps it, the broker asks
        assert entity(hub, eid, attrs="電池残量") is None  # nothing reported yet
        device.publish("/灯key/灯1/attrs", json.dumps({"t": 21.5, "b": 87}), qos=1)
        got = wait_for(
            lambda: (e := entity(hub, eid)) and "電池残量" in e and "温度" in e and e,
            what="the lazy attribute read through the broker",
        )
        assert got["電池残量"]["value"] == 87
        assert got["温度"]["value"] == 21.5
        assert got["電池残量"]["observedAt"] == got["温度"]["observedAt"]
        local = entity(hub, eid, local="true")
        assert local is not None
        assert "電池残量" not in local  # never written to the broker
        # a query: evaluated on what the agent holds
        r = httpx.get(
            f"{hub}/ngsi-ld/v1/entities",
            params={"type": TYPE, "q": "電池残量>50"},
            headers=KOMAE,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert [(e["id"], e["電池残量"]["value"]) for e in r.json()] == [(eid, 87)]
        r = httpx.get(
            f"{hub}/ngsi-ld/v1/entities",
            params={"type": TYPE, "q": "電池残量<50"},
            headers=KOMAE,
            timeout=10,
        )
        assert r.json() == []

        # a lazy attribute cannot be written (the registration takes no write of it)
        r = command(hub, eid, "電池残量", 5)
        assert r.status_code == 207, r.text
        (error,) = r.json()["errors"]
        assert "lazy attribute" in error["error"]["detail"]

        # the agent answers the broker only: no secret, no answer
        direct = httpx.Client(base_url=agent.url, headers=KOMAE, timeout=10)
        r = direct.get(f"/ngsi-ld/v1/entities/{eid}")
        assert r.status_code == 401
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Unauthorized"
        r = direct.patch(
            f"/ngsi-ld/v1/entities/{eid}/attrs",
            json={"点灯": {"type": "Property", "value": "偽"}},
            headers={SOURCE_HEADER: "a-guess"},
        )
        assert r.status_code == 401
        with_secret = direct.get(
            f"/ngsi-ld/v1/entities/{eid}", headers={SOURCE_HEADER: agent.agent.notify_token}
        )
        assert with_secret.status_code == 200
        assert with_secret.json()["電池残量"]["value"] == 87
        direct.close()

        # deleting the device removes its registration: the broker keeps a command itself
        with agent.http() as http:
            assert http.delete("/iot/devices/灯1").status_code == 204
        assert registrations(hub, agent) == []
        assert command(hub, eid, "点灯", "迷子").status_code == 204
        time.sleep(0.5)  # a command forwarded would have reached the device by now
        assert len(sub.messages) == 3
        stored = entity(hub, eid)
        assert stored is not None
        assert stored["点灯"]["value"] == "迷子"


def test_registrations_follow_provisioning_restarts_and_the_mode(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker, tmp_path: Any
) -> None:
    """One registration per type and set of names lists its entities; deleting devices
    narrows it, then removes it; a restarted agent removes what it no longer wants, and
    switching modes moves commands between registrations and subscriptions."""
    group = {"apikey": "門key", "entity_type": "門扉", "commands": [{"name": "開閉"}]}
    gates = [{"device_id": f"門{i}"} for i in (1, 2, 3)]
    ids = [f"urn:ngsi-ld:門扉:門{i}" for i in (1, 2, 3)]
    db = str(tmp_path / "gates.db")
    port = free_port()
    with agent_factory(iota_db=db, iota_port=port) as agent:
        provision(agent, group, *gates)
        assert registered_ids(hub, agent) == [ids]
        with agent.http() as http:
            # another command for one device: it moves to a registration of its own
            r = http.put("/iot/devices/門3", json={"commands": [{"name": "施錠"}]})
            assert r.status_code == 204
            assert registered_ids(hub, agent) == [ids[:2], ids[2:]]
            assert http.delete("/iot/devices/門1").status_code == 204
            assert registered_ids(hub, agent) == [ids[1:2], ids[2:]]
    # the agent is down: a command written at the broker is refused, naming the agent
    r = command(hub, ids[1], "開閉", "届かない")
    assert r.status_code == 207, r.text
    assert r.json()["errors"][0]["registrationId"].startswith(ID_PREFIX)
    held = entity(hub, ids[1], local="true")
    assert held is not None
    assert "開閉" not in held
    # restarted in subscription mode: the registrations go, subscriptions come
    with agent_factory(iota_db=db, iota_port=port, iota_command_mode="subscription") as agent:
        wait_for(lambda: not registrations(hub, agent), what="registrations removed")
        wait_for(lambda: agent.agent._subscribed, what="command subscriptions")
        # a client's command is now stored at the broker (and notified to the agent)
        with subscribe(mqtt, "/門key/門2/cmd") as sub:
            assert command(hub, ids[1], "開閉", "開").status_code == 204
            assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"開閉": "開"}
        held = entity(hub, ids[1], local="true")
        assert held is not None
        assert held["開閉"]["value"] == "開"
    # and back: the command the broker holds is given up to the agent, which registers
    with agent_factory(iota_db=db, iota_port=port) as agent:
        wait_for(lambda: registered_ids(hub, agent) == [ids[1:2], ids[2:]], what="registered")
        held = entity(hub, ids[1], local="true")
        assert held is not None
        assert "開閉" not in held
        subs = httpx.get(f"{hub}/ngsi-ld/v1/subscriptions", headers=KOMAE, timeout=10).json()
        assert [s for s in subs if agent.url in s["notification"]["endpoint"]["uri"]] == []
        with subscribe(mqtt, "/門key/門2/cmd") as sub:
            assert command(hub, ids[1], "開閉", "閉").status_code == 204
            assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"開閉": "閉"}
        with agent.http() as http:
            assert http.delete("/iot/devices/門2").status_code == 204
            assert http.delete("/iot/devices/門3").status_code == 204
        assert registrations(hub, agent) == []
