"""Log lines of the broker: plain text, or one JSON object per line (``RENKEI_LOG_FORMAT=json``)
for log collectors (Fluent Bit, Loki, Cloud Logging).

Each line carries the request it was written for: the request id, the tenant and the
principal, held in context variables that the request middleware (``broker.metrics``)
sets (the principal: the access-control layer, ``logs.principal.set(name)``, once it
knows who asks), and that tasks started while serving a request (notifications) inherit. The
request id is the client's ``X-Request-Id`` when it is short and made of safe
characters, else one made here; it is echoed in the response.

Secrets: code that logs a URI logs ``redact_uri(uri)``; as a second line of defence,
userinfo in any URI of a message is masked here before the line is written.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: the request being served: its id, tenant ("" is the default tenant) and principal
request_id: ContextVar[str | None] = ContextVar("renkei_request_id", default=None)
#: the tenant header as received (checked when a line is written, not per request)
tenant: ContextVar[bytes | None] = ContextVar("renkei_tenant", default=None)
principal: ContextVar[str | None] = ContextVar("renkei_principal", default=None)

MAX_REQUEST_ID = 128
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")

_prefix = secrets.token_hex(6)
_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique within this process and, by a random prefix, across replicas."""
    return f"{_prefix}-{next(_counter)}"


def clean_request_id(raw: bytes | None) -> str:
    """The client's request id when acceptable (1-128 letters, digits, ``-_.:``),
    else a new one: an id is copied into every log line and response, so nothing
    else (newlines, quotes, megabytes) gets through."""
    if raw and len(raw) <= MAX_REQUEST_ID and _SAFE.issuperset(raw):
        return raw.decode("ascii")
    return new_request_id()


def clean_label(raw: bytes | None) -> str | None:
    """A header value fit for a log field (a tenant name), or None."""
    if raw and len(raw) <= MAX_REQUEST_ID and _SAFE.issuperset(raw):
        return raw.decode("ascii")
    return None


def mask_userinfo(text: str) -> str:
    """``text`` with the userinfo of URIs in it (``mqtt://user:secret@host``) masked."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and
    request_id, tenant and principal when the line was written for a request."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_userinfo(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
            raw = tenant.get()
            out["tenant"] = "" if raw is None else clean_label(raw) or "(invalid)"
        who = principal.get()
        if who is not None:
            out["principal"] = who
        if record.exc_info:
            out["exception"] = mask_userinfo(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """The plain format, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = mask_userinfo(super().format(record))
        rid = request_id.get()
        return f"{line} [request {rid}]" if rid is not None else line


def configure(level: str, fmt: str) -> None:
    """Send every log line of the process (uvicorn's too) to stderr in ``fmt``
    ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
