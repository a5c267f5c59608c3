"""Request parsing and response rendering shared by the NGSI-LD routers.

NGSI-LD rules implemented here (clause 6.3):
* JSON payloads are ``application/json`` (context in a ``Link`` header) or
  ``application/ld+json`` (``@context`` in the body); anything else is 415.
* ``Accept`` picks ``application/json`` (context returned in a ``Link`` header),
  ``application/ld+json`` (``@context`` in the body) or, where offered,
  ``application/geo+json``; nothing acceptable is 406.
* Bodies are bounded in size and nesting depth.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import (
    BadRequestData,
    InvalidRequest,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from broker.jsonld.context import CORE_CONTEXT_URL, ContextValue, TermMap, single_url
from broker.model.entity import iri_to_uri

JSON = "application/json"
LD_JSON = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
LINK_REL = "http://www.w3.org/ns/json-ld#context"

_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
_TENANT_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def link_context(request: Request) -> str | None:
    """The @context URL of a JSON-LD ``Link`` header, if any (400 when several)."""
    found: list[str] = []
    for header in request.headers.getlist("link"):
        for match in _LINK_RE.finditer(header):
            params = match.group(2)
            if LINK_REL in params or "json-ld#context" in params:
                found.append(match.group(1).strip())
    if len(found) > 1:
        raise BadRequestData("more than one JSON-LD context Link header")
    return found[0] if found else None


async def tenant_of(request: Request) -> str:
    return check_tenant(request.headers.get("ngsild-tenant"))


def check_tenant(tenant: str | None) -> str:
    """The tenant an ``NGSILD-Tenant`` header names (``""``: the default tenant)."""
    if tenant is None or tenant == "":
        return ""
    if not _TENANT_RE.match(tenant):
        raise BadRequestData(f"invalid NGSILD-Tenant {tenant!r}: use letters, digits, '-' and '_'")
    return tenant


def _depth(value: Any, limit: int) -> None:
    """400 when the JSON nests deeper than ``limit`` (a scalar inside counts as a level).
    Walks containers level by level; scalars are never put on a work list."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 1
    while level:
        deeper: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            if children and depth >= limit:
                raise BadRequestData(f"JSON nesting deeper than {limit} levels")
            deeper.extend(c for c in children if isinstance(c, dict | list))
        level = deeper
        depth += 1


def check_depth(raw: bytes, body: Any, limit: int) -> None:
    """:func:`_depth` for a parsed body, walked only when its text has ``limit`` or more
    brackets: every level but the innermost is a bracket, so with fewer the body has at
    most ``limit`` levels (brackets inside strings only make the count larger)."""
    if raw.count(b"{") + raw.count(b"[") >= limit:
        _depth(body, limit)


#: Integers the hub keeps exactly: 64-bit signed, as SQLite and MongoDB store them.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_LONG_NUMBER = re.compile(rb"\d{19}")


def check_integers(raw: bytes) -> None:
    """Refuse (400) integers beyond 64 bits, which the JSON parser would turn into floats.

    Only a body with a run of 19 or more digits can hold one; that rare body is parsed
    again with the standard library, which keeps integers exact, and walked.
    """
    if _LONG_NUMBER.search(raw) is None:
        return
    try:
        exact = json.loads(raw)
    except ValueError as exc:  # more digits than Python converts
        raise BadRequestData(f"the request body holds a number too long to store: {exc}") from exc
    stack = [exact]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif (
            isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX
        ):
            raise BadRequestData(
                f"integer {item} is beyond the 64-bit range kept exactly "
                f"({INT_MIN} to {INT_MAX}); send it as a string or a float"
            )


@dataclass
class Payload:
    body: Any
    #: The request's @context: from the body (ld+json) or the Link header (json).
    context: ContextValue | None
    kind: str = JSON


def check_content_type(request: Request, *, allow_merge_patch: bool = False) -> str:
    """The request's JSON media type; 415 for anything else."""
    kind = media_type(request.headers.get("content-type"))
    allowed = {JSON, LD_JSON} | ({MERGE_PATCH} if allow_merge_patch else set())
    if kind not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'} is not supported; use {' or '.join(sorted(allowed))}"
        )
    return kind


