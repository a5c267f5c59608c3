"""The agent end to end: a real Mosquitto, a real broker process, devices publishing."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.mqtt.mapping import parse_time
from tests.connectors.mqtt.conftest import AgentFactory, Publisher, RunningAgent, wait_for
from tests.support import free_port, start_broker
from tests.support_mqtt import MqttBroker, mosquitto, subscribe

pytestmark = pytest.mark.mqtt

GROUP = {
    "apikey": "k0m4e",
    "entity_type": "WeatherObserved",
    "resource": "/iot/json",
    "attributes": [
        {"object_id": "t", "name": "temperature", "type": "Number"},
        {"object_id": "h", "name": "humidity", "type": "Integer"},
        {"object_id": "on", "name": "active", "type": "Boolean"},
        {"object_id": "pos", "name": "location", "type": "geo:point"},
    ],
    "static_attributes": [{"name": "city", "type": "Text", "value": "Komae"}],
}


def entity(hub: str, eid: str, tenant: str | None = "komae") -> dict[str, Any] | None:
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    r = httpx.get(f"{hub}/ngsi-ld/v1/entities/{eid}", headers=headers, timeout=5)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def provision(agent: RunningAgent, group: dict[str, Any], *devices: dict[str, Any]) -> None:
    with agent.http() as http:
        r = http.post("/iot/groups", json={"groups": [group]})
        assert r.status_code == 201, r.text
        if devices:
            r = http.post("/iot/devices", json={"devices": list(devices)})
            assert r.status_code == 201, r.text


def test_measures_become_typed_attributes(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    with agent_factory() as agent:
        wait_for(lambda: httpx.get(f"{agent.url}/health").status_code == 200, what="health")
        provision(agent, GROUP, {"device_id": "ws01", "protocol": "IoTA-JSON", "transport": "MQTT"})
        eid = "urn:ngsi-ld:WeatherObserved:ws01"
        created = wait_for(lambda: entity(hub, eid), what="entity created at provisioning")
        assert created["city"]["value"] == "Komae"
        device.publish(
            "/k0m4e/ws01/attrs",
            json.dumps({"t": "21.5", "h": 40, "on": "true", "pos": "35.634,139.578", "x": "y"}),
        )
        got = wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e and e, what="entity")
        assert got["type"] == "WeatherObserved"
        assert got["temperature"]["value"] == 21.5
        assert got["humidity"]["value"] == 40
        assert got["active"]["value"] is True
        assert got["location"] == {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
            "observedAt": got["location"]["observedAt"],
        }
        assert got["x"]["value"] == "y"  # not explicitAttrs: unmapped values pass through
        assert got["city"]["value"] == "Komae"
        # An array of older measures on the /json/ topic: each is an instance of the
        # history, and neither replaces the newer current value.
        device.publish(
            "/json/k0m4e/ws01/attrs",
            json.dumps(
                [
                    {"t": 30, "TimeInstant": "2024-05-01T10:00:02Z"},
                    {"t": 25, "TimeInstant": "2024-05-01T10:00:01Z"},
                ]
            ),
            qos=1,
        )

        def history(attr: str) -> list[tuple[Any, str]]:
            r = httpx.get(
                f"{hub}/ngsi-ld/v1/temporal/entities/{eid}",
                params={"attrs": attr, "options": "temporalValues"},
                headers={"NGSILD-Tenant": "komae"},
            )
            assert r.status_code == 200, r.text
            return [(v, t) for v, t in r.json().get(attr, {}).get("values", [])]

        got_history = wait_for(lambda: len(h := history("temperature")) == 3 and h, what="array")
        assert got_history[:2] == [
            (25, "2024-05-01T10:00:01.000Z"),
            (30, "2024-05-01T10:00:02.000Z"),
        ]
        assert got_history[2][0] == 21.5
        current = entity(hub, eid)
        assert current is not None
        assert current["temperature"]["value"] == 21.5
        # A single attribute, raw payload.
        device.publish("/k0m4e/ws01/attrs/h", "55")
        wait_for(lambda: (e := entity(hub, eid)) and e["humidity"]["value"] == 55, what="single")
        assert [v for v, _ in history("humidity")] == [40, 55]
        # Provisioning is visible through the API.
        with agent.http() as http:
            listed = http.get("/iot/devices").json()
            assert listed["count"] == 1
            assert listed["devices"][0]["entity_name"] == eid
        assert entity(hub, eid, tenant=None) is None  # fiware-service komae = tenant komae


def test_bad_input_is_counted_and_never_fatal(
    agent_factory: AgentFactory, hub: str, device: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="renkei.iota")
    strict = {**GROUP, "apikey": "strict", "autoprovision": False}
    with agent_factory() as agent:
        provision(agent, strict, {"device_id": "s1", "apikey": "strict"})
        device.publish("/strict/s1/attrs", "{not json", qos=1)
        device.publish("/nokey/s1/attrs", '{"t": 1}', qos=1)
        device.publish("/strict/ghost/attrs", '{"t": 1}', qos=1)
        device.publish("/strict/s1/attrs", '{"t": "warm", "h": 3}', qos=1)
        device.publish("/strict/s1/attrs", "[1, 2]", qos=1)
        wait_for(lambda: agent.agent.metrics.total("bad_input_total") >= 5, what="bad input")
        for reason in (
            "invalid_json",
            "unknown_apikey",
            "unknown_device",
            "invalid_value",
            "invalid_payload",
        ):
            assert agent.metric("bad_input_total", reason) == 1, reason
        # the valid attribute of the half-bad message is stored
        eid = "urn:ngsi-ld:WeatherObserved:s1"
        wait_for(lambda: (e := entity(hub, eid)) and e.get("humidity", {}).get("value") == 3)
        text = httpx.get(f"{agent.url}/metrics").text
        assert 'renkei_iota_bad_input_total{reason="unknown_apikey"} 1' in text
        assert any("/strict/ghost/attrs" in r.getMessage() for r in caplog.records)


def test_autoprovision(agent_factory: AgentFactory, hub: str, device: Publisher) -> None:
    with agent_factory() as agent:
        provision(agent, {**GROUP, "apikey": "auto"})
        device.publish("/auto/new-one/attrs", '{"t": 12}')
        eid = "urn:ngsi-ld:WeatherObserved:new-one"
        wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e, what="auto device")
        with agent.http() as http:
            assert http.get("/iot/devices/new-one").status_code == 200


@pytest.mark.parametrize("mode", ["registration", "subscription"])
def test_commands_round_trip(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker, mode: str
) -> None:
    """Both ways for the broker to hand the agent a command: forwarded through the
    agent's registration, or notified through its subscription."""
    key = f"cmd{mode[:3]}"
    eid = f"urn:ngsi-ld:Streetlight:lamp1-{mode}"
    lamp = {"device_id": "lamp1", "entity_name": eid, "commands": [{"name": "switch"}]}
    with (
        agent_factory(iota_command_mode=mode) as agent,
        subscribe(mqtt, f"/{key}/lamp1/cmd") as sub,
    ):
        provision(agent, {"apikey": key, "entity_type": "Streetlight"}, lamp)
        wait_for(lambda: entity(hub, eid), what="entity")
        ready = (
            agent.agent._subscribed if mode == "subscription" else agent.agent.registrations.held
        )
        assert ready  # in place when provisioning answered
        r = httpx.post(
            f"{hub}/ngsi-ld/v1/entities/{eid}/attrs",
            json={"switch": {"type": "Property", "value": "on"}},
            headers={"NGSILD-Tenant": "komae"},
        )
        assert r.status_code == 204, r.text
        msg = sub.wait(1, timeout=10)[0]
        assert json.loads(msg.payload) == {"switch": "on"}
        wait_for(
            lambda: (e := entity(hub, eid)) and e.get("switch_status", {}).get("value") == "PENDING"
        )
        pub = Publisher(mqtt)
        try:
            pub.publish(f"/json/{key}/lamp1/cmdexe", '{"switch": "switched on"}', qos=1)
        finally:
            pub.close()
        got = wait_for(
            lambda: (e := entity(hub, eid)) and e["switch_status"]["value"] == "OK" and e,
            what="command result",
        )
        assert got["switch_info"]["value"] == "switched on"
        # a second update of the same command is sent again
        httpx.patch(
            f"{hub}/ngsi-ld/v1/entities/{eid}/attrs/switch",
            json={"type": "Property", "value": "off"},
            headers={"NGSILD-Tenant": "komae"},
        )
        assert json.loads(sub.wait(2, timeout=10)[1].payload) == {"switch": "off"}


