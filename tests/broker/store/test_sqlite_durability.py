"""A killed broker loses no acknowledged write, leaves a consistent database and no
writer process behind."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import broker, eventually, free_port, start_broker

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an ended child nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_during_write_burst_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    port = free_port()
    proc = start_broker(db, port)
    base = f"http://127.0.0.1:{port}/ngsi-ld/v1/entities"
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not stop.is_set():
                eid = f"urn:ngsi-ld:Sensor:{worker}-{n}"
                body = {
                    "id": eid,
                    "type": "Sensor",
                    "reading": {"type": "Property", "value": n},
                    "location": {
                        "type": "GeoProperty",
                        "value": {"type": "Point", "coordinates": [139.5, 35.6]},
                    },
                }
                try:
                    r = client.post(base, json=body)
                except httpx.HTTPError:
                    return  # the server died mid-request: this write was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acknowledged.append(eid)
                n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    # kill it mid-burst, once it has acknowledged a good number of writes
    eventually(lambda: len(acknowledged) > 200, timeout=30, what="200 acknowledged writes")
    writers = children(proc.pid)
    assert writers, "the store's writer runs in a process of its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    if proc.stderr is not None:
        proc.stderr.close()
    assert len(acknowledged) > 100, "the burst should have written a good number of entities"
    # it ends with the serving process
    eventually(
        lambda: not any(running(pid) for pid in writers),
        what="the writer process ending with the server",
    )

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    with broker(db) as url, httpx.Client(base_url=url, timeout=10) as client:
        missing = [
            eid
            for eid in acknowledged
            if client.get(f"/ngsi-ld/v1/entities/{eid}").status_code != 200
        ]
        assert missing == []
        body = client.get(f"/ngsi-ld/v1/entities/{acknowledged[-1]}?options=keyValues").json()
        assert body["location"]["type"] == "Point"
        assert isinstance(body["reading"], int)
