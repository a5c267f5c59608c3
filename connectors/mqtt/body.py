"""Request bodies of the agent's HTTP side, read within ``iota_max_body_bytes``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from connectors.mqtt.errors import PayloadTooLarge, WrongSyntax


async def read_json(request: Request) -> Any:
    """The request's JSON body, read up to ``iota_max_body_bytes`` (413 beyond: a body
    is never held in memory whole before its size is known to be within the bound)."""
    limit: int = request.app.state.settings.iota_max_body_bytes
    size = request.headers.get("content-length")
    if size is not None and size.isascii() and size.isdigit() and int(size) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise WrongSyntax(f"the body is not valid JSON: {exc}") from None