def test_no_qos1_measure_lost_while_the_broker_is_down(
    agent_factory: AgentFactory, tmp_path: Path, device: Publisher
) -> None:
    port = free_port()
    hub = f"http://127.0.0.1:{port}"
    proc = start_broker(tmp_path / "down.db", port)
    try:
        with agent_factory(broker_url=hub) as agent:
            provision(agent, {**GROUP, "apikey": "dn"})
            wait_for(lambda: httpx.get(f"{agent.url}/health").status_code == 200)
            stop(proc)
            for i in range(20):
                device.publish(f"/dn/d{i % 4}/attrs", json.dumps({"h": i}), qos=1)
            wait_for(lambda: httpx.get(f"{agent.url}/health").status_code == 503, what="503")
            wait_for(lambda: agent.agent.batcher.buffered >= 1, what="buffered")
            assert agent.metric("measures_stored_total") == 0
            proc = start_broker(tmp_path / "down.db", port)
            wait_for(lambda: agent.metric("measures_stored_total") == 20, timeout=20)
            for d in range(4):
                e = entity(hub, f"urn:ngsi-ld:WeatherObserved:d{d}")
                assert e is not None
                assert e["humidity"]["value"] == 16 + d  # the last of each device
            assert agent.agent.metrics.total("dropped_total") == 0
            wait_for(lambda: httpx.get(f"{agent.url}/health").status_code == 200)
    finally:
        stop(proc)


