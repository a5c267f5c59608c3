"""``/health/live`` and ``/health/ready``: the probes a supervisor or Kubernetes uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker import health
from broker.app import create_app
from tests.conftest import make_settings


def test_live_and_ready_with_the_store_up(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    r = client.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert client.get("/health").status_code == 200  # the summary existing clients use


def test_not_ready_while_the_store_cannot_take_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "READY_TIMEOUT", 0.5)
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/ready").status_code == 200
        # another program holds the write lock on the store's file
        other = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            r = client.get("/health/ready")
            assert r.status_code == 503
            assert r.json()["status"] == "unavailable"
            assert "did not answer within 0.5 s" in r.json()["reason"]
            assert client.get("/health/live").status_code == 200, "alive all the same"
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert client.get("/health/ready").status_code == 200


def test_not_ready_before_start_up(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    client = TestClient(app)  # no lifespan: the store was never opened
    r = client.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["reason"] == "starting or stopping"
    assert client.get("/health/live").status_code == 200
