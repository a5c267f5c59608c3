"""Killing the store's writer process during a write burst, again and again: no
request hangs, every acknowledged write is kept, a write that failed with 503 was
not stored (its retry is created, never 409), exactly one replacement starts each
time and ``/health`` says why writes wait until it is open."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, start_broker

pytestmark = pytest.mark.slow

KILLS = 20
CLIENTS = 8
#: the longest any request may take, kills included
HANG = 10.0
#: from a kill to the replacement writer taking writes (``/health`` 200 again)
RECOVERY = 5.0


def writer_children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``: the store's writer."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    live = []
    for child in found:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(child)
    return live


class Burst:
    """Clients creating entities as fast as the hub takes them. A create that fails
    with 503 is sent again until it is created: a 409 then would mean a write that
    committed had been reported as failed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.problems: list[str] = []
        self.slowest = 0.0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(w,)) for w in range(CLIENTS)]

    def run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base, timeout=HANG) as client:
            n = 0
            while not self.stop.is_set():
                eid = f"urn:ngsi-ld:Shelter:kill-{worker}-{n}"
                body = {
                    "id": eid,
                    "type": "Shelter",
                    "name": {"type": "Property", "value": f"避難所{worker}-{n}"},
                    "capacity": {"type": "Property", "value": n},
                    "location": {
                        "type": "GeoProperty",
                        "value": {"type": "Point", "coordinates": [139.69, 35.69]},
                    },
                }
                for _attempt in range(50):
                    started = time.monotonic()
                    try:
                        r = client.post("/ngsi-ld/v1/entities", json=body)
                    except httpx.HTTPError as exc:
                        with self.cond:
                            self.problems.append(
                                f"{eid}: {exc!r} after {time.monotonic() - started:.1f}s"
                            )
                        return
                    took = time.monotonic() - started
                    with self.cond:
                        self.slowest = max(self.slowest, took)
                        self.statuses[r.status_code] += 1
                        if r.status_code == 201:
                            self.acknowledged.append(eid)
                            self.cond.notify_all()
                            break
                        if r.status_code != 503:
                            self.problems.append(f"{eid}: {r.status_code} {r.text}")
                            return
                        if "Retry-After" not in r.headers or "writer" not in r.json()["detail"]:
                            self.problems.append(f"{eid}: 503 without retry advice: {r.text}")
                            return
                else:
                    with self.cond:
                        self.problems.append(f"{eid}: still 503 after 50 attempts")
                    return
                n += 1

    def wait_for(self, count: int, within: float) -> None:
        """Wait until ``count`` writes have been acknowledged."""
        deadline = time.monotonic() + within
        with self.cond:
            while len(self.acknowledged) < count and not self.problems:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.acknowledged)} of {count} writes acknowledged"
                self.cond.wait(left)
            assert not self.problems, self.problems


def drain(stream: object, lines: list[str]) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        lines.append(raw.decode(errors="replace"))


def test_killing_the_writer_during_a_burst_freezes_nothing_and_loses_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hub.db"
    port = free_port()
    proc = start_broker(db, port)
    log: list[str] = []
    assert proc.stderr is not None
    logger = threading.Thread(target=drain, args=(proc.stderr, log), daemon=True)
    logger.start()
    base = f"http://127.0.0.1:{port}"
    burst = Burst(base)
    unavailable_seen: list[str] = []
    try:
        for t in burst.threads:
            t.start()
        with httpx.Client(base_url=base, timeout=HANG) as health:
            for kill in range(KILLS):
                burst.wait_for(len(burst.acknowledged) + 30, within=HANG)
                (writer,) = writer_children(proc.pid)
                os.kill(writer, signal.SIGKILL)
                killed = time.monotonic()
                while True:  # /health says why until a new writer takes writes
                    children = writer_children(proc.pid)
                    r = health.get("/health")
                    if r.status_code == 200 and children and children != [writer]:
                        break
                    if r.status_code != 200:
                        assert r.status_code == 503, r.text
                        unavailable_seen.append(r.json()["reason"])
                    assert time.monotonic() - killed < RECOVERY, f"kill {kill}: {children} {r.text}"
                    time.sleep(0.02)  # polling interval, bounded by the deadline above
                assert len(children) == 1, f"kill {kill}: writer processes {children}"
            burst.wait_for(len(burst.acknowledged) + 30, within=HANG)  # writes resumed
    finally:
        burst.stop.set()
        for t in burst.threads:
            t.join()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logger.join(10)
        proc.stderr.close()

    assert burst.problems == []
    assert burst.slowest < HANG
    assert unavailable_seen, "/health never reported the writer being replaced"
    assert all("writer process" in reason for reason in unavailable_seen)
    assert set(burst.statuses) <= {201, 503}
    text = "".join(log)
    assert text.count("was replaced") == KILLS, text[-4000:]
    for symptom in ("Traceback", "zip()", "pop from an empty", "NoneType"):
        assert symptom not in text, text[-4000:]

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM entities")}
    missing = [eid for eid in burst.acknowledged if eid not in stored]
    assert missing == []
    assert len(burst.acknowledged) >= 30 * (KILLS + 1)
