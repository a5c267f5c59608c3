"""What the v2 routers share: errors in v2's shape, the request's tenant and service
path, body reading and JSON responses.

Errors (``orion-api.md``, "Error Responses") are ``{"error": name, "description": text}``
with Orion's status codes; the broker's error classes are mapped here, once, by
:class:`V2Route`, so the services raise the same errors for both APIs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from broker.api.common import JSON, media_type, read_body
from broker.api.deps import Hub
from broker.api.params import DeclaredRoute, add_parameters
from broker.core.v2entities import V2Service
from broker.core.v2map import V2Mapper, query_paths, write_path
from broker.errors import (
    AlreadyExists,
    BadRequestData,
    Forbidden,
    InvalidRequest,
    NgsiLdError,
    NotAcceptable,
    NotImplementedYet,
    OperationNotSupported,
    PayloadTooLarge,
    ResourceNotFound,
    StoreUnavailable,
    TooManyResults,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger("renkei.api.v2")

TEXT = "text/plain"
_SERVICE_RE = re.compile(r"^[A-Za-z0-9_]{1,50}$")

#: (error class, status, v2 error name), most specific first.
ERROR_TABLE: tuple[tuple[type[NgsiLdError], int, str], ...] = (
    (PayloadTooLarge, 413, "RequestEntityTooLarge"),
    (UnsupportedMediaType, 415, "UnsupportedMediaType"),
    (NotAcceptable, 406, "NotAcceptable"),
    (InvalidRequest, 400, "BadRequest"),
    (BadRequestData, 400, "BadRequest"),
    (TooManyResults, 400, "BadRequest"),
    (ResourceNotFound, 404, "NotFound"),
    (AlreadyExists, 422, "Unprocessable"),
    (NotImplementedYet, 501, "NotImplemented"),
    (OperationNotSupported, 422, "Unprocessable"),
    (Unauthorized, 401, "Unauthorized"),
    (Forbidden, 403, "Forbidden"),
    (StoreUnavailable, 503, "ServiceUnavailable"),
)


class ParseError(InvalidRequest):
    """The body is not JSON (v2's ``ParseError``)."""


class LengthRequired(InvalidRequest):
    """411: a body was expected and no Content-Length came (v2's ``ContentLengthRequired``)."""

    status = 411


class MethodNotAllowed(InvalidRequest):
    status = 405


def v2_error(exc: NgsiLdError) -> tuple[int, str]:
    """The status and v2 error name of a broker error."""
    if isinstance(exc, ParseError):
        return 400, "ParseError"
    if isinstance(exc, LengthRequired):
        return 411, "ContentLengthRequired"
    if isinstance(exc, MethodNotAllowed):
        return 405, "MethodNotAllowed"
    named = getattr(exc, "v2_error", None)
    if isinstance(named, str):
        return exc.status, named
    for cls, status, name in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, name
    return 500, "InternalServerError"


def error_response(exc: NgsiLdError) -> Response:
    status, name = v2_error(exc)
    body = {"error": name, "description": exc.detail or exc.title}
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=exc.headers)


