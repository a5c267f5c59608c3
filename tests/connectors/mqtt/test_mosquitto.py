"""``renkei iot mosquitto-acl``: logins and ACLs per apikey, checked by a real Mosquitto
(and mosquitto_passwd), with the agent and a broker behind it."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from paho.mqtt.client import Client, ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from connectors.mqtt import cli
from connectors.mqtt.mosquitto import check_password, hash_password, read_password_file
from connectors.mqtt.registry import Registry, Scope
from connectors.mqtt.settings import AgentSettings
from tests.connectors.mqtt.conftest import Publisher, run_agent, wait_for
from tests.support import free_port
from tests.support_mqtt import MqttBroker, mosquitto, mosquitto_passwd

pytestmark = pytest.mark.mqtt

KOMAE = Scope("komae", "/")
CHOFU = Scope("chofu", "/")


def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """Renkei."""

    cli.register(root)
    return root


def run_acl(tmp_path: Path, *more: str) -> tuple[dict[str, str], str]:
    """Run the command; the new logins it shows (user -> password) and its stderr."""
    result = CliRunner().invoke(
        app(),
        [
            "iot",
            "mosquitto-acl",
            "--iota-db",
            str(tmp_path / "iota.db"),
            "--password-file",
            str(tmp_path / "passwd"),
            "--acl-file",
            str(tmp_path / "acl"),
            *more,
        ],
    )
    assert result.exit_code == 0, result.output
    shown = dict(re.findall(r"^  (\S+)\t(\S+)\t", result.stdout, re.MULTILINE))
    return shown, result.stderr


def connects(mqtt: MqttBroker, user: str, password: str) -> bool:
    """Whether Mosquitto accepts the login (waits for its CONNACK)."""
    answered = threading.Event()
    result: list[ReasonCode] = []

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        result.append(rc)
        answered.set()

    client = Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    try:
        assert answered.wait(5), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return not result[0].is_failure


def test_hashes_read_by_mosquitto_passwd_and_back(tmp_path: Path) -> None:
    tool = mosquitto_passwd()
    assert tool is not None
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "狛江", "雨の日"], check=True, timeout=10)
    theirs = read_password_file(path)["狛江"]
    assert theirs.startswith("$7$")
    assert check_password("雨の日", theirs)
    assert not check_password("晴れの日", theirs)
    ours = hash_password("雨の日")
    assert check_password("雨の日", ours)
    assert ours != hash_password("雨の日")  # a fresh salt each time


def test_each_apikey_logs_in_and_publishes_only_on_its_own_topics(tmp_path: Path, hub: str) -> None:
    registry = Registry(tmp_path / "iota.db")
    registry.add_groups(KOMAE, [{"apikey": "狛江-雨量", "entity_type": "WeatherObserved"}])
    registry.add_groups(CHOFU, [{"apikey": "調布-水位", "entity_type": "WaterLevel"}])
    for scope in (KOMAE, CHOFU):  # one apikey in both services
        registry.add_groups(scope, [{"apikey": "共有", "entity_type": "Streetlight"}])
    registry.close()

    logins, warnings = run_acl(tmp_path)
    assert set(logins) == {"renkei-iota", "狛江-雨量", "調布-水位"}
    assert "--pin 共有=SERVICE" in warnings
    acl = (tmp_path / "acl").read_text(encoding="utf-8")
    assert "topic write /狛江-雨量/+/attrs" in acl
    assert "topic read /狛江-雨量/+/cmd" in acl
    assert (tmp_path / "passwd").stat().st_mode & 0o077 == 0
    for password in logins.values():
        assert password not in acl
        assert password not in (tmp_path / "passwd").read_text(encoding="utf-8")

    with mosquitto(tmp_path, password_file=tmp_path / "passwd", acl_file=tmp_path / "acl") as mqtt:
        assert not connects(mqtt, "狛江-雨量", "wrong-password")
        assert not connects(mqtt, "共有", "anything")
        agent_url = f"mqtt://renkei-iota:{logins['renkei-iota']}@{mqtt.host}:{mqtt.port}"
        settings = AgentSettings(
            mqtt_url=agent_url,
            broker_url=hub,
            iota_db=str(tmp_path / "iota.db"),
            iota_port=free_port(),
            iota_window_ms=20,
        )
        with run_agent(settings) as agent:
            wait_for(lambda: agent.agent.link.connected, what="the agent's MQTT login")
            device = Publisher(mqtt, user="狛江-雨量", password=logins["狛江-雨量"])
            try:
                # another apikey's topic: Mosquitto drops it before anyone reads it
                device.publish("/調布-水位/水位計/attrs", '{"level": 9}', qos=1)
                device.publish("/狛江-雨量/雨量計/attrs", '{"rain": 12}', qos=1)

                def rain() -> Any:
                    r = httpx.get(
                        f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:WeatherObserved:雨量計",
                        params={"options": "keyValues"},
                        headers={"NGSILD-Tenant": "komae"},
                    )
                    return r.status_code == 200 and r.json().get("rain")

                assert wait_for(rain, what="the measure of the device with its login") == 12
            finally:
                device.close()
            # messages from one client arrive in order: the dropped one never came
            assert agent.metric("messages_received_total", "measure") == 1
            missing = httpx.get(
                f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:WaterLevel:水位計",
                headers={"NGSILD-Tenant": "chofu"},
            )
            assert missing.status_code == 404

        # the operator pins the shared apikey to chofu: a login for it, the others kept
        before = read_password_file(tmp_path / "passwd")
        pinned, warnings = run_acl(tmp_path, "--pin", "共有=chofu")
        assert set(pinned) == {"共有"}
        assert "共有" not in warnings
        after = read_password_file(tmp_path / "passwd")
        assert {k: after[k] for k in before} == before
        mqtt.reload()
        wait_for(lambda: connects(mqtt, "共有", pinned["共有"]), what="the new login")
        assert connects(mqtt, "狛江-雨量", logins["狛江-雨量"])
        # pinned to komae instead: the chofu devices' password must stop working
        moved, _ = run_acl(tmp_path, "--pin", "共有=komae")
        assert set(moved) == {"共有"}
        mqtt.reload()
        wait_for(lambda: connects(mqtt, "共有", moved["共有"]), what="the moved login")
        assert not connects(mqtt, "共有", pinned["共有"])
    again = Registry(tmp_path / "iota.db")
    assert again.pins == {"狛江-雨量": "komae", "調布-水位": "chofu", "共有": "komae"}
    again.close()


def test_a_pin_must_name_a_service_using_the_apikey(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "iota.db")
    registry.add_groups(KOMAE, [{"apikey": "狛江-雨量"}])
    registry.close()
    result = CliRunner().invoke(
        app(),
        [
            "iot",
            "mosquitto-acl",
            "--iota-db",
            str(tmp_path / "iota.db"),
            "--password-file",
            str(tmp_path / "passwd"),
            "--acl-file",
            str(tmp_path / "acl"),
            "--pin",
            "狛江-雨量=chofu",
        ],
    )
    assert result.exit_code == 2
    assert not (tmp_path / "passwd").exists()
