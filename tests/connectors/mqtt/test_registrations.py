"""Commands and lazy attributes through context source registrations, end to end: a
real broker process forwarding to the agent, a real Mosquitto, devices publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.mqtt.registrations import ID_PREFIX, SOURCE_HEADER
from tests.connectors.mqtt.conftest import AgentFactory, Publisher, RunningAgent, wait_for
from tests.support import free_port, wait_http
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


# -- entities named by a group's entityNameExp -------------------------------------------------

PARKING = "駐車区画"
PARKING_GROUP = {
    "apikey": "区画key",
    "entity_type": PARKING,
    # the entity of each measure: the device id and the bay number the measure carries
    "entityNameExp": "id + '-' + sn",
    "attributes": [{"object_id": "occ", "name": "占有", "type": "Boolean"}],
    "lazy": [{"object_id": "b", "name": "電池残量", "type": "Number"}],
    "commands": [{"name": "表示"}],
}


def lazy_value(hub: str, eid: str, name: str = "電池残量") -> Any:
    """The value of a lazy attribute as a client reads it through the broker."""
    got = entity(hub, eid)
    return got[name]["value"] if got and name in got else None


def test_entities_named_by_entity_name_exp_are_registered_and_served(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker, device: Publisher
) -> None:
    """iotagent-node-lib (doc/api.md, "Entity Name expression support"): "the entity name
    can be generated dynamically based not only on the device ID and entity type, but also
    on the measures reported by the device". In NGSI-LD mode it registers the device's
    commands and lazy attributes for its entity (registrationUtils, one registration per
    device, ``mode: exclusive``), so a measure-named entity would have none; the agent
    registers each entity a device's measures name, when first seen, so a client reads
    its lazy attributes and sends it commands through the broker like the device's own."""
    gate = f"urn:ngsi-ld:{PARKING}:ゲート1"
    bay1, bay2 = f"{gate}-A01", f"{gate}-A02"
    with agent_factory() as agent, subscribe(mqtt, "/区画key/ゲート1/cmd") as sub:
        provision(agent, PARKING_GROUP, {"device_id": "ゲート1"})
        # the expression reads a measure: the device keeps its own entity until one comes
        assert registered_ids(hub, agent) == [[gate]]
        device.publish("/区画key/ゲート1/attrs", json.dumps({"sn": "A01", "occ": True, "b": 77}))
        wait_for(lambda: registered_ids(hub, agent) == [[gate, bay1]], what="bay 1 registered")
        got = wait_for(
            lambda: (e := entity(hub, bay1)) and "占有" in e and "電池残量" in e and e,
            what="bay 1 with its lazy attribute",
        )
        assert got["占有"]["value"] is True
        assert got["電池残量"]["value"] == 77
        local = entity(hub, bay1, local="true")
        assert local is not None
        assert "電池残量" not in local  # kept by the agent, never written to the broker
        assert lazy_value(hub, gate) is None  # the value is the named entity's

        # a command written to the named entity reaches the device that named it, and the
        # device's answer goes back to that entity
        r = command(hub, bay1, "表示", "満車")
        assert r.status_code == 204, r.text
        assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"表示": "満車"}
        wait_for(
            lambda: (e := entity(hub, bay1)) and e.get("表示_status", {}).get("value") == "PENDING",
            what="PENDING on the named entity",
        )
        device.publish("/区画key/ゲート1/cmdexe", json.dumps({"表示": "表示しました"}), qos=1)
        got = wait_for(
            lambda: (e := entity(hub, bay1)) and e["表示_status"]["value"] == "OK" and e,
            what="the answer on the named entity",
        )
        assert got["表示_info"]["value"] == "表示しました"
        own = entity(hub, gate)
        assert own is not None
        assert "表示_status" not in own

        # a second entity: registered too; a query by type reads both through the agent
        device.publish("/区画key/ゲート1/attrs", json.dumps({"sn": "A02", "occ": False, "b": 64}))
        wait_for(
            lambda: registered_ids(hub, agent) == [[gate, bay1, bay2]], what="bay 2 registered"
        )
        wait_for(lambda: lazy_value(hub, bay2) == 64, what="bay 2's lazy attribute")
        r = httpx.get(
            f"{hub}/ngsi-ld/v1/entities",
            params={"type": PARKING, "q": "電池残量>60"},
            headers=KOMAE,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert sorted((e["id"], e["電池残量"]["value"]) for e in r.json()) == [
            (bay1, 77),
            (bay2, 64),
        ]

        # deleting the device takes all its entities out: the registration goes
        with agent.http() as http:
            assert http.delete("/iot/devices/ゲート1").status_code == 204
        assert registrations(hub, agent) == []


def test_entity_name_exp_names_a_device_when_it_is_provisioned(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    """iotagent-node-lib (doc/api.md): "when using entityNameExp, the entity_name of the
    device provisioning is set to the result of the expression the first time the device
    is created", and "when using entityNameExp, the entity_name field in the device
    provisioning is ignored" for its measures. An expression that reads only the device
    (its id, type, service, subservice, static attributes) thus names the device's own
    entity, which is created, listed and registered under that name."""
    group = {**PARKING_GROUP, "apikey": "看板key", "entityNameExp": "'看板-' + id"}
    with agent_factory() as agent:
        provision(agent, group, {"device_id": "北口"}, {"device_id": "南口", "entity_name": "南"})
        north = f"urn:ngsi-ld:{PARKING}:看板-北口"
        south = f"urn:ngsi-ld:{PARKING}:南"
        with agent.http() as http:
            listed = {
                d["device_id"]: d["entity_name"] for d in http.get("/iot/devices").json()["devices"]
            }
        assert listed == {"北口": north, "南口": south}
        assert registered_ids(hub, agent) == [sorted([north, south])]
        wait_for(lambda: entity(hub, north), what="the device's entity, created as named")
        assert entity(hub, f"urn:ngsi-ld:{PARKING}:北口") is None  # no entity by the default
        # the measures of a device with an entity_name go where the expression says
        device.publish("/看板key/南口/attrs", json.dumps({"occ": True, "b": 50}), qos=1)
        named = f"urn:ngsi-ld:{PARKING}:看板-南口"
        got = wait_for(lambda: (e := entity(hub, named)) and "占有" in e and e, what="measure")
        assert got["占有"]["value"] is True
        wait_for(lambda: lazy_value(hub, named) == 50, what="lazy value of the named entity")


# -- lazy values survive a restart of the agent process ----------------------------------------


@contextmanager
def agent_process(
    mqtt: MqttBroker, hub: str, db: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """``renkei iot-agent`` as its own process (the caller may kill it)."""
    env = {
        **os.environ,
        "RENKEI_MQTT_URL": mqtt.url,
        "RENKEI_BROKER_URL": hub,
        "RENKEI_IOTA_PORT": str(port),
        "RENKEI_IOTA_DB": str(db),
        "RENKEI_IOTA_WINDOW_MS": "20",
        "RENKEI_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "iot-agent"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=30, proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(15)


def test_lazy_values_survive_a_restart_of_the_agent_process(
    hub: str, mqtt: MqttBroker, device: Publisher, tmp_path: Path
) -> None:
    """A lazy attribute is answered with the last value the device reported (source.py):
    an agent killed and started again answers with it at once, before the device reports
    again, because the values are kept in the agent's own SQLite file."""
    db, port = tmp_path / "renkei-iota.db", free_port()
    eid = f"urn:ngsi-ld:{TYPE}:灯9"
    url = f"http://127.0.0.1:{port}"
    service = {"fiware-service": "komae", "fiware-servicepath": "/"}
    with agent_process(mqtt, hub, db, port) as proc:
        with httpx.Client(base_url=url, headers=service, timeout=10) as http:
            assert http.post("/iot/groups", json={"groups": [GROUP]}).status_code == 201
            r = http.post("/iot/devices", json={"devices": [{"device_id": "灯9"}]})
            assert r.status_code == 201, r.text
        device.publish("/灯key/灯9/attrs", json.dumps({"b": 42}), qos=1)
        wait_for(lambda: lazy_value(hub, eid) == 42, what="the lazy value read")
        device.publish("/灯key/灯9/attrs", json.dumps({"b": 41}), qos=1)
        wait_for(lambda: lazy_value(hub, eid) == 41, what="the newer lazy value read")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # down: the broker answers without it
    assert lazy_value(hub, eid) is None
    with agent_process(mqtt, hub, db, port):
        wait_for(lambda: lazy_value(hub, eid) == 41, what="the kept value after the restart")
        got = entity(hub, eid)
        assert got is not None
        assert "observedAt" in got["電池残量"]
