"""Schema versions of the SQLite store: a store of release 0.1.0 opens and is migrated,
a migration that rewrites data takes a copy first, a newer store is refused."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.errors import InternalError
from broker.model.store import NotificationRecord
from broker.settings import get_settings
from broker.store import sqlschema
from broker.store.sqlite import SqliteStore
from broker.store.sqlschema import Step, StoreVersionError
from tests.support import free_port, start_broker

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).parent / "fixtures" / "renkei-0.1.0.db"
HISTORY_V2 = Path(__file__).parent / "fixtures" / "history-v2.db"
HISTORY_V2_ANSWERS = Path(__file__).parent / "fixtures" / "history-v2.json"
T = "/ngsi-ld/v1/temporal/entities"
AIR = "urn:ngsi-ld:AirQualityObserved:狛江-1"
AIR2 = "urn:ngsi-ld:AirQualityObserved:狛江-2"
JSON = {"Content-Type": "application/json"}
NGSI = "https://uri.etsi.org/ngsi-ld/default-context/"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A copy of the store release 0.1.0 wrote (fixtures/make_fixture.py)."""
    db = tmp_path / "renkei.db"
    shutil.copyfile(FIXTURE, db)
    return db


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return sqlschema.version(conn)


def content(db: Path) -> bytes:
    return db.read_bytes()


def backups(db: Path) -> list[Path]:
    return sorted(db.parent.glob(db.name + ".v*-backup-*.db"))


async def test_a_store_of_release_0_1_0_opens_numbered_with_its_data(old_store: Path) -> None:
    assert user_version(old_store) == 0
    store = SqliteStore(old_store)
    await store.open()
    try:
        ent = await store.get_entity("komae", "urn:ngsi-ld:WaterLevelObserved:komae-0")
        assert ent is not None
        assert ent[NGSI + "name"][0]["value"] == "多摩川水位計"
        assert ent[NGSI + "waterLevel"][0]["value"] == 1.5
        assert await store.get_subscription("komae", "urn:ngsi-ld:Subscription:suii") is not None
        assert set(await store.tenants()) >= {"komae"}
        # and it is written to as any store
        level = {NGSI + "waterLevel": [{"type": "Property", "value": 0.9}]}
        results = await store.write(
            "komae",
            [("urn:ngsi-ld:WaterLevelObserved:komae-1", lambda cur: {**(cur or {}), **level})],
        )
        assert results[0].error is None
        ent = await store.get_entity("komae", "urn:ngsi-ld:WaterLevelObserved:komae-1")
        assert ent is not None
        assert ent[NGSI + "waterLevel"][0]["value"] == 0.9
    finally:
        await store.close()
    assert user_version(old_store) == sqlschema.CURRENT
    # its history moved to the compact layout of version 4: rows rewritten, a copy first
    assert len(backups(old_store)) == 1


async def test_a_new_store_carries_the_current_version(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "新しい.db", writer="thread")
    await store.open()
    await store.close()
    assert user_version(tmp_path / "新しい.db") == sqlschema.CURRENT


#: The registrations table as schema version 2 had it: no delivery counts.
REGISTRATIONS_V2 = """
CREATE TABLE registrations(
    tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY(tenant, kind, id)
)
"""


async def test_a_version_2_store_with_registrations_gains_their_delivery_counts(
    old_store: Path,
) -> None:
    """Schema version 3 keeps registration subscriptions' delivery counts in the store:
    a version 2 store holding a registration subscription opens, keeps the document,
    and counts deliveries from zero."""
    sub_id = "urn:ngsi-ld:Subscription:都の登録監視"
    doc = {"id": sub_id, "type": "Subscription", "entities": [{"type": "AEDLocation"}]}
    conn = sqlite3.connect(old_store, isolation_level=None)
    try:
        sqlschema.upgrade(conn, str(old_store), sqlschema.STEPS[:2])
        conn.execute(REGISTRATIONS_V2)
        conn.execute(
            "INSERT INTO registrations(tenant, kind, id, seq, doc) VALUES (?, ?, ?, 1, ?)",
            ("komae", "subscription", sub_id, json.dumps(doc, ensure_ascii=False).encode()),
        )
    finally:
        conn.close()
    assert user_version(old_store) == 2
    store = SqliteStore(old_store)
    await store.open()
    try:
        assert await store.get_registration("komae", "subscription", sub_id) == doc
        assert await store.registration_status("komae", sub_id) == {
            "timesSent": 0,
            "timesFailed": 0,
        }
        record = NotificationRecord(
            "komae", sub_id, sent=1, last_notification="2026-12-06T09:00:00Z"
        )
        await store.record_registration_notifications([record])
        status = await store.registration_status("komae", sub_id)
        assert status["timesSent"] == 1
        assert status["lastNotification"] == "2026-12-06T09:00:00Z"
    finally:
        await store.close()
    assert user_version(old_store) == sqlschema.CURRENT


