"""Consistent copies of a SQLite store: ``renkei backup``/``restore`` and the copy taken
before a schema migration.

A copy is made with SQLite's online backup API (``sqlite3.Connection.backup``) in one
step, inside one read transaction: it is the store as of one commit, and in WAL mode
writers go on committing while it runs (readers never block the writer). Every write
acknowledged before the copy started is in it (a write is acknowledged after COMMIT).
The copy is written next to its destination, checked with ``PRAGMA integrity_check``
and renamed into place, so a destination never holds half a copy.

Restoring copies the other way, through a connection to the store, after checking the
copy's integrity and schema version. It refuses while another process has the store
open (a server running on it): SQLite cannot leave WAL mode while another connection
holds the file, and that is the probe.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from broker.store import sqlschema


class BackupError(Exception):
    """A backup or restore that cannot be done; the message is for the operator
    (Japanese and English)."""


def _readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise BackupError(f"ファイルがありません / no such file: {path}")
    return sqlschema.connect_readonly(path)


def integrity(conn: sqlite3.Connection) -> str | None:
    """None when ``PRAGMA integrity_check`` passes, else its first complaint."""
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def copy_to(source: sqlite3.Connection, out: Path) -> None:
    """Copy the database ``source`` is connected to into the file ``out`` (replaced
    atomically), as one self-contained file (rollback journal, no WAL), checked."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        dest = sqlite3.connect(partial, isolation_level=None)
        try:
            source.backup(dest)  # one step: one read transaction, one commit's state
            dest.execute("PRAGMA journal_mode=DELETE")
            problem = integrity(dest)
        finally:
            dest.close()
        if problem is not None:
            raise BackupError(f"コピーの検査に失敗しました / the copy failed its check: {problem}")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def backup(store: Path, out: Path) -> None:
    """``renkei backup`` of a SQLite store, which may be serving writes meanwhile."""
    if out.resolve() == store.resolve():
        raise BackupError("出力先が保存先と同じです / the output is the store itself")
    source = _readonly(store)
    try:
        copy_to(source, out)
    finally:
        source.close()


def check_copy(copy: Path) -> int:
    """The schema version of a backup file after checking it can be restored here."""
    conn = _readonly(copy)
    try:
        try:
            problem = integrity(conn)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            has_entities = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='entities'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise BackupError(
                f"Renkei のバックアップではありません / not a Renkei backup: {copy}: {exc}"
            ) from exc
    finally:
        conn.close()
    if problem is not None:
        raise BackupError(
            f"バックアップが壊れています / the backup fails its integrity check: {problem}"
        )
    if not has_entities:
        raise BackupError(f"Renkei のバックアップではありません / not a Renkei backup: {copy}")
    if version > sqlschema.CURRENT:
        raise BackupError(sqlschema.too_new_message(str(copy), version))
    return version


def restore(store: Path, copy: Path, *, force: bool = False) -> None:
    """``renkei restore``: put the backup ``copy`` in place of ``store``.

    Refuses to replace an existing store without ``force``, and always while another
    process (a running server) has it open. An older copy is migrated forward by the
    next server that opens it, as any older store is."""
    check_copy(copy)
    if store.exists() and not force:
        raise BackupError(
            f"保存先 {store} は既にあります。置き換えるには --force を付けてください / "
            f"{store} exists: add --force to replace it"
        )
    store.parent.mkdir(parents=True, exist_ok=True)
    target = sqlite3.connect(store, isolation_level=None, timeout=0)
    try:
        try:
            # Leaving WAL mode needs the file to itself: it fails while a server holds it.
            target.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.OperationalError as exc:
            raise BackupError(
                f"保存先 {store} は使用中です。サーバーを止めてから復元してください / "
                f"{store} is in use: stop the server before restoring ({exc})"
            ) from exc
        source = _readonly(copy)
        try:
            source.backup(target)
        finally:
            source.close()
        problem = integrity(target)
        if problem is not None:
            raise BackupError(f"復元後の検査に失敗しました / the restored store fails: {problem}")
    finally:
        target.close()
