"""Exception handlers, registered once from a table: every error becomes ProblemDetails."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from broker.errors import BadRequestData, InternalError, NgsiLdError, ResourceNotFound

log = logging.getLogger("renkei.api")

PROBLEM_MEDIA_TYPE = "application/json"


def problem_response(error: NgsiLdError) -> Response:
    return Response(
        orjson.dumps(error.problem()),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )


async def _ngsi_ld(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NgsiLdError)
    return problem_response(exc)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    return problem_response(BadRequestData("; ".join(parts)))


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return problem_response(ResourceNotFound(f"no such resource: {request.url.path}"))
    body = {
        "type": "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest",
        "title": str(exc.detail),
        "status": exc.status_code,
    }
    return Response(
        orjson.dumps(body),
        status_code=exc.status_code,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(exc.headers or {}),
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):  # the client went away: nobody to answer
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(InternalError("internal error; see the broker log"))


HANDLERS = {
    NgsiLdError: _ngsi_ld,
    RequestValidationError: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}


def add_exception_handlers(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