def test_two_agents_share_the_load(agent_factory: AgentFactory, hub: str, mqtt: MqttBroker) -> None:
    total = 400
    with agent_factory() as one, agent_factory() as two:
        provision(one, {"apikey": "shared", "entity_type": "Counter"})
        provision(two, {"apikey": "shared", "entity_type": "Counter"})  # a registry each
        wait_for(lambda: one.agent.link.connected and two.agent.link.connected)
        pub = Publisher(mqtt, mqtt5=True)
        try:
            for i in range(total):
                pub.publish(f"/shared/c{i % 10}/attrs", json.dumps({"n": i}), qos=1)
        finally:
            pub.close()

        def stored() -> int:
            return one.metric("measures_stored_total") + two.metric("measures_stored_total")

        wait_for(lambda: stored() >= total, timeout=20, what="all measures stored")
        received = [a.metric("messages_received_total", "measure") for a in (one, two)]
        assert sum(received) == total, received  # none lost, none twice
        assert min(received) > 0, received  # both took a share
        assert stored() == total


def test_mqtt_311_single_agent_and_credentials(
    agent_factory: AgentFactory, hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="renkei.iota")
    with mosquitto(tmp_path / "auth", users={"iota": "s3cret-pw", "dev": "devpw"}) as secured:
        url = f"mqtt://iota:s3cret-pw@{secured.host}:{secured.port}"
        with agent_factory(mqtt_url=url, mqtt_version="mqtt3.1.1") as agent:
            wait_for(lambda: agent.agent.link.connected, what="connected")
            provision(agent, {**GROUP, "apikey": "v3"})
            health = httpx.get(f"{agent.url}/health").json()
            assert health["mqttVersion"] == "3.1.1"
            pub = Publisher(secured, user="dev", password="devpw")
            try:
                pub.publish("/v3/old/attrs", '{"t": 3}', qos=1)
            finally:
                pub.close()
            eid = "urn:ngsi-ld:WeatherObserved:old"
            wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e, what="3.1.1 measure")
    assert not any("s3cret-pw" in r.getMessage() for r in caplog.records)


