"""The SQLite store's schema version (``PRAGMA user_version``) and its forward migrations.

Every store this release writes carries ``CURRENT`` in the database header. When the
writer opens a store (``sqlwriter.Writer``), :func:`upgrade` runs first:

* a new (empty) file is stamped with ``CURRENT``;
* an older store is brought forward one step at a time, each step in a transaction of
  its own together with the new version number, so a crash leaves it at a step
  boundary. When a pending step rewrites stored data, a copy of the store is taken
  first, next to it (``renkei.db.v1-backup-<time>.db``): an upgrade never loses a
  store to a bug in a migration;
* a store written by a newer release is refused with a message saying so: a newer
  layout read with older code could be misread and then overwritten.

Stores written before versioning (release 0.1.0) have version 0; their layout is
version 1's, so that step only stamps the number.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.errors import InternalError

log = logging.getLogger("renkei.store")


@dataclass(frozen=True, slots=True)
class Step:
    """One migration: brings a store from ``version - 1`` to ``version``."""

    version: int
    what: str
    run: Callable[[sqlite3.Connection], None]
    #: whether it changes stored rows (a copy of the store is taken before it runs)
    rewrites: bool


def _layout_of_0_1_0(conn: sqlite3.Connection) -> None:
    """Release 0.1.0 wrote version 1's layout without a number: nothing to change."""


def _delivery_details(conn: sqlite3.Connection) -> None:
    """Subscriptions keep the HTTP status of the last success, the reason of the last
    failure and the run of consecutive failures (NGSI v2 shows them)."""
    conn.execute("ALTER TABLE subscriptions ADD COLUMN last_success_code INTEGER")
    conn.execute("ALTER TABLE subscriptions ADD COLUMN last_failure_reason TEXT")
    conn.execute("ALTER TABLE subscriptions ADD COLUMN fails_counter INTEGER NOT NULL DEFAULT 0")


def _registration_delivery(conn: sqlite3.Connection) -> None:
    """Registration subscriptions keep their delivery counts in the store, as entity
    subscriptions do. A store written before registrations existed gets the table, with
    these columns, from the schema script that runs after the migrations."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='registrations'"
    ).fetchone()
    if exists is None:
        return
    conn.execute("ALTER TABLE registrations ADD COLUMN times_sent INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE registrations ADD COLUMN times_failed INTEGER NOT NULL DEFAULT 0")
    for column in ("last_notification", "last_success", "last_failure"):
        conn.execute(f"ALTER TABLE registrations ADD COLUMN {column} TEXT")


def _compact_history(conn: sqlite3.Connection) -> None:
    """History instances move to a table clustered by (series, time, number), with
    integer time distances and daily rollups (``sqlhistory``), where new instances
    take about a quarter of the space of version 2's row, index entry and hourly
    rollup. Instance numbers, and so the instanceIds of stored instances, are kept;
    stored instances keep their JSON (only new ones are encoded more tightly)."""
    from broker.store import sqlhistory

    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='history'"
    ).fetchone()
    if found is None:  # no history yet: the writer creates the tables
        return
    conn.execute(sqlhistory.history_table("history_v3"))
    # in key order, so that the new table's pages are filled one after the other
    conn.execute(
        "INSERT INTO history_v3(sid, at, hid, deleted, ds, nv, sc, cd, md, vkey, iid, doc) "
        "SELECT sid, at, hid, deleted, ds, num, NULL, created - at, "
        "nullif(modified - created, 0), vkey, iid, doc FROM history ORDER BY sid, at, hid"
    )
    top = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name='history'), 0), "
        "coalesce((SELECT max(hid) FROM history), 0))"
    ).fetchone()[0]
    conn.execute("DROP TABLE history")
    conn.execute("DROP TABLE IF EXISTS history_hourly")
    conn.execute("DELETE FROM sqlite_sequence WHERE name='history'")
    conn.execute("ALTER TABLE history_v3 RENAME TO history")
    for statement in sqlhistory.STATEMENTS:
        conn.execute(statement)
    conn.execute("INSERT INTO history_counter(one, hid) VALUES (1, ?)", (top,))
    conn.execute(
        "INSERT INTO history_daily(sid, day, total, n, s, lo, hi, sq) "
        "SELECT sid, at / ?, count(*), count(num), sum(num), min(num), max(num), "
        "sum(num * num) FROM history WHERE deleted IS NULL GROUP BY 1, 2",
        (sqlhistory.DAY,),
    )


STEPS: tuple[Step, ...] = (
    Step(1, "number the layout of release 0.1.0", _layout_of_0_1_0, rewrites=False),
    Step(2, "delivery details of subscriptions", _delivery_details, rewrites=False),
    Step(
        3,
        "delivery counts of registration subscriptions",
        _registration_delivery,
        rewrites=False,
    ),
    Step(4, "compact history instances, daily rollups", _compact_history, rewrites=True),
)
CURRENT = STEPS[-1].version


class StoreVersionError(InternalError):
    """The store was written by a newer release, or cannot be migrated."""


def too_new_message(path: str, found: int, current: int = CURRENT) -> str:
    return (
        f"保存先 {path} はより新しい Renkei で書かれています (スキーマ版 {found}、この版が"
        f"扱えるのは {current} まで)。新しい版で起動するか、更新前のバックアップを"
        f"復元してください / the store {path} was written by a newer Renkei (schema "
        f"version {found}; this release reads up to {current}): run the newer release, "
        f"or restore a backup taken before the upgrade"
    )


def version(conn: sqlite3.Connection) -> int:
    found: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return found


def _is_new(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' LIMIT 1").fetchone()
    return row is None


def backup_path(path: str, found: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(f"{path}.v{found}-backup-{stamp}.db")


def upgrade(conn: sqlite3.Connection, path: str, steps: Sequence[Step] = STEPS) -> Path | None:
    """Check and bring forward the schema version of the store ``conn`` (a write
    connection, outside a transaction) is open on; returns the copy taken, if any.
    Raises StoreVersionError for a store newer than ``steps`` know."""
    current = steps[-1].version
    found = version(conn)
    if found == current:
        return None
    if found > current:
        raise StoreVersionError(too_new_message(path, found, current))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _is_new(conn):
            conn.execute(f"PRAGMA user_version={current}")
            conn.execute("COMMIT")
            return None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    pending = [s for s in steps if s.version > found]
    copy = None
    if any(s.rewrites for s in pending) and path != ":memory:":
        from broker.store import sqlbackup

        copy = backup_path(path, found)
        try:
            sqlbackup.copy_to(conn, copy)
        except (OSError, sqlite3.Error, sqlbackup.BackupError) as exc:
            raise StoreVersionError(
                f"更新前のバックアップ {copy} を作れないため、保存先を更新しません / "
                f"not migrating {path}: the backup {copy} could not be written ({exc})"
            ) from exc
        log.info("store %s: copy taken before migrating it: %s", path, copy)
    for step in pending:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version(conn) < step.version:  # another process may have run it meanwhile
                step.run(conn)
                conn.execute(f"PRAGMA user_version={step.version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        log.info("store %s: schema version %d (%s)", path, step.version, step.what)
    return copy


def refusal(path: str) -> str | None:
    """Before serving: the message refusing the store file at ``path`` when a newer
    release wrote it, else None (also when there is no file yet). Reads the header only."""
    if not Path(path).is_file():
        return None
    try:
        conn = connect_readonly(Path(path))
    except sqlite3.Error:
        return None  # the writer reports what is wrong with the file
    try:
        found = version(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return too_new_message(path, found) if found > CURRENT else None


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to the file at ``path``."""
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
