"""``renkei backup`` and ``renkei restore`` on SQLite stores, run as an operator runs
them: a backup taken while the broker serves a write burst holds every write
acknowledged before it started, and restores to a store that passes its check."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.burst import WriteBurst
from tests.support import broker

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "renkei-0.1.0.db"


def renkei(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUTF8": "1"},
    )


def stored_ids(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:  # an open connection would hold the file
        return {r[0] for r in conn.execute("SELECT id FROM entities WHERE tenant='komae'")}


def test_a_backup_during_a_write_burst_holds_every_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "renkei.db"
    copy = tmp_path / "バックアップ" / "renkei-backup.db"
    restored = tmp_path / "restored" / "renkei.db"
    with broker(db) as url, WriteBurst(url) as burst:
        burst.wait_for(200)
        before = burst.acked()
        done = renkei("backup", "--store", f"sqlite:///{db}", "--out", str(copy))
        assert done.returncode == 0, done.stderr
        assert "backed up" in done.stdout
        during = len(burst.acked()) - len(before)
        burst.wait_for(len(before) + during + 50)  # the broker kept on writing
        # the server holds the store: restoring over it is refused, even with --force
        busy = renkei("restore", "--store", f"sqlite:///{db}", "--from", str(copy), "--force")
        assert busy.returncode == 1
        assert "使用中" in busy.stderr
        assert "in use" in busy.stderr
    done = renkei("restore", "--store", f"sqlite:///{restored}", "--from", str(copy))
    assert done.returncode == 0, done.stderr
    with closing(sqlite3.connect(restored)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    in_copy = stored_ids(restored)
    assert set(before) <= in_copy
    assert in_copy <= stored_ids(db), "the copy holds only what the store committed"
    # and the restored store serves
    eid = before[-1]
    with broker(restored) as url:
        r = httpx.get(f"{url}/ngsi-ld/v1/entities/{eid}", headers={"NGSILD-Tenant": "komae"})
        assert r.status_code == 200
        assert r.json()["name"]["value"].startswith("多摩川水位計")


def test_restore_will_not_replace_a_store_without_force(tmp_path: Path) -> None:
    source, copy, other = tmp_path / "source.db", tmp_path / "copy.db", tmp_path / "other.db"
    shutil.copyfile(FIXTURE, source)
    shutil.copyfile(FIXTURE, other)
    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("DELETE FROM entities WHERE id LIKE '%komae-1'")
    assert renkei("backup", "--store", f"sqlite:///{source}", "--out", str(copy)).returncode == 0
    kept = stored_ids(other)
    refused = renkei("restore", "--store", f"sqlite:///{other}", "--from", str(copy))
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert stored_ids(other) == kept
    forced = renkei("restore", "--store", f"sqlite:///{other}", "--from", str(copy), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (
        stored_ids(other) == stored_ids(source) == kept - {"urn:ngsi-ld:WaterLevelObserved:komae-1"}
    )


def test_restore_refuses_a_damaged_or_foreign_file(tmp_path: Path) -> None:
    target = tmp_path / "renkei.db"
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    foreign = tmp_path / "foreign.db"
    with closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE 住民(名前 TEXT)")
    for bad in (damaged, foreign, tmp_path / "missing.db"):
        refused = renkei("restore", "--store", f"sqlite:///{target}", "--from", str(bad))
        assert refused.returncode == 1, bad
        assert "/" in refused.stderr
    assert not target.exists()


def test_mongodb_stores_are_pointed_to_mongodump() -> None:
    done = renkei(
        "backup", "--store", "mongodb://admin:s3cret@db.example:27017/renkei", "--out", "x"
    )
    assert done.returncode == 2
    assert "mongodump" in done.stderr
    assert "docs/mongodb.md" in done.stderr
    assert "s3cret" not in done.stderr
