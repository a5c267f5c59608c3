"""Health endpoints for process supervisors and Kubernetes probes.

* ``GET /health/live``: 200 while the process serves HTTP at all. A liveness probe
  restarts the container when this stops answering; it checks nothing else, so a
  store that is down (which a restart does not mend) never causes restart loops.
* ``GET /health/ready``: 200 when the broker can take writes: the store is open and
  a write transaction can be begun and committed (with SQLite, through the writer
  process, which this starts again if it died), within ``READY_TIMEOUT`` seconds.
  Otherwise 503 and the reason, and a readiness probe takes the replica out of its
  Service until it answers 200 again.
* ``GET /health`` (``broker.app``): the summary kept for existing clients.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import NgsiLdError
from broker.store import sqlschema

if TYPE_CHECKING:
    from broker.api.deps import Hub

#: seconds the readiness check waits for the store
READY_TIMEOUT = 2.0


async def not_ready(hub: Hub | None, ready: bool) -> str | None:
    """Why the broker cannot take writes now, or None when it can."""
    if hub is None or not ready:
        return "starting or stopping"
    from broker.store.mongodb import MongoStore
    from broker.store.sqlite import SqliteStore

    store = hub.entities.store
    reason = getattr(store, "unavailable", None)
    if reason:
        return str(reason)
    try:
        if isinstance(store, SqliteStore):
            # a transaction of its own on the writer: BEGIN IMMEDIATE takes the write lock
            await asyncio.wait_for(store._exec_write(sqlschema.version), READY_TIMEOUT)
        elif isinstance(store, MongoStore):
            await asyncio.wait_for(store.db.command("ping"), READY_TIMEOUT)
    except TimeoutError:
        return f"the store did not answer within {READY_TIMEOUT:g} s"
    except NgsiLdError as exc:
        return f"the store cannot take writes: {exc.detail}"
    except Exception as exc:
        return f"the store cannot take writes: {type(exc).__name__}"
    return None


def _json(body: dict[str, str], status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def install(app: FastAPI) -> None:
    @app.get("/health/live", include_in_schema=False)
    async def live() -> Response:
        return _json({"status": "ok"}, 200)

    @app.get("/health/ready", include_in_schema=False)
    async def ready(request: Request) -> Response:
        state = request.app.state
        reason = await not_ready(getattr(state, "hub", None), bool(state.ready))
        if reason is not None:
            return _json({"status": "unavailable", "reason": reason}, 503)
        return _json({"status": "ok"}, 200)
