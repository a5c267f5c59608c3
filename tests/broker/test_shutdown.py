"""SIGTERM, as Kubernetes sends it: ``renkei serve`` finishes what it acknowledged,
loses none of it, and exits within ``RENKEI_SHUTDOWN_TIMEOUT`` even when a client
never finishes its request. Its log lines are JSON with RENKEI_LOG_FORMAT=json."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.burst import WriteBurst
from tests.receiver import Receiver
from tests.support import free_port, wait_http

pytestmark = pytest.mark.slow


@contextmanager
def serving(
    db: Path, log: Path, timeout: float, **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {
        **os.environ,
        "RENKEI_SHUTDOWN_TIMEOUT": str(timeout),
        "RENKEI_LOG_FORMAT": "json",
        "RENKEI_LOG_LEVEL": "info",
        **{f"RENKEI_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker.cli",
                "serve",
                "--store",
                f"sqlite:///{db}",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # a process group of its own, the writer in it
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60, proc=proc)
            yield proc, port
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stopped_within(proc: subprocess.Popen[bytes], bound: float, *, group: bool = False) -> float:
    """Send SIGTERM (to the server, or to its whole process group as systemd does) and
    return the seconds until the server ended (at most ``bound`` + 5)."""
    started = time.monotonic()
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=bound + 5)
    return time.monotonic() - started


def json_lines(log: Path) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"time", "level", "logger", "message"} <= line.keys()
    return lines


def test_sigterm_during_a_write_burst_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db, log = tmp_path / "renkei.db", tmp_path / "broker.log"
    with (
        serving(db, log, timeout=10) as (proc, port),
        WriteBurst(f"http://127.0.0.1:{port}") as burst,
    ):
        burst.wait_for(300)
        took = stopped_within(proc, 10)
    assert took < 10
    assert proc.returncode == 0, "shut down in order (1 would be the watchdog)"
    acknowledged = burst.acked()
    assert len(acknowledged) >= 300
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {r[0] for r in conn.execute("SELECT id FROM entities WHERE tenant='komae'")}
    assert [eid for eid in acknowledged if eid not in stored] == []
    messages = [str(line["message"]) for line in json_lines(log)]
    assert any("shutting down within 10 s" in m for m in messages)
    assert any("Renkei broker ready" in m for m in messages)


def test_notifications_not_delivered_at_sigterm_are_sent_after_the_restart(
    tmp_path: Path,
) -> None:
    """The subscriber's endpoint is down while the broker takes a burst of writes, so
    their notifications are queued or waiting to be tried again when SIGTERM comes: the
    broker hands them to the store, and the broker started next sends every one."""
    db = tmp_path / "renkei.db"
    endpoint_port = free_port()  # nothing listens there yet
    subscription = {
        "type": "Subscription",
        "entities": [{"type": "WaterLevelObserved"}],
        "notification": {"endpoint": {"uri": f"http://127.0.0.1:{endpoint_port}/notify"}},
    }
    with serving(db, tmp_path / "first.log", timeout=10, notification_attempts="100") as (
        proc,
        port,
    ):
        base = f"http://127.0.0.1:{port}"
        created = httpx.post(
            f"{base}/ngsi-ld/v1/subscriptions",
            json=subscription,
            headers={"NGSILD-Tenant": "komae"},
        )
        assert created.status_code == 201, created.text
        with WriteBurst(base) as burst:
            burst.wait_for(200)
            took = stopped_within(proc, 10)
    assert took < 10
    assert proc.returncode == 0
    acknowledged = burst.acked()
    assert len(acknowledged) >= 200
    messages = [str(line["message"]) for line in json_lines(tmp_path / "first.log")]
    assert any("not yet delivered over to the store" in m for m in messages), messages[-5:]

    def notified(received: list[tuple[dict[str, str], Any]]) -> set[str]:
        return {e["id"] for _, body in received for e in body["data"]}

    endpoint = Receiver(port=endpoint_port)  # the endpoint is back
    try:
        with serving(db, tmp_path / "second.log", timeout=10):
            received = endpoint.wait_for(
                lambda r: set(acknowledged) <= notified(r),
                timeout=60,
                what="a notification of every acknowledged write",
            )
    finally:
        endpoint.close()
    assert all(headers["ngsild-tenant"] == "komae" for headers, _ in received)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM notification_outbox").fetchone() == (0,)


def test_sigterm_to_every_process_of_the_service_drains_writes_too(tmp_path: Path) -> None:
    """systemd (KillMode=control-group) and some init processes signal every process of
    a service at once: the store's writer process must not die under the writes the
    server is still finishing."""
    db, log = tmp_path / "renkei.db", tmp_path / "broker.log"
    with (
        serving(db, log, timeout=10) as (proc, port),
        WriteBurst(f"http://127.0.0.1:{port}") as burst,
    ):
        burst.wait_for(300)
        took = stopped_within(proc, 10, group=True)
    assert took < 10
    assert proc.returncode == 0
    assert burst.refused == [], "writes under way when the signal came were all stored"
    with closing(sqlite3.connect(db)) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM entities WHERE tenant='komae'")}
    assert [eid for eid in burst.acked() if eid not in stored] == []
    messages = [str(line["message"]) for line in json_lines(log)]
    assert not any("writer process" in m for m in messages), messages


def test_a_client_that_never_finishes_its_request_does_not_hold_the_exit(tmp_path: Path) -> None:
    db, log = tmp_path / "renkei.db", tmp_path / "broker.log"
    with serving(db, log, timeout=4) as (proc, port):
        stalled = socket.create_connection(("127.0.0.1", port))
        with stalled:
            stalled.sendall(
                b"POST /ngsi-ld/v1/entities HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": '
            )
            took = stopped_within(proc, 4)
    assert took < 4 + 1.0
    assert proc.returncode == 0
    messages = [str(line["message"]) for line in json_lines(log)]
    # requests in flight had 3 of the 4 s, then were cancelled; closing took the rest
    assert any("timeout graceful shutdown exceeded" in m for m in messages)
    assert "Application shutdown complete." in messages