def test_timestamp_adds_time_instant(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    with agent_factory() as agent:
        provision(
            agent,
            {**GROUP, "apikey": "ts", "timestamp": True},
            {"device_id": "stamped", "apikey": "ts"},
            {"device_id": "plain", "apikey": "ts", "timestamp": False},  # the device wins
        )
        device.publish(
            "/ts/stamped/attrs", json.dumps({"t": 11, "TimeInstant": "2024-06-01T09:30:00+09:00"})
        )
        eid = "urn:ngsi-ld:WeatherObserved:stamped"
        got = wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e and e)
        assert got["TimeInstant"]["type"] == "Property"
        assert got["TimeInstant"]["value"] == {
            "@type": "DateTime",
            "@value": "2024-06-01T00:30:00.000Z",
        }
        assert got["temperature"]["observedAt"] == "2024-06-01T00:30:00.000Z"
        # without a TimeInstant in the measure, the arrival time is the measure time
        before = time.time()
        device.publish("/ts/stamped/attrs", json.dumps({"t": 12}))
        got = wait_for(lambda: (e := entity(hub, eid)) and e["temperature"]["value"] == 12 and e)
        stamp = got["TimeInstant"]["value"]["@value"]
        assert stamp == got["temperature"]["observedAt"]
        assert before - 1 <= parse_time(stamp) <= time.time() + 1
        # an autoprovisioned device follows its group
        device.publish("/ts/auto-ts/attrs", json.dumps({"t": 13}))
        auto = "urn:ngsi-ld:WeatherObserved:auto-ts"
        got = wait_for(lambda: (e := entity(hub, auto)) and "temperature" in e and e)
        assert "TimeInstant" in got
        # timestamp: false on the device: observedAt only, no TimeInstant attribute
        device.publish("/ts/plain/attrs", json.dumps({"t": 14}))
        plain = "urn:ngsi-ld:WeatherObserved:plain"
        got = wait_for(lambda: (e := entity(hub, plain)) and "temperature" in e and e)
        assert "TimeInstant" not in got
        assert "observedAt" in got["temperature"]


def command_subscriptions(hub: str, agent: RunningAgent) -> list[dict[str, Any]]:
    """The broker's subscriptions that notify this agent."""
    r = httpx.get(f"{hub}/ngsi-ld/v1/subscriptions", headers={"NGSILD-Tenant": "komae"}, timeout=5)
    assert r.status_code == 200, r.text
    return [s for s in r.json() if s["notification"]["endpoint"]["uri"].startswith(agent.url)]


def test_deleting_devices_and_groups_removes_their_command_subscriptions(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker
) -> None:
    lamps = [
        {"device_id": d, "apikey": "del", "commands": [{"name": "switch"}]}
        for d in ("lamp-a", "lamp-b")
    ]
    with (
        agent_factory(iota_command_mode="subscription") as agent,
        subscribe(mqtt, "/del/+/cmd") as sub,
    ):
        provision(agent, {"apikey": "del", "entity_type": "Lamp"}, *lamps)
        subs = command_subscriptions(hub, agent)  # in place when the POST answered
        assert [s["watchedAttributes"] for s in subs] == [["switch"]]
        wait_for(
            lambda: all(entity(hub, f"urn:ngsi-ld:Lamp:{d}") for d in ("lamp-a", "lamp-b")),
            what="entities",
        )

        def switch(device_id: str, value: str) -> None:
            r = httpx.post(
                f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:Lamp:{device_id}/attrs",
                json={"switch": {"type": "Property", "value": value}},
                headers={"NGSILD-Tenant": "komae"},
            )
            assert r.status_code in (204, 207), r.text

        with agent.http() as http:
            assert http.delete("/iot/devices/lamp-a").status_code == 204
        # lamp-b still has the command: the subscription stays, lamp-a gets no commands
        assert len(command_subscriptions(hub, agent)) == 1
        switch("lamp-a", "on")
        switch("lamp-b", "on")
        sub.wait(1, timeout=10)
        time.sleep(0.5)  # a command for lamp-a would have come with or before lamp-b's
        assert [m.topic for m in sub.messages] == ["/del/lamp-b/cmd"]

        with agent.http() as http:
            assert http.delete("/iot/devices/lamp-b").status_code == 204
        assert command_subscriptions(hub, agent) == []
        switch("lamp-b", "off")
        time.sleep(1.0)
        assert len(sub.messages) == 1

        # a group's commands: subscribed with the group, gone with it
        gate = {"apikey": "gate", "entity_type": "Gate", "commands": [{"name": "open"}]}
        with agent.http() as http:
            assert http.post("/iot/groups", json={"groups": [gate]}).status_code == 201
            subs = command_subscriptions(hub, agent)
            assert [s["entities"][0]["type"] for s in subs] == ["Gate"]
            assert http.delete("/iot/groups?apikey=gate").status_code == 204
        assert command_subscriptions(hub, agent) == []