class V2Route(DeclaredRoute):
    """An APIRoute whose errors are rendered in v2's shape instead of ProblemDetails;
    its query-parameter groups (``P.group``) and the headers :func:`v2_call` reads are
    declared in its OpenAPI description."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if _uses(self.dependant, v2_call):
            add_parameters(self, list(HEADER_PARAMETERS))

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except NgsiLdError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                parts = [f"{e.get('loc', ())[-1]}: {e.get('msg')}" for e in exc.errors()]
                return error_response(BadRequestData("; ".join(parts)))
            except ClientDisconnect:
                return Response(status_code=499)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return Response(
                    orjson.dumps(
                        {"error": "InternalServerError", "description": "see the broker log"}
                    ),
                    status_code=500,
                    media_type=JSON,
                )

        return route


# -- dependencies ----------------------------------------------------------------------------


async def get_v2(request: Request) -> V2Service:
    """The v2 service of the running hub (built once per hub, on first use)."""
    hub: Hub = request.app.state.hub
    cached = getattr(request.app.state, "v2", None)
    if cached is not None and cached[0] is hub:
        svc: V2Service = cached[1]
        return svc
    tm = await hub.term_map(None)
    svc = V2Service(hub.entities, V2Mapper(tm), max_batch=hub.settings.max_batch)
    request.app.state.v2 = (hub, svc)
    return svc


async def service_of(
    fiware_service: Annotated[
        str | None, Header(description="Tenant (the same tenants as NGSILD-Tenant)")
    ] = None,
) -> str:
    """``Fiware-Service``: the tenant, lower-cased as Orion does; absent is the default."""
    if fiware_service is None or fiware_service == "":
        return ""
    if not _SERVICE_RE.match(fiware_service):
        raise BadRequestData(
            "bad character in tenant name: use letters, digits and _ (at most 50 characters)"
        )
    return fiware_service.lower()


async def paths_of(
    fiware_servicepath: Annotated[
        str | None,
        Header(description="Service path(s): /a/b, /a/# for a subtree, up to 10 comma-separated"),
    ] = None,
) -> list[str] | None:
    return query_paths(fiware_servicepath)


async def scope_of(
    fiware_servicepath: Annotated[str | None, Header()] = None,
) -> str | None:
    return write_path(fiware_servicepath)


@dataclass
class V2Call:
    """What every v2 operation needs, read in one step (see :func:`v2_call`)."""

    svc: V2Service
    tenant: str
    #: the ``Fiware-ServicePath`` header as it came
    service_path: str | None

    @property
    def paths(self) -> list[str] | None:
        """The service paths of a query (None: every entity)."""
        return query_paths(self.service_path)

    @property
    def scope(self) -> str | None:
        """The scope an entity written under the service path gets."""
        return write_path(self.service_path)


async def v2_call(request: Request) -> V2Call:
    """The v2 service, the tenant (``Fiware-Service``) and the service path, read straight
    from the headers: the framework's per-parameter resolution costs more than a cached
    retrieve (see ``broker.api.params.group``). ``V2Route`` declares both headers."""
    headers = request.headers
    return V2Call(
        await get_v2(request),
        await service_of(headers.get("fiware-service")),
        headers.get("fiware-servicepath"),
    )


HEADER_PARAMETERS: tuple[dict[str, Any], ...] = (
    {
        "name": "fiware-service",
        "in": "header",
        "required": False,
        "description": "Tenant (the same tenants as NGSILD-Tenant)",
        "schema": {"type": "string"},
    },
    {
        "name": "fiware-servicepath",
        "in": "header",
        "required": False,
        "description": "Service path(s): /a/b, /a/# for a subtree, up to 10 comma-separated",
        "schema": {"type": "string"},
    },
)


def _uses(dependant: Any, call: Callable[..., Any]) -> bool:
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if dep.call is call:
            return True
        stack.extend(dep.dependencies)
    return False


V2Dep = Annotated[V2Service, Depends(get_v2)]
CallDep = Annotated[V2Call, Depends(v2_call)]
ServiceDep = Annotated[str, Depends(service_of)]
PathsDep = Annotated["list[str] | None", Depends(paths_of)]
ScopeDep = Annotated["str | None", Depends(scope_of)]


# -- bodies and responses --------------------------------------------------------------------


async def json_body(request: Request, *, allow_text: bool = False) -> Any:
    """The JSON body (or the raw text for ``text/plain`` where allowed) within the limits."""
    kind = media_type(request.headers.get("content-type"))
    if kind not in (JSON, TEXT) or (kind == TEXT and not allow_text):
        allowed = "application/json or text/plain" if allow_text else "application/json"
        raise UnsupportedMediaType(f"not supported content type: {kind or '(none)'}; use {allowed}")
    headers = request.headers
    if "content-length" not in headers and "transfer-encoding" not in headers:
        raise LengthRequired("Zero/No Content-Length in PUT/POST/PATCH request")
    settings = request.app.state.hub.settings
    if kind == TEXT:
        raw = await request.body()
        if len(raw) > settings.max_body_bytes:
            raise PayloadTooLarge(f"request body larger than {settings.max_body_bytes} bytes")
        return raw.decode("utf-8", errors="replace")
    try:
        return await read_body(
            request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
        )
    except PayloadTooLarge:
        raise
    except InvalidRequest as exc:
        if "empty" in exc.detail:
            raise LengthRequired("Zero/No Content-Length in PUT/POST/PATCH request") from exc
        raise ParseError(f"Errors found in incoming JSON buffer: {exc.detail}") from exc


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=204, headers=headers)


def options_of(options: str | None, allowed: frozenset[str]) -> set[str]:
    opts = {o.strip() for o in (options or "").split(",") if o.strip()}
    unknown = opts - allowed
    if unknown:
        raise BadRequestData(f"Invalid value for URI param /options/: {', '.join(sorted(unknown))}")
    return opts


def csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def render_mode(opts: set[str]) -> str:
    modes = [m for m in ("keyValues", "values", "unique") if m in opts]
    if len(modes) > 1:
        raise BadRequestData("options asks for more than one representation")
    return modes[0] if modes else "normalized"