async def read_body(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """Read and parse a JSON body within the size and depth bounds."""
    size = request.headers.get("content-length")
    if size is not None and size.isascii() and size.isdigit() and int(size) > max_bytes:
        raise PayloadTooLarge(f"request body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLarge(f"request body larger than {max_bytes} bytes")
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("the request body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    check_depth(raw, body, max_depth)
    check_integers(raw)
    return body


async def read_payload(
    request: Request,
    *,
    max_bytes: int,
    max_depth: int,
    allow_merge_patch: bool = False,
    shape: type = dict,
) -> Payload:
    try:
        kind = check_content_type(request, allow_merge_patch=allow_merge_patch)
    except UnsupportedMediaType:
        if request.headers.get("content-type") is None:
            # No media type declared: the body is examined (RFC 9110 §8.3). One that is not
            # a JSON document is InvalidRequest as it would be under either JSON type; a
            # JSON one still needs its media type (415).
            await read_body(request, max_bytes=max_bytes, max_depth=max_depth)
        raise
    body = await read_body(request, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(body, shape):
        raise InvalidRequest(
            f"the request body must be a JSON {'object' if shape is dict else 'array'}"
        )
    link = link_context(request)
    context: ContextValue | None
    if kind == LD_JSON:
        if link is not None:
            raise BadRequestData(
                "application/ld+json requests carry @context in the body, not in a Link header"
            )
        # an array (batch) carries one @context per element: the caller resolves each
        context = _body_context(body) if isinstance(body, dict) else None
    else:
        if isinstance(body, dict) and "@context" in body:
            raise BadRequestData("@context in the body needs Content-Type application/ld+json")
        context = link
    return Payload(body, context, kind)


def _body_context(body: dict[str, Any]) -> ContextValue:
    if "@context" not in body:
        raise BadRequestData("application/ld+json body without @context")
    ctx = body.pop("@context")
    if not isinstance(ctx, (str, dict, list)):
        raise BadRequestData("@context must be a URL, an object or an array")
    return ctx


def negotiate(request: Request, offers: tuple[str, ...] = (JSON, LD_JSON)) -> str:
    """Choose the response media type from ``Accept`` among ``offers``.

    Highest q wins; at equal q an exact type beats a wildcard, then the earlier offer.
    """
    header = request.headers.get("accept")
    if not header:
        return offers[0]
    best: tuple[float, int, int, str] | None = None
    for part in header.split(","):
        bits = [b.strip() for b in part.split(";")]
        kind = bits[0].lower()
        q = 1.0
        for b in bits[1:]:
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        for rank, offer in enumerate(offers):
            if kind == offer:
                exact = 1
            elif kind in ("*/*", "application/*"):
                exact = 0
            else:
                continue
            candidate = (q, exact, -rank, offer)
            if best is None or candidate > best:
                best = candidate
    if best is None:
        raise NotAcceptable(
            f"none of the accepted types ({header}) is offered; use {', '.join(offers)}"
        )
    return best[3]


def context_url(tm: TermMap) -> str:
    """The URL to send back in a Link header for the request's context."""
    ctx = tm.context
    url = single_url(ctx)
    if url is not None:
        return url
    if ctx is None:
        return CORE_CONTEXT_URL
    return tm.implicit_url or CORE_CONTEXT_URL


def link_header(url: str) -> str:
    return f'<{iri_to_uri(url)}>; rel="{LINK_REL}"; type="application/ld+json"'


def page_links(request: Request, *, offset: int, limit: int, more: bool, kind: str) -> list[str]:
    """``Link`` values to the previous and next pages of a listing (clauses 5.5.9, 6.3.10).

    The request's own path and parameters, with ``offset`` (and ``limit``) moved by one
    page: ``rel="prev"`` unless this is the first page, ``rel="next"`` when ``more``
    results follow. Each link names the media type of this answer.
    """
    if limit <= 0:
        return []

    def link(at: int, rel: str) -> str:
        items = [(k, v) for k, v in request.query_params.multi_items() if k != "offset"]
        if not any(k == "limit" for k, _ in items):
            items.append(("limit", str(limit)))
        items.append(("offset", str(at)))
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe=':/,;@')}" for k, v in items)
        return f'<{quote(request.url.path, safe="/:@")}?{query}>; rel="{rel}"; type="{kind}"'

    links = []
    if offset > 0:
        links.append(link(max(0, offset - limit), "prev"))
    if more:
        links.append(link(offset + limit, "next"))
    return links


def respond(
    data: Any,
    *,
    tm: TermMap,
    kind: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    links: list[str] | None = None,
    geo_context_in_body: bool = True,
) -> Response:
    """Render a JSON body the NGSI-LD way for the negotiated media type ``kind``.

    ``links`` are further ``Link`` header values (pages of a listing), sent beside the
    JSON-LD context link of an ``application/json`` answer. GeoJSON carries its
    ``@context`` in the body unless ``geo_context_in_body`` is false (``Prefer:
    body=json``), when a ``Link`` header carries it as for ``application/json``."""
    out_headers = dict(headers or {})
    if kind == GEO_JSON and isinstance(data, dict) and geo_context_in_body:
        data = {**data, "@context": tm.context if tm.context is not None else CORE_CONTEXT_URL}
    elif kind == LD_JSON:
        ctx = tm.context if tm.context is not None else CORE_CONTEXT_URL
        if isinstance(data, list):
            data = [{"@context": ctx, **item} for item in data]
        elif isinstance(data, dict):
            data = {"@context": ctx, **data}
    else:
        out_headers["Link"] = link_header(context_url(tm))
    response = Response(
        orjson.dumps(data), status_code=status, media_type=kind, headers=out_headers
    )
    for value in links or ():
        response.headers.append("Link", value)
    return response


def csv_param(value: str | None) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
