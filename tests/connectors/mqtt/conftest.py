"""Fixtures: a real Mosquitto, a real broker process, and agents run in-process by uvicorn."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from connectors.mqtt.agent import IoTAgent
from connectors.mqtt.app import create_app
from connectors.mqtt.settings import AgentSettings
from tests.support import broker, free_port
from tests.support_mqtt import MqttBroker, amqtt_broker, mosquitto

__all__ = ["AgentFactory", "Publisher", "amqtt_broker", "wait_for"]


@dataclass
class RunningAgent:
    url: str
    settings: AgentSettings
    agent: IoTAgent

    def http(self, service: str = "komae", path: str = "/") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"fiware-service": service, "fiware-servicepath": path},
            timeout=10,
        )

    def metric(self, name: str, label: str = "") -> int:
        return self.agent.metrics.get(name, label)


@contextmanager
def run_agent(settings: AgentSettings) -> Iterator[RunningAgent]:
    agent = IoTAgent(settings)
    config = uvicorn.Config(
        create_app(settings, agent),
        host=settings.iota_host,
        port=settings.iota_port,
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the agent did not start")
        time.sleep(0.02)
    try:
        yield RunningAgent(f"http://{settings.iota_host}:{settings.iota_port}", settings, agent)
    finally:
        server.should_exit = True
        thread.join(15)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("hub") / "hub.db") as url:
        yield url


@pytest.fixture
def mqtt(tmp_path: Path) -> Iterator[MqttBroker]:
    with mosquitto(tmp_path) as b:
        yield b


AgentFactory = Callable[..., AbstractContextManager[RunningAgent]]


@pytest.fixture
def agent_factory(tmp_path: Path, mqtt: MqttBroker, hub: str) -> AgentFactory:
    def make(**overrides: Any) -> AbstractContextManager[RunningAgent]:
        values: dict[str, Any] = {
            "mqtt_url": mqtt.url,
            "broker_url": hub,
            "iota_port": free_port(),
            "iota_db": str(tmp_path / f"iota-{free_port()}.db"),
            "iota_window_ms": 20,
        }
        values.update(overrides)
        return run_agent(AgentSettings(**values))

    return make


class Publisher:
    """A paho client publishing like a device does."""

    def __init__(
        self,
        mqtt: MqttBroker,
        *,
        mqtt5: bool = False,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca_file is not None:
            self.client.tls_set_context(ssl.create_default_context(cafile=ca_file))
        self.client.connect(mqtt.host, mqtt.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes, qos: int = 0) -> None:
        info = self.client.publish(topic, payload, qos)
        if qos:
            info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(mqtt: MqttBroker) -> Iterator[Publisher]:
    pub = Publisher(mqtt)
    yield pub
    pub.close()
