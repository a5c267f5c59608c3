"""``GET /version``, ``GET /v2``, registrations (not offered: 501) and v2's answers for
unknown paths (404) and methods (405), all in v2's error shape.

``/version`` is the one route clients of both FIWARE brokers probe: Orion's shape (an
``orion`` object, which FiLiP's v2 client reads) and Orion-LD's (``orionld version`` at
the top level, which ngsildclient reads to recognise the broker), in one body."""

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
#: The Orion-LD release whose NGSI-LD behaviour clients may expect (ngsildclient reads it).
ORIONLD_COMPAT = "1.6.0"
#: The NGSI-LD specification this hub implements.
NGSI_LD_VERSION = "1.8.1"
_STARTED = time.monotonic()


def uptime() -> str:
    """Time since the process started, in Orion's form: ``0 d, 1 h, 2 m, 3 s``."""
    seconds = int(time.monotonic() - _STARTED)
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    d, h = divmod(hours, 24)
    return f"{d} d, {h} h, {m} m, {s} s"


def _version() -> str:
    try:
        return version("renkei")
    except PackageNotFoundError:
        return "0.0.0"


@router.get("/version", summary="Broker version, in Orion's shape")
async def get_version() -> Response:
    """One answer for both kinds of client: NGSI v2 clients (FiLiP, ngsi-go, IoT agents)
    read ``orion.version``; NGSI-LD clients (ngsildclient) recognise the broker from
    ``orionld version``; both find the NGSI-LD version under ``renkei``."""
    up = uptime()
    body: dict[str, Any] = {
        "orionld version": ORIONLD_COMPAT,
        "orion version": ORION_COMPAT,
        "uptime": up,
        "doc": "/docs",
        "orion": {
            "version": ORION_COMPAT,
            "uptime": up,
            "git_hash": "",
            "compile_time": "",
            "compiled_by": "",
            "compiled_in": "",
            "release_date": "",
            "machine": "",
            "doc": "https://fiware-orion.rtfd.io/",
            "libversions": {},
        },
        "renkei": {"version": _version(), "ngsi-ld": NGSI_LD_VERSION},
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
    "NGSI v2 registrations (/v2/registrations) are not offered: register context sources "
    "through NGSI-LD (/ngsi-ld/v1/csourceRegistrations). Subscriptions (/v2/subscriptions) "
    "are offered."
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
