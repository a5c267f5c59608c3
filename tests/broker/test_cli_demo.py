"""``renkei demo``: its own port, its own or an existing Mosquitto, or no IoT agent."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.support import free_port, wait_http
from tests.support_mqtt import mosquitto

pytestmark = pytest.mark.mqtt


@contextmanager
def demo(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``renkei demo`` on a free port; yields its URL and the file holding its output."""
    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker.cli",
                "demo",
                "--port",
                str(port),
                "--store",
                f"sqlite:///{tmp_path / 'demo.db'}",
                *args,
            ],
            env={**os.environ, "RENKEI_LOG_LEVEL": "warning"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", timeout=60, proc=proc)
        except (TimeoutError, ChildProcessError):
            raise AssertionError(out.read_text()) from None
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the demo did not stop on SIGTERM:\n{out.read_text()}") from None


def measure_arrives(
    url: str, mqtt_port: int, agent_port: int, login: tuple[str, str] | None = None
) -> None:
    """A sensor's measure published over MQTT (with ``login``) becomes an entity in the
    demo hub."""
    deadline = time.monotonic() + 60
    while True:  # the demo provisions the group once the agent answers
        try:
            groups = httpx.get(
                f"http://127.0.0.1:{agent_port}/iot/groups",
                headers={"fiware-service": "komae", "fiware-servicepath": "/"},
                timeout=2,
            )
            if groups.status_code == 200 and groups.json().get("count"):
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the demo did not provision the IoT agent"
        time.sleep(0.1)
    client = Client(CallbackAPIVersion.VERSION2)
    if login is not None:
        client.username_pw_set(*login)
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    entity = f"{url}/ngsi-ld/v1/entities/urn:ngsi-ld:WeatherObserved:狛江センサー01"
    try:
        while True:  # until the agent's subscription is in place, a measure can be missed
            client.publish(
                "/demo/狛江センサー01/attrs", '{"temperature": 21.5}', qos=1
            ).wait_for_publish(5)
            wait = time.monotonic() + 1
            while time.monotonic() < wait:
                r = httpx.get(
                    entity, headers={"NGSILD-Tenant": "komae"}, params={"options": "keyValues"}
                )
                if r.status_code == 200:
                    assert r.json()["temperature"] == 21.5
                    return
                time.sleep(0.1)
            assert time.monotonic() < deadline, "the measure never reached the hub"
    finally:
        client.loop_stop()
        client.disconnect()


def logs_in(port: int, login: tuple[str, str] | None) -> bool:
    """Whether Mosquitto on ``port`` accepts the login (waits for its answer)."""
    answered = threading.Event()
    codes: list[ReasonCode] = []

    def on_connect(c: Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        codes.append(rc)
        answered.set()

    client = Client(CallbackAPIVersion.VERSION2)
    if login is not None:
        client.username_pw_set(*login)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(10), "no answer from Mosquitto"
    finally:
        client.disconnect()
        client.loop_stop()
    return not codes[0].is_failure


def test_demo_starts_its_own_mosquitto_where_none_listens(tmp_path: Path) -> None:
    mqtt_port, agent_port = free_port(), free_port()
    with demo(
        tmp_path,
        "--mqtt-url",
        f"mqtt://127.0.0.1:{mqtt_port}",
        "--iot-agent-port",
        str(agent_port),
    ) as (url, out):
        text = out.read_text()
        assert f"Mosquitto を 127.0.0.1:{mqtt_port} で起動しました" in text
        assert f"started Mosquitto on 127.0.0.1:{mqtt_port}" in text
        assert "デモのセンサーの MQTT ログイン" in text
        found = re.search(r"^  user demo  password (\S+)$", text, re.MULTILINE)
        assert found, text
        password = found.group(1)
        assert f"mosquitto_pub -h 127.0.0.1 -p {mqtt_port} -u demo -P '{password}'" in text
        # the demo's Mosquitto takes no anonymous client, nor a wrong password
        assert not logs_in(mqtt_port, None)
        assert not logs_in(mqtt_port, ("demo", "wrong"))
        measure_arrives(url, mqtt_port, agent_port, ("demo", password))
    # the demo's Mosquitto stops with it
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", mqtt_port)) != 0


def test_demo_uses_the_mosquitto_already_listening(tmp_path: Path) -> None:
    agent_port = free_port()
    with mosquitto(tmp_path) as existing:
        with demo(tmp_path, "--mqtt-url", existing.url, "--iot-agent-port", str(agent_port)) as (
            url,
            out,
        ):
            text = out.read_text()
            assert f"using the MQTT broker already listening at {existing.url}" in text
            assert "既存の MQTT ブローカー" in text
            assert "started Mosquitto" not in text
            measure_arrives(url, existing.port, agent_port)
        assert existing.process is not None
        assert existing.process.poll() is None  # not the demo's to stop


def test_demo_without_the_iot_agent(tmp_path: Path) -> None:
    agent_port, mqtt_port = free_port(), free_port()
    with demo(
        tmp_path,
        "--no-iot-agent",
        "--mqtt-url",
        f"mqtt://127.0.0.1:{mqtt_port}",
        "--iot-agent-port",
        str(agent_port),
    ) as (url, out):
        assert httpx.get(f"{url}/ngsi-ld/v1/entities", params={"type": "EvacuationSite"}).json()
        text = out.read_text()
        assert "IoT エージェントは起動しません (--no-iot-agent)" in text
        assert "the IoT agent is not started" in text
        # the hub answers, and neither the agent nor a Mosquitto was started
        for port in (agent_port, mqtt_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_refuses_a_url_that_is_not_mqtt(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "demo",
            "--store",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--mqtt-url",
            "http://127.0.0.1:1883",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "expected mqtt://host:port or mqtts://host:port" in proc.stderr
    assert not (tmp_path / "x.db").exists()
