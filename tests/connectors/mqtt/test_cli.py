"""``renkei iot-agent`` options and environment, on a Typer app of its own, and the
start rule of a real agent process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from broker.auth import hash_key
from connectors.mqtt import cli
from connectors.mqtt.settings import AgentSettings
from tests.support import free_port


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


def test_command_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations by default with NGSI-LD; subscriptions with --ngsi v2, where the
    broker forwards nothing; registrations with v2 are refused as a setting."""
    seen: list[AgentSettings] = []
    monkeypatch.setattr(cli, "run", seen.append)
    monkeypatch.delenv("RENKEI_IOTA_COMMAND_MODE", raising=False)
    monkeypatch.delenv("RENKEI_IOTA_NGSI", raising=False)
    runner = CliRunner()
    assert runner.invoke(app(), ["iot-agent"]).exit_code == 0
    assert runner.invoke(app(), ["iot-agent", "--ngsi", "v2"]).exit_code == 0
    monkeypatch.setenv("RENKEI_IOTA_COMMAND_MODE", "subscription")
    assert runner.invoke(app(), ["iot-agent"]).exit_code == 0
    assert [s.command_mode for s in seen] == ["registration", "subscription", "subscription"]
    refused = runner.invoke(app(), ["iot-agent", "--ngsi", "v2", "--command-mode", "registration"])
    assert refused.exit_code == 2
    assert "iota_command_mode=registration needs iota_ngsi=ld" in refused.output
    assert runner.invoke(app(), ["iot-agent", "--command-mode", "both"]).exit_code == 2


def test_access_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[AgentSettings] = []
    monkeypatch.setattr(cli, "run", seen.append)
    for name in ("RENKEI_AUTH_FILE", "RENKEI_BROKER_API_KEY", "RENKEI_BROKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    auth = tmp_path / "auth.yaml"
    args = ["iot-agent", "--auth-file", str(auth), "--broker-api-key", "agent-key-0001"]
    assert runner.invoke(app(), args).exit_code == 0
    assert seen[0].auth_file == auth
    assert seen[0].broker_api_key is not None
    assert seen[0].broker_api_key.get_secret_value() == "agent-key-0001"
    assert "agent-key-0001" not in repr(seen[0])
    monkeypatch.setenv("RENKEI_BROKER_TOKEN", "eyJ.token.x")
    assert runner.invoke(app(), ["iot-agent", "--insecure-no-auth"]).exit_code == 0
    assert seen[1].insecure_no_auth
    assert seen[1].broker_token is not None
    assert seen[1].broker_token.get_secret_value() == "eyJ.token.x"


def agent_process(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RENKEI_AUTH_FILE", "RENKEI_IOTA_HOST")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "iot-agent",
            "--mqtt-url",
            f"mqtt://127.0.0.1:{free_port()}",
            "--broker-url",
            f"http://127.0.0.1:{free_port()}",
            *args,
        ],
        env={**env, "RENKEI_IOTA_DB": str(tmp_path / "iota.db")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def answers(url: str, proc: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def test_the_agent_listens_beyond_loopback_only_with_an_auth_file(tmp_path: Path) -> None:
    port = str(free_port())
    refused = agent_process(tmp_path, "--host", "0.0.0.0", "--port", port)
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 2
    assert "--insecure-no-auth" in err
    assert "認証設定ファイルなしで" in err
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f'api_keys:\n  - {{name: a, key_sha256: "{hash_key("k-0001")}", roles: [], tenants: []}}\n',
        encoding="utf-8",
    )
    proc = agent_process(tmp_path, "--host", "0.0.0.0", "--port", port, "--auth-file", str(auth))
    try:
        assert answers(f"http://127.0.0.1:{port}/iot/about", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/iot/groups").status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "アクセス制御は無効です" not in err
    # on loopback it starts open, and says so once
    loop = agent_process(tmp_path, "--port", port)
    try:
        assert answers(f"http://127.0.0.1:{port}/iot/about", loop)
        assert httpx.get(f"http://127.0.0.1:{port}/iot/groups").status_code == 200
    finally:
        loop.terminate()
        _, err = loop.communicate(timeout=10)
    assert err.count("アクセス制御は無効です") == 1