def history_count(hub: str, eid: str, attr: str, tenant: str = "komae") -> int:
    """How many instances of ``attr`` the broker's history holds for ``eid``."""
    r = httpx.get(
        f"{hub}/ngsi-ld/v1/temporal/entities/{eid}",
        params={"attrs": attr, "options": "aggregatedValues", "aggrMethods": "totalCount"},
        headers={"NGSILD-Tenant": tenant},
        timeout=10,
    )
    if r.status_code == 404:
        return 0
    assert r.status_code == 200, r.text
    counts = r.json().get(attr, {}).get("totalCount", [])
    return sum(int(c[0]) for c in counts)


def test_every_qos1_measure_reaches_the_history_at_a_high_rate(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker
) -> None:
    """Batching keeps the agent fast; no measure is merged away: history == published."""
    devices, total = 25, 3000
    with agent_factory(iota_window_ms=50) as agent:
        provision(agent, {**GROUP, "apikey": "fast", "entity_type": "流量計"})
        wait_for(lambda: agent.agent.link.connected, what="MQTT")
        pub = Publisher(mqtt)
        try:
            infos = [
                pub.client.publish(
                    f"/fast/m{i % devices}/attrs", json.dumps({"t": i, "h": i % 7}), qos=1
                )
                for i in range(total)
            ]
            for info in infos:
                info.wait_for_publish(30)
        finally:
            pub.close()
        wait_for(lambda: agent.metric("measures_stored_total") >= total, timeout=60, what="all")
        assert agent.metric("measures_stored_total") == total
        assert agent.agent.metrics.total("dropped_total") == 0
        base = "urn:ngsi-ld:流量計:m"
        in_history = sum(history_count(hub, f"{base}{d}", "temperature") for d in range(devices))
        assert in_history == total
        for d in range(devices):
            current = entity(hub, f"{base}{d}")
            assert current is not None
            last = max(i for i in range(total) if i % devices == d)
            assert current["temperature"]["value"] == last  # the newest is the current value


