"""The agent's NGSI v2 mode (``--ngsi v2``): measures written as the v2 entities
iotagent-json writes with ``IOTA_CB_NGSI_VERSION=v2``, through ``/v2/op/update``; end to
end with a real Mosquitto and a real broker, whose v2 subscriptions see them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from connectors.mqtt import ngsiv2
from tests.connectors.mqtt.conftest import AgentFactory, Publisher, RunningAgent, wait_for
from tests.receiver import Receiver
from tests.support_mqtt import MqttBroker, subscribe

V2 = {"Fiware-Service": "komae", "Fiware-ServicePath": "/tama"}
GROUP = {
    "apikey": "v2key",
    "entity_type": "WeatherObserved",
    "timestamp": True,
    "attributes": [
        {"object_id": "t", "name": "temperature", "type": "Number"},
        {"object_id": "h", "name": "humidity", "type": "Integer"},
        {
            "object_id": "r",
            "name": "rainfall",
            "type": "Number",
            "metadata": {"unitCode": {"type": "Text", "value": "MMT"}},
        },
        {"object_id": "pos", "name": "location", "type": "geo:point"},
    ],
    "static_attributes": [{"name": "city", "type": "Text", "value": "狛江市"}],
    "commands": [{"name": "reset"}],
}


# -- conversion ------------------------------------------------------------------------------


def test_a_window_becomes_one_v2_entity_per_measure_in_time_order() -> None:
    t1, t2 = "2026-04-01T00:00:01.000Z", "2026-04-01T00:00:02.000Z"

    def instant(stamp: str) -> dict[str, Any]:
        return {
            "type": "Property",
            "value": {"@type": "DateTime", "@value": stamp},
            "observedAt": stamp,
        }

    body = {
        "id": "WeatherObserved:気象-1",
        "type": "WeatherObserved",
        "scope": "/tama",
        "temperature": [
            {"type": "Property", "value": 12.5, "observedAt": t2, ngsiv2.V2_TYPE: "Number"},
            {"type": "Property", "value": 11, "observedAt": t1, ngsiv2.V2_TYPE: "Number"},
        ],
        "location": [
            {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [139.58, 35.63]},
                "observedAt": t1,
                ngsiv2.V2_TYPE: "geo:point",
            }
        ],
        "city": [{"type": "Property", "value": "狛江市", ngsiv2.V2_TYPE: "Text"}],
        "TimeInstant": [instant(t2), instant(t1)],
    }
    other = {
        "id": "WeatherObserved:root",
        "type": "WeatherObserved",
        "風向": [{"type": "Property", "value": 270, "observedAt": t1, ngsiv2.V2_TYPE: "Text"}],
    }
    (tama, tama_entities), (root, root_entities) = ngsiv2.requests([body, other])
    assert (tama, root) == ("/tama", "/")
    first, second = tama_entities
    stamp1 = {"TimeInstant": {"type": "DateTime", "value": t1}}
    assert first == {
        "id": "WeatherObserved:気象-1",
        "type": "WeatherObserved",
        "city": {"type": "Text", "value": "狛江市", "metadata": stamp1},
        "temperature": {"type": "Number", "value": 11, "metadata": stamp1},
        "location": {"type": "geo:point", "value": "35.63, 139.58", "metadata": stamp1},
        "TimeInstant": {"type": "DateTime", "value": t1},
    }
    assert set(second) == {"id", "type", "temperature", "TimeInstant"}
    assert second["temperature"]["value"] == 12.5
    assert root_entities == [
        {
            "id": "WeatherObserved:root",
            "type": "WeatherObserved",
            "風向": {"type": "Text", "value": 270},
        }
    ]


def test_requests_stay_within_the_batch_limit() -> None:
    bodies = [
        {"id": f"E{i}", "type": "T", "a": [{"type": "Property", "value": i}]}
        for i in range(ngsiv2.MAX_ENTITIES + 1)
    ]
    sizes = [len(entities) for _, entities in ngsiv2.requests(bodies)]
    assert sizes == [ngsiv2.MAX_ENTITIES, 1]


# -- end to end ------------------------------------------------------------------------------


def v2_entity(hub: str, eid: str) -> dict[str, Any] | None:
    r = httpx.get(f"{hub}/v2/entities/{quote(eid)}", headers=V2, timeout=5)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def provision(agent: RunningAgent, *devices: dict[str, Any]) -> None:
    with agent.http(path="/tama") as http:
        r = http.post("/iot/groups", json={"groups": [GROUP]})
        assert r.status_code == 201, r.text
        r = http.post("/iot/devices", json={"devices": list(devices)})
        assert r.status_code == 201, r.text


@pytest.mark.mqtt
def test_measures_keep_their_v2_shape(
    agent_factory: AgentFactory, hub: str, device: Publisher, mqtt: MqttBroker
) -> None:
    receiver = Receiver()
    try:
        sub = {
            "subject": {
                "entities": [{"idPattern": "^WeatherObserved:", "type": "WeatherObserved"}],
                "condition": {"attrs": ["temperature"]},
            },
            "notification": {
                "http": {"url": receiver.url},
                "attrs": ["temperature"],
                "attrsFormat": "keyValues",
            },
        }
        r = httpx.post(f"{hub}/v2/subscriptions", json=sub, headers=V2)
        assert r.status_code == 201, r.text
        with agent_factory(iota_ngsi="v2") as agent:
            provision(agent, {"device_id": "気象-1", "apikey": "v2key"})
            eid = "WeatherObserved:気象-1"
            device.publish(
                "/v2key/気象-1/attrs",
                json.dumps(
                    {
                        "t": 21.5,
                        "h": "60",
                        "r": 1.5,
                        "pos": "35.634,139.578",
                        "風向": "北東",
                        "TimeInstant": "2026-04-01T09:30:00+09:00",
                    }
                ),
            )
            got = wait_for(
                lambda: (e := v2_entity(hub, eid)) and "temperature" in e and e,
                what="the device's v2 entity",
            )
            stamp = {"TimeInstant": {"type": "DateTime", "value": "2026-04-01T00:30:00.000Z"}}
            assert got["temperature"] == {"type": "Number", "value": 21.5, "metadata": stamp}
            assert got["humidity"] == {"type": "Integer", "value": 60, "metadata": stamp}
            assert got["rainfall"]["metadata"] == {
                **stamp,
                "unitCode": {"type": "Text", "value": "MMT"},
            }
            assert got["location"]["type"] == "geo:point"
            assert got["location"]["value"] == "35.634, 139.578"
            assert got["風向"] == {"type": "Text", "value": "北東", "metadata": stamp}
            assert got["city"]["value"] == "狛江市"
            assert got["TimeInstant"]["type"] == "DateTime"
            # an array payload is two measures: two updates, two notifications, in order
            device.publish(
                "/v2key/気象-1/attrs",
                json.dumps(
                    [
                        {"t": 22.0, "TimeInstant": "2026-04-01T09:31:00+09:00"},
                        {"t": 22.5, "TimeInstant": "2026-04-01T09:32:00+09:00"},
                    ]
                ),
            )
            # (changes made while a notification is on its way go out together, in order)

            def temperatures(received: list[tuple[dict[str, str], Any]]) -> list[float]:
                return [e["temperature"] for _, n in received for e in n["data"]]

            received = receiver.wait_for(lambda r: len(temperatures(r)) >= 3, what="3 changes")
            assert temperatures(received) == [21.5, 22.0, 22.5]
            assert received[0][0]["fiware-servicepath"] == "/tama"
            # commands: a v2 client updates the command attribute, the device answers
            with subscribe(mqtt, "/v2key/気象-1/cmd") as cmd:
                wait_for(lambda: agent.agent._subscribed, what="command subscription")
                r = httpx.post(
                    f"{hub}/v2/entities/{quote(eid)}/attrs",
                    json={"reset": {"type": "command", "value": "今すぐ"}},
                    headers=V2,
                )
                assert r.status_code == 204, r.text
                assert json.loads(cmd.wait(1, timeout=10)[0].payload) == {"reset": "今すぐ"}
            device.publish("/v2key/気象-1/cmdexe", json.dumps({"reset": "完了"}), qos=1)
            done = wait_for(
                lambda: (
                    (e := v2_entity(hub, eid))
                    and e.get("reset_status", {}).get("value") == "OK"
                    and e
                ),
                what="the command's result",
            )
            assert done["reset_status"]["type"] == "commandStatus"
            assert done["reset_info"] == {
                "type": "commandResult",
                "value": "完了",
                "metadata": done["reset_info"]["metadata"],
            }
    finally:
        receiver.close()
