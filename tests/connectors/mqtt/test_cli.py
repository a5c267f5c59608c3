"""``renkei iot-agent`` options and environment, on a Typer app of its own."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from connectors.mqtt import cli
from connectors.mqtt.settings import AgentSettings


def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def main() -> None:
        """Renkei."""

    cli.register(root)
    return root


def test_options_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[AgentSettings] = []
    monkeypatch.setattr(cli, "run", seen.append)
    for name in ("RENKEI_MQTT_URL", "RENKEI_BROKER_URL", "RENKEI_IOTA_PORT"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    assert runner.invoke(app(), ["iot-agent"]).exit_code == 0
    assert (seen[0].mqtt_url, seen[0].broker_url, seen[0].iota_port) == (
        "mqtt://127.0.0.1:1883",
        "http://127.0.0.1:1026",
        4041,
    )
    monkeypatch.setenv("RENKEI_MQTT_URL", "mqtts://u:p@mqtt.example:8883")
    monkeypatch.setenv("RENKEI_IOTA_PORT", "4100")
    result = runner.invoke(
        app(), ["iot-agent", "--broker-url", "http://hub:1026/", "--port", "4200"]
    )
    assert result.exit_code == 0, result.output
    assert (seen[1].mqtt_url, seen[1].broker_url, seen[1].iota_port) == (
        "mqtts://u:p@mqtt.example:8883",
        "http://hub:1026",
        4200,
    )
    bad = runner.invoke(app(), ["iot-agent", "--mqtt-url", "http://nope"])
    assert bad.exit_code == 2
    result = runner.invoke(app(), ["iot-agent", "--mqtt-version", "mqtt3.1.1"])
    assert result.exit_code == 0, result.output
    assert seen[2].mqtt_version == "mqtt3.1.1"
    assert runner.invoke(app(), ["iot-agent", "--mqtt-version", "mqtt4"]).exit_code == 2
    missing = runner.invoke(app(), ["iot-agent", "--mqtt-ca-file", "/nonexistent/ca.pem"])
    assert missing.exit_code == 2
    assert "mqtt_ca_file" in missing.output
    assert "--mqtt-url" in runner.invoke(app(), ["iot-agent", "--help"]).output