def test_a_store_of_schema_version_2_answers_every_temporal_request_as_before(
    tmp_path: Path,
) -> None:
    """A store written at schema version 2 (one row, an index entry and an hourly rollup
    per instance; ``fixtures/make_history_fixture.py``) is migrated to the compact
    history of version 4 and then answers each recorded temporal request exactly as the
    release that wrote it did: instances and their instanceIds, observedAt,
    createdAt/modifiedAt (sysAttrs), datasetIds, deletions, an edited and a deleted
    instance, aggregations, lastN and the 206 page with its Content-Range."""
    db = tmp_path / "renkei.db"
    shutil.copyfile(HISTORY_V2, db)
    assert user_version(db) == 2
    recorded = orjson.loads(HISTORY_V2_ANSWERS.read_bytes())
    settings = get_settings(store=f"sqlite:///{db}?writer=thread", temporal_max_instances=50)
    with TestClient(create_app(settings)) as c:
        for answer in recorded:
            r = c.get(answer["path"], headers=answer["tenant"] or {})
            assert r.status_code == answer["status"], answer["path"]
            assert r.headers.get("content-range") == answer["content_range"], answer["path"]
            assert r.json() == answer["body"], answer["path"]
        # and history goes on: a new instance gets a number none of the old ones has
        old_ids = {i["instanceId"] for i in c.get(f"{T}/{AIR2}?lastN=50").json()["NO2"]} | {
            i["instanceId"] for i in c.get(f"{T}/{AIR}").json()["NO2"]
        }
        reading = {"type": "Property", "value": 8.5, "observedAt": "2026-12-05T00:00:00Z"}
        r = c.post(f"{T}/{AIR}/attrs", json={"NO2": [reading]}, headers=JSON)
        assert r.status_code == 204, r.text
        got = c.get(f"{T}/{AIR}?lastN=1&attrs=NO2").json()["NO2"]
        assert [i["value"] for i in got] == [8.5]
        assert got[0]["instanceId"] not in old_ids
    assert user_version(db) == sqlschema.CURRENT
    assert len(backups(db)) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _add_reading_unit(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE entities ADD COLUMN unit TEXT")
    conn.execute("UPDATE entities SET unit = '水位 m'")


def _broken(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE entities SET doc = x'00'")
    raise RuntimeError("a migration bug")


def test_a_rewriting_migration_takes_a_copy_first(old_store: Path) -> None:
    nxt = sqlschema.CURRENT + 1
    steps = (*sqlschema.STEPS, Step(nxt, "units beside entities", _add_reading_unit, rewrites=True))
    conn = sqlite3.connect(old_store, isolation_level=None)
    try:
        copy = sqlschema.upgrade(conn, str(old_store), steps)
        assert sqlschema.version(conn) == nxt
        assert conn.execute("SELECT DISTINCT unit FROM entities").fetchall() == [("水位 m",)]
    finally:
        conn.close()
    assert copy is not None
    assert backups(old_store) == [copy]
    with sqlite3.connect(copy) as taken:
        assert taken.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert sqlschema.version(taken) == 0, "the copy is the store as it was"
        columns = [r[1] for r in taken.execute("PRAGMA table_info(entities)")]
        assert "unit" not in columns
        assert taken.execute("SELECT count(*) FROM entities").fetchone() == (3,)


def test_a_failing_migration_leaves_the_store_at_the_last_step(old_store: Path) -> None:
    steps = (*sqlschema.STEPS, Step(sqlschema.CURRENT + 1, "a bug", _broken, rewrites=True))
    conn = sqlite3.connect(old_store, isolation_level=None)
    try:
        with pytest.raises(RuntimeError, match="a migration bug"):
            sqlschema.upgrade(conn, str(old_store), steps)
        assert sqlschema.version(conn) == sqlschema.CURRENT
        docs = [r[0] for r in conn.execute("SELECT doc FROM entities")]
        assert len(docs) == 3
        assert all(doc != b"\x00" for doc in docs)
    finally:
        conn.close()
    assert len(backups(old_store)) == 1


async def test_a_store_of_a_newer_release_is_refused_untouched(old_store: Path) -> None:
    with sqlite3.connect(old_store) as conn:
        conn.execute(f"PRAGMA user_version={sqlschema.CURRENT + 1}")
    before = content(old_store)
    store = SqliteStore(old_store)
    with pytest.raises(StoreVersionError) as refused:
        await store.open()
    with contextlib.suppress(InternalError):  # stops the writer process; it never opened
        await store.close()
    assert isinstance(refused.value, InternalError)
    assert "より新しい Renkei" in refused.value.detail
    assert "written by a newer Renkei" in refused.value.detail
    assert content(old_store) == before


def test_the_server_will_not_start_on_a_newer_store(old_store: Path) -> None:
    with sqlite3.connect(old_store) as conn:
        conn.execute(f"PRAGMA user_version={sqlschema.CURRENT + 5}")
    with pytest.raises(RuntimeError) as failed:
        start_broker(old_store, free_port()).kill()
    assert "より新しい Renkei" in str(failed.value)
    assert f"schema version {sqlschema.CURRENT + 5}" in str(failed.value)
