"""``renkei publish`` as a user runs it: options, definition errors, dry run without CKAN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from opendata.cli import parse_interval
from tests.support import broker

EXAMPLES = Path(__file__).resolve().parents[2] / "opendata" / "examples"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_CKAN")}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "publish", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("hub") / "broker.db") as url:
        entities: list[dict[str, Any]] = [
            {
                "id": "urn:ngsi-ld:EvacuationSite:132195-0001",
                "type": "EvacuationSite",
                "name": {"type": "Property", "value": "㈱狛江①号館"},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [139.5785, 35.6348]},
                },
            }
        ]
        r = httpx.post(
            f"{url}/ngsi-ld/v1/entityOperations/upsert",
            json=entities,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text
        yield url


def test_parse_interval() -> None:
    assert parse_interval("15m") == 900
    assert parse_interval("30s") == 30
    assert parse_interval("1h") == 3600
    assert parse_interval("45") == 45
    with pytest.raises(ValueError, match="not an interval"):
        parse_interval("soon")


def test_definition_errors_exit_2_with_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"name": "公共施設一覧", "title": "公共施設一覧"}, allow_unicode=True)
    )
    proc = run("--definitions", str(tmp_path), "--dry-run")
    assert proc.returncode == 2
    assert f"{tmp_path / 'bad.yaml'}: name: " in proc.stderr
    assert f"{tmp_path / 'bad.yaml'}: query: " in proc.stderr


def test_unknown_dataset_is_refused() -> None:
    proc = run("--definitions", str(EXAMPLES), "--dataset", "nope", "--dry-run")
    assert proc.returncode == 2
    assert "komae-evacuation-sites" in proc.stderr


def test_publishing_needs_a_catalogue_and_a_token(tmp_path: Path) -> None:
    proc = run("--definitions", str(EXAMPLES))
    assert proc.returncode == 2
    assert "--ckan-url" in proc.stderr
    proc = run("--definitions", str(EXAMPLES), "--ckan-url", "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert "RENKEI_CKAN_TOKEN" in proc.stderr


def test_dry_run_without_ckan_renders_and_reports_replacements(hub: str) -> None:
    proc = run(
        "--definitions", str(EXAMPLES), "--dataset", "komae-evacuation-sites", "--dry-run",
        "--broker-url", hub,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "komae-evacuation-sites: " in out
    assert "(1 entities)" in out
    assert "standard-evacuation-sites:" in out
    assert "replaced ㈱ with (株) (1x)" in out
    assert "replaced ① with 1" in out
    assert "tag '子育て・教育' published as '子育て 教育'" in out


def test_unreachable_catalogue_fails_every_dataset_with_exit_1(hub: str) -> None:
    proc = run(
        "--definitions", str(EXAMPLES), "--broker-url", hub,
        "--ckan-url", "http://127.0.0.1:9", "--retries", "0",
        RENKEI_CKAN_TOKEN="not-shown-anywhere",
    )  # fmt: skip
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "komae-evacuation-sites: 失敗 / failed" in out
    assert "komae-air-quality: 失敗 / failed" in out
    assert "not-shown-anywhere" not in out


def test_on_change_watch_republishes_on_notification_and_cleans_up(hub: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_CKAN")}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "broker.cli", "publish", "--definitions", str(EXAMPLES),
            "--dataset", "komae-evacuation-sites", "--dry-run", "--broker-url", hub,
            "--on-change", "--every", "1h",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**base, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    watchdog = threading.Timer(90, proc.kill)  # a hung watch ends the test, not the run
    watchdog.start()

    def read_until(text: str) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return
        raise AssertionError("".join(lines))

    try:
        read_until("komae-evacuation-sites: ")
        subs = httpx.get(f"{hub}/ngsi-ld/v1/subscriptions").json()
        assert [s["description"] for s in subs] == ["renkei publish: komae-evacuation-sites"]
        r = httpx.post(
            f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:EvacuationSite:132195-0001/attrs",
            json={"capacity": {"type": "Property", "value": 321}},
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 204, r.text
        read_until("komae-evacuation-sites: ")  # the second report came long before 1h
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        proc.stdout.close()
        watchdog.cancel()
    assert proc.returncode == 0
    assert httpx.get(f"{hub}/ngsi-ld/v1/subscriptions").json() == []
