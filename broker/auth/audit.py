"""The audit log (``RENKEI_AUDIT_LOG=path``): one JSON object per line, append-only.

Every accepted write and every refused request (401, 403) is one line::

    {"time": "2026-12-06T04:05:06.789Z", "principal": "komae-iot", "via": "api_key",
     "tenant": "komae", "operation": "batch/upsert", "status": 201,
     "entities": {"count": 2, "ids": ["urn:ngsi-ld:AEDLocation:狛江市役所", "..."]}}

Each line is written with one ``write(2)`` on a descriptor opened with ``O_APPEND``
(under a lock as well), so concurrent writers, threads or processes, never interleave
within a line; it is in the kernel before ``record`` returns, and on disk too when
``fsync`` is on. Lines carry the principal's name, never a key, token or header: the
record function takes no free-form request data but an optional short ``reason``.
``reopen()`` (on SIGHUP, after log rotation) starts writing to a new file at the path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson

from broker.auth.policy import Principal


class AuditLog:
    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def record(
        self,
        *,
        principal: Principal,
        tenant: str,
        operation: str,
        status: int,
        entity_ids: Sequence[str] = (),
        reason: str | None = None,
        client: str | None = None,
    ) -> None:
        """Append one event. ``operation`` names what was asked (``entities/create``,
        ``batch/upsert``, ``subscriptions/create`` ...); ``entity_ids`` the entities it
        concerned; ``reason`` a short refusal reason (``invalid_token``); ``client``
        the peer address."""
        event: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "principal": principal.name,
            "via": principal.via,
            "tenant": tenant,
            "operation": operation,
            "status": status,
        }
        if entity_ids:
            event["entities"] = {"count": len(entity_ids), "ids": list(entity_ids)}
        if reason:
            event["reason"] = reason
        if client:
            event["client"] = client
        line = orjson.dumps(event) + b"\n"
        with self._lock:
            written = os.write(self._fd, line)
            while written < len(line):  # only on a full disk or a signal: finish the line
                written += os.write(self._fd, line[written:])
            if self.fsync:
                os.fsync(self._fd)

    async def arecord(self, **event: Any) -> None:
        """``record`` from async code: in a worker thread when ``fsync`` makes it slow."""
        if self.fsync:
            await anyio.to_thread.run_sync(lambda: self.record(**event))
        else:
            self.record(**event)

    def reopen(self) -> None:
        """Write to the file now at ``path`` (after a rotation moved the old one)."""
        with self._lock:
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def open_audit_log(path: str | Path | None, *, fsync: bool = False) -> AuditLog | None:
    """The audit log at ``path``, or None when no path is configured."""
    return AuditLog(path, fsync=fsync) if path else None
