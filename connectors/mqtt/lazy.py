"""The values of lazy attributes the devices reported, which the agent serves to the
broker's reads (``connectors.mqtt.source``) instead of writing them to it.

They are kept in memory for the reads and written through to the agent's own SQLite
file (``RENKEI_IOTA_DB``, beside the provisioned devices), so a restarted agent answers
with the last values its devices reported before, not with nothing. The file is written
with ``synchronous=NORMAL``: a value survives the agent's process being killed, and at
worst the last values before a power cut are lost (the agent then serves the ones
before them). A value that cannot be written is still served, and logged.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("renkei.iota")

Key = tuple[str | None, str]  # (tenant, entity id)


class LazyValues:
    """The last value each entity's device reported of each of its lazy attributes."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS lazy_values (service TEXT NOT NULL,"
            " entity_id TEXT NOT NULL, name TEXT NOT NULL, observed REAL NOT NULL,"
            " attr TEXT NOT NULL, PRIMARY KEY (service, entity_id, name))"
        )
        self._lock = threading.Lock()
        self._values: dict[Key, dict[str, tuple[float, dict[str, Any]]]] = {}
        for service, eid, name, observed, attr in self._db.execute(
            "SELECT service, entity_id, name, observed, attr FROM lazy_values"
        ):
            key = (str(service) or None, str(eid))
            self._values.setdefault(key, {})[str(name)] = (float(observed), orjson.loads(attr))

    def close(self) -> None:
        self._db.close()

    def put(
        self,
        tenant: str | None,
        entity_id: str,
        values: Iterable[tuple[str, float, dict[str, Any]]],
    ) -> None:
        """Keep each ``(name, observed, attribute)`` unless a value observed later is
        kept already; the kept ones are written to the file in one transaction."""
        held = self._values.setdefault((tenant, entity_id), {})
        rows = []
        for name, observed, attr in values:
            old = held.get(name)
            if old is None or observed >= old[0]:
                held[name] = (observed, attr)
                rows.append((tenant or "", entity_id, name, observed, orjson.dumps(attr).decode()))
        if rows:
            self._write("INSERT OR REPLACE INTO lazy_values VALUES (?, ?, ?, ?, ?)", rows, "keep")

    def of(self, tenant: str | None, entity_id: str) -> dict[str, dict[str, Any]]:
        return {n: a for n, (_, a) in self._values.get((tenant, entity_id), {}).items()}

    def retain(self, keys: set[Key]) -> None:
        """Forget the values of entities no device has any more (in the file too)."""
        gone = [k for k in self._values if k not in keys]
        for key in gone:
            del self._values[key]
        if gone:
            rows = [(tenant or "", eid) for tenant, eid in gone]
            self._write(
                "DELETE FROM lazy_values WHERE service = ? AND entity_id = ?", rows, "forget"
            )

    def _write(self, sql: str, rows: list[tuple[Any, ...]], what: str) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(sql, rows)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("cannot %s lazy attribute values in %s: %s", what, self.path, exc)
