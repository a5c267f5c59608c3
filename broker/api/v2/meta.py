"""``GET /version``, ``GET /v2``, registrations (not offered: 501) and v2's answers for
unknown paths (404) and methods (405), all in v2's error shape."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from broker.api.v2.common import MethodNotAllowed, V2Route, ok
from broker.errors import NotImplementedYet, ResourceNotFound

router = APIRouter(route_class=V2Route, tags=["NGSI v2"])

#: The Orion release whose v2 behaviour this API follows (clients probe it).
ORION_COMPAT = "4.1.0"


def _version() -> str:
    try:
        return version("renkei")
    except PackageNotFoundError:
        return "0.0.0"


_STARTED = time.monotonic()


def _uptime() -> str:
    """Seconds since the process started, as Orion prints them (``0 d, 1 h, 2 m, 3 s``)."""
    seconds = int(time.monotonic() - _STARTED)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days} d, {hours} h, {minutes} m, {secs} s"


@router.get("/version", summary="Broker version, in Orion's shape")
async def get_version() -> Response:
    """One answer for both kinds of client: NGSI v2 clients (FiLiP, ngsi-go, IoT agents)
    read ``orion.version``; NGSI-LD clients find the NGSI-LD version under ``renkei``."""
    body: dict[str, Any] = {
        "orion": {
            "version": ORION_COMPAT,
            "uptime": _uptime(),
            "git_hash": "",
            "compile_time": "",
            "compiled_by": "",
            "compiled_in": "",
            "release_date": "",
            "machine": "",
            "doc": "https://fiware-orion.rtfd.io/",
            "libversions": {},
        },
        "renkei": {"version": _version(), "ngsi-ld": "1.8.1"},
    }
    return ok(body)


@router.get("/v2", summary="API entry point")
async def entry_point() -> Response:
    return ok(
        {
            "entities_url": "/v2/entities",
            "types_url": "/v2/types",
            "subscriptions_url": "/v2/subscriptions",
            "registrations_url": "/v2/registrations",
        }
    )


REGISTRATIONS = (
    "NGSI v2 registrations (/v2/registrations) are not offered: context source "
    "registrations come with federation. Subscriptions (/v2/subscriptions) are offered."
)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@router.api_route("/v2/registrations", methods=_METHODS, include_in_schema=False)
@router.api_route("/v2/registrations/{rest:path}", methods=_METHODS, include_in_schema=False)
async def registrations() -> Response:
    raise NotImplementedYet(REGISTRATIONS)


@router.api_route("/v2/{rest:path}", methods=_METHODS, include_in_schema=False)
async def unknown(request: Request) -> Response:
    """No v2 route matched: 405 when the path exists with other methods, else 404."""
    from broker.api.v2 import batch, entities, subscriptions, types

    allowed: set[str] = set()
    for route in [
        *entities.router.routes,
        *types.router.routes,
        *batch.router.routes,
        *subscriptions.router.routes,
    ]:
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL:
            allowed |= set(getattr(route, "methods", set()) or set())
    if allowed:
        exc = MethodNotAllowed(f"method {request.method} not allowed on {request.url.path}")
        exc.headers["Allow"] = ", ".join(sorted(allowed))
        raise exc
    raise ResourceNotFound(f"no such resource: {request.url.path}")