def query(hub: str, tenant: str = "komae", **params: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{hub}/ngsi-ld/v1/entities",
        params=params,
        headers={"NGSILD-Tenant": tenant},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


def test_service_path_becomes_the_entity_scope(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    group = {"apikey": "floors", "entity_type": "室温計", "attributes": GROUP["attributes"]}
    with agent_factory() as agent:
        with agent.http(path="/floor1") as http:
            r = http.post("/iot/groups", json={"groups": [group]})
            assert r.status_code == 201, r.text
            r = http.post("/iot/devices", json={"devices": [{"device_id": "一階"}]})
            assert r.status_code == 201, r.text
        with httpx.Client(
            base_url=agent.url, headers={"fiware-service": "komae", "NGSILD-Path": "/floor2"}
        ) as http:  # NGSILD-Path as Orion-LD takes it
            r = http.post(
                "/iot/devices",
                # its own type and mappings: the group is /floor1's
                json={
                    "devices": [
                        {
                            "device_id": "二階",
                            "apikey": "floors",
                            "entity_type": "室温計",
                            "attributes": GROUP["attributes"],
                        }
                    ]
                },
            )
            assert r.status_code == 201, r.text
            listed = http.get("/iot/devices").json()
            assert [d["device_id"] for d in listed["devices"]] == ["二階"]
            assert listed["devices"][0]["service_path"] == "/floor2"
        device.publish("/floors/一階/attrs", json.dumps({"t": 18.5}), qos=1)
        device.publish("/floors/二階/attrs", json.dumps({"t": 21.0}), qos=1)
        one, two = "urn:ngsi-ld:室温計:一階", "urn:ngsi-ld:室温計:二階"
        wait_for(lambda: (e := entity(hub, two)) and "temperature" in e, what="floor 2")
        wait_for(lambda: (e := entity(hub, one)) and "temperature" in e, what="floor 1")
        found = query(hub, type="室温計", scopeQ="/floor2")
        assert [e["id"] for e in found] == [two]
        assert found[0]["scope"] == "/floor2"
        assert [e["id"] for e in query(hub, type="室温計", scopeQ="/floor1")] == [one]
        # NGSI v2 clients select by Fiware-ServicePath, as with Orion
        r = httpx.get(
            f"{hub}/v2/entities",
            params={"type": "室温計"},
            headers={"Fiware-Service": "komae", "Fiware-ServicePath": "/floor2"},
        )
        assert r.status_code == 200, r.text
        assert [e["id"] for e in r.json()] == [two]
        # the measures' history keeps the scope too
        r = httpx.get(
            f"{hub}/ngsi-ld/v1/temporal/entities",
            params={
                "type": "室温計",
                "scopeQ": "/floor1",
                "timerel": "after",
                "timeAt": "2000-01-01T00:00:00Z",
            },
            headers={"NGSILD-Tenant": "komae"},
        )
        assert r.status_code == 200, r.text
        assert [e["id"] for e in r.json()] == [one]


def test_topics_without_the_leading_slash(
    agent_factory: AgentFactory, hub: str, mqtt: MqttBroker, device: Publisher
) -> None:
    lamp = {"device_id": "灯1", "entity_type": "Streetlight", "commands": [{"name": "switch"}]}
    with agent_factory() as agent, subscribe(mqtt, "json/noslash/灯1/cmd") as sub:
        provision(agent, {**GROUP, "apikey": "noslash"}, lamp)
        device.publish("json/noslash/ws9/attrs", json.dumps({"t": 12}), qos=1)
        device.publish("noslash/ws9/attrs/h", "33", qos=1)
        eid = "urn:ngsi-ld:WeatherObserved:ws9"
        wait_for(
            lambda: (e := entity(hub, eid)) and "temperature" in e and "humidity" in e,
            what="measures on both slash-less topics",
        )
        # a device speaking without the slash gets its commands the same way
        device.publish("json/noslash/灯1/attrs", json.dumps({"t": 1}), qos=1)
        lamp_id = "urn:ngsi-ld:Streetlight:灯1"
        wait_for(lambda: (e := entity(hub, lamp_id)) and "temperature" in e, what="lamp")
        r = httpx.post(
            f"{hub}/ngsi-ld/v1/entities/{lamp_id}/attrs",
            json={"switch": {"type": "Property", "value": "点灯"}},
            headers={"NGSILD-Tenant": "komae"},
        )
        assert r.status_code == 204, r.text
        assert json.loads(sub.wait(1, timeout=10)[0].payload) == {"switch": "点灯"}
        assert agent.metric("bad_input_total", "invalid_topic") == 0


def test_multi_entity_measures_go_to_the_named_entities(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    meter = {
        "device_id": "contador12",
        "entity_type": "multientity",
        "timestamp": True,
        "attributes": [
            {
                "object_id": "cont1",
                "name": "vol",
                "type": "Number",
                "entity_name": "urn:ngsi-ld:WaterMeter:狛江01",
                "entity_type": "WaterMeter",
            },
            {
                "object_id": "cont2",
                "name": "vol",
                "type": "Number",
                "entity_name": "狛江02",
                "entity_type": "WaterMeter",
            },
            {"object_id": "b", "name": "battery", "type": "Number"},
        ],
    }
    with agent_factory() as agent:
        provision(agent, {"apikey": "multi"}, meter)
        device.publish("/multi/contador12/attrs", json.dumps({"cont1": 3, "cont2": 4, "b": 90}))
        one, two = "urn:ngsi-ld:WaterMeter:狛江01", "urn:ngsi-ld:WaterMeter:狛江02"
        got = wait_for(lambda: entity(hub, one), what="first meter")
        assert got["type"] == "WaterMeter"
        assert got["vol"]["value"] == 3
        assert "TimeInstant" in got
        assert wait_for(lambda: entity(hub, two), what="second meter")["vol"]["value"] == 4
        own = entity(hub, "urn:ngsi-ld:multientity:contador12")
        assert own is not None
        assert own["battery"]["value"] == 90
        assert "vol" not in own
        # a measure for the other entities only still counts once
        device.publish("/multi/contador12/attrs", json.dumps({"cont1": 5}), qos=1)
        wait_for(lambda: (e := entity(hub, one)) and e["vol"]["value"] == 5, what="update")
        wait_for(lambda: agent.metric("measures_stored_total") >= 2, what="counted")
        assert agent.metric("measures_stored_total") == 2


def test_expressions_transform_measures(
    agent_factory: AgentFactory, hub: str, device: Publisher
) -> None:
    group = {
        "apikey": "jexl",
        "entity_type": "WasteContainer",
        "entityNameExp": "'ごみ箱-' + id",
        "static_attributes": [{"name": "district", "type": "Text", "value": "岩戸北"}],
        "attributes": [
            {"object_id": "l", "name": "level", "type": "Number"},
            {"name": "fillingLevel", "type": "Number", "expression": "level / 100"},
            {
                "name": "status",
                "type": "Text",
                "expression": "fillingLevel > 0.8 ? '満杯' : '空きあり'",
            },
            {
                "name": "location",
                "type": "geo:json",
                "expression": "{type: 'Point', coordinates: [lon, lat]}",
            },
            {"name": "lat", "type": "Number"},
            {"name": "lon", "type": "Number"},
            {"name": "at", "type": "DateTime", "expression": "ts|toisodate"},
            {"name": "broken", "type": "Number", "expression": "l + ('x'|jsonparse)"},
        ],
        "explicitAttrs": "['level', 'fillingLevel', 'status', 'location', 'at', 'district']",
    }
    with agent_factory() as agent:
        provision(agent, group)
        payload = {"l": 85, "lat": 35.63, "lon": 139.58, "ts": 1714532400000, "x": 1}
        device.publish("/jexl/wc45/attrs", json.dumps(payload), qos=1)
        eid = "urn:ngsi-ld:WasteContainer:ごみ箱-wc45"  # entityNameExp, made a URN
        got = wait_for(lambda: entity(hub, eid), what="entity named by entityNameExp")
        assert got["level"]["value"] == 85
        assert got["fillingLevel"]["value"] == 0.85
        assert got["status"]["value"] == "満杯"  # an expression reads the one before it
        assert got["location"]["value"] == {"type": "Point", "coordinates": [139.58, 35.63]}
        assert got["at"]["value"] == {"@type": "DateTime", "@value": "2024-05-01T03:00:00.000Z"}
        assert got["district"]["value"] == "岩戸北"
        # explicitAttrs as a list: lat, lon and the unmapped x are not sent
        assert not {"lat", "lon", "x", "broken"} & got.keys()
        # an expression that fails costs that attribute only, and is counted
        assert agent.metric("bad_input_total", "expression_error") >= 1
        # a measure without the expressions' inputs leaves their attributes alone
        device.publish("/jexl/wc45/attrs", json.dumps({"l": 10}), qos=1)
        wait_for(lambda: (e := entity(hub, eid)) and e["level"]["value"] == 10, what="update")
        got = entity(hub, eid)
        assert got is not None
        assert got["fillingLevel"]["value"] == 0.1
        assert got["status"]["value"] == "空きあり"
        assert got["location"]["value"]["coordinates"] == [139.58, 35.63]


class DeviceEndpoint:
    """A real HTTP server playing a device that takes pushed commands."""

    def __init__(self, answer: dict[str, Any]) -> None:
        received: list[Any] = []
        got = threading.Event()
        self.received, self.got = received, got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/command"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_command(hub: str, eid: str, name: str, value: Any) -> None:
    r = httpx.patch(
        f"{hub}/ngsi-ld/v1/entities/{eid}/attrs",
        json={name: {"type": "Property", "value": value}},
        headers={"NGSILD-Tenant": "komae"},
    )
    assert r.status_code == 204, r.text


def test_http_devices_measures_polling_and_push_commands(
    agent_factory: AgentFactory, hub: str
) -> None:
    group = {**GROUP, "apikey": "httpkey", "entity_type": "Bell", "transport": "HTTP"}
    poller = {"device_id": "鐘1", "commands": [{"name": "ring"}]}
    bell = DeviceEndpoint({"ring": "鳴った"})
    pushed = {"device_id": "鐘2", "commands": [{"name": "ring"}], "endpoint": bell.url}
    try:
        with ExitStack() as stack:
            agent = stack.enter_context(agent_factory())
            provision(agent, group, poller, pushed)
            api = stack.enter_context(httpx.Client(base_url=agent.url, timeout=15))
            # measures: an object, or an array of them (each its own instance)
            r = api.post(
                "/iot/json", params={"k": "httpkey", "i": "鐘1"}, json={"t": 20.5, "h": 40}
            )
            assert (r.status_code, r.content) == (200, b"")  # answered once stored
            one = "urn:ngsi-ld:Bell:鐘1"
            got = entity(hub, one)
            assert got is not None
            assert got["temperature"]["value"] == 20.5
            stamped = [
                {"t": 1, "TimeInstant": "2026-11-01T00:00:01Z"},
                {"t": 2, "TimeInstant": "2026-11-01T00:00:02Z"},
            ]
            assert (
                api.post("/iot/json", params={"k": "httpkey", "i": "鐘1"}, json=stamped).status_code
                == 200
            )
            assert history_count(hub, one, "temperature") == 3
            # unknown devices of a group are provisioned as HTTP devices; bad input is 4xx
            r = api.post("/iot/json", params={"k": "httpkey", "i": "新しい鐘"}, json={"t": 1})
            assert r.status_code == 200
            assert entity(hub, "urn:ngsi-ld:Bell:新しい鐘") is not None
            assert (
                api.post("/iot/json", params={"k": "nokey", "i": "x"}, json={"t": 1}).status_code
                == 404
            )
            assert api.post("/iot/json", params={"k": "httpkey"}, json={"t": 1}).status_code == 400
            bad = api.post("/iot/json", params={"k": "httpkey", "i": "鐘1"}, content=b"{oops")
            assert (bad.status_code, bad.json()["name"]) == (400, "WRONG_SYNTAX")
            # polling: the command waits until the device asks for it
            assert (
                api.get("/iot/json", params={"k": "httpkey", "i": "鐘1", "getCmd": 1}).json() == {}
            )
            send_command(hub, one, "ring", "三回")
            wait_for(
                lambda: (
                    (e := entity(hub, one)) and e.get("ring_status", {}).get("value") == "PENDING"
                ),
                what="pending command",
            )
            polled = api.get("/iot/json", params={"k": "httpkey", "i": "鐘1", "getCmd": 1})
            assert polled.json() == {"ring": "三回"}
            assert (
                api.get("/iot/json", params={"k": "httpkey", "i": "鐘1", "getCmd": 1}).json() == {}
            )
            wait_for(
                lambda: (e := entity(hub, one)) and e["ring_status"]["value"] == "DELIVERED",
                what="delivered",
            )
            r = api.post(
                "/iot/json/commands", params={"k": "httpkey", "i": "鐘1"}, json={"ring": "済"}
            )
            assert r.status_code == 200
            got = wait_for(
                lambda: (e := entity(hub, one)) and e["ring_status"]["value"] == "OK" and e,
                what="result",
            )
            assert got["ring_info"]["value"] == "済"
            # push: the command is POSTed to the device's endpoint; its answer is the result
            two = "urn:ngsi-ld:Bell:鐘2"
            wait_for(lambda: entity(hub, two), what="second bell")
            send_command(hub, two, "ring", "一回")
            assert bell.got.wait(10)
            assert bell.received == [{"ring": "一回"}]
            got = wait_for(
                lambda: (
                    (e := entity(hub, two)) and e.get("ring_status", {}).get("value") == "OK" and e
                ),
                what="pushed command result",
            )
            assert got["ring_info"]["value"] == "鳴った"
            # an endpoint the outbound policy refuses is refused when provisioned
            metadata = {"device_id": "鐘3", "endpoint": "http://169.254.169.254/latest"}
            with agent.http() as http:
                r = http.post("/iot/devices", json={"devices": [metadata]})
            assert r.status_code == 400
            assert "outbound policy" in r.json()["message"]
    finally:
        bell.close()
