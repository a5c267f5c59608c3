"""How the agent reaches the MQTT broker: TLS with the city's CA, and MQTT 3.1.1 brokers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.connectors.mqtt.conftest import AgentFactory, Publisher, amqtt_broker, wait_for
from tests.connectors.mqtt.test_agent import GROUP, entity, provision
from tests.support_mqtt import mosquitto

pytestmark = pytest.mark.mqtt


def ca_file(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_cert(ca: trustme.CA, workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``, as Mosquitto's certfile and keyfile."""
    workdir.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert("127.0.0.1")
    certfile, keyfile = workdir / "server.pem", workdir / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(certfile))
    issued.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=5)


def test_tls_with_the_city_ca_and_a_wrong_ca(
    agent_factory: AgentFactory, hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="renkei.iota")
    city_ca = trustme.CA()
    trusted = ca_file(city_ca, tmp_path / "city-ca.pem")
    with mosquitto(tmp_path / "tls", tls=server_cert(city_ca, tmp_path / "certs")) as secure:
        assert secure.url.startswith("mqtts://")
        with agent_factory(mqtt_url=secure.url, mqtt_ca_file=trusted) as agent:
            ok = wait_for(lambda: (r := health(agent.url)).status_code == 200 and r, what="up")
            assert ok.json()["mqtt"] is True
            assert ok.json()["mqttVersion"] == "5"
            provision(agent, {**GROUP, "apikey": "tls"})
            pub = Publisher(secure, ca_file=trusted)
            try:
                pub.publish("/tls/ws-tls/attrs", '{"t": 18.5}', qos=1)
            finally:
                pub.close()
            eid = "urn:ngsi-ld:WeatherObserved:ws-tls"
            got = wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e and e)
            assert got["temperature"]["value"] == 18.5

        # An agent that trusts another CA must say so and keep its API up, not hang.
        caplog.clear()
        wrong = ca_file(trustme.CA(), tmp_path / "other-ca.pem")
        started = time.monotonic()
        with agent_factory(mqtt_url=secure.url, mqtt_ca_file=wrong) as agent:
            down = wait_for(
                lambda: (
                    (r := health(agent.url)).status_code == 503
                    and "mqttError" in r.json()
                    and r.json()
                ),
                what="health naming the TLS problem",
            )
            assert down["mqtt"] is False
            assert "certificate" in down["mqttError"]
            assert "other-ca.pem" in down["mqttError"]
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert any("certificate" in r.getMessage() for r in errors), caplog.text
            with agent.http() as http:  # provisioning does not need MQTT
                assert http.get("/iot/groups").status_code == 200
        assert time.monotonic() - started < 15


def test_auto_falls_back_to_mqtt_311_on_a_broker_refusing_mqtt5(
    agent_factory: AgentFactory, hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="renkei.iota")
    with amqtt_broker(tmp_path) as old:
        # mqtt_version defaults to "auto"
        with agent_factory(mqtt_url=old.url) as agent:
            wait_for(lambda: health(agent.url).status_code == 200, timeout=15, what="3.1.1")
            assert health(agent.url).json()["mqttVersion"] == "3.1.1"
            assert any("refuses MQTT 5" in r.getMessage() for r in caplog.records)
            provision(agent, {**GROUP, "apikey": "amq"})
            pub = Publisher(old)
            try:
                pub.publish("/amq/legacy1/attrs", '{"t": 7, "h": 70}', qos=1)
            finally:
                pub.close()
            eid = "urn:ngsi-ld:WeatherObserved:legacy1"
            got = wait_for(lambda: (e := entity(hub, eid)) and "temperature" in e and e)
            assert (got["temperature"]["value"], got["humidity"]["value"]) == (7, 70)

        # Asking for MQTT 5 explicitly does not fall back: the refusal is reported.
        caplog.clear()
        with agent_factory(mqtt_url=old.url, mqtt_version="mqtt5.0") as agent:
            down = wait_for(
                lambda: (
                    (r := health(agent.url)).status_code == 503
                    and "mqttError" in r.json()
                    and r.json()
                ),
                what="refusal in health",
            )
            assert down["mqttVersion"] == "5"
            assert "MQTT 5" in down["mqttError"]
            assert any(r.levelno == logging.ERROR for r in caplog.records)
