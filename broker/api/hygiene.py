"""HTTP hygiene in front of every route: allowed ``Host`` names, CORS, security headers.

* ``RENKEI_ALLOWED_HOSTS``: Starlette's ``TrustedHostMiddleware`` answers 400 to a
  request whose ``Host`` is not listed (DNS rebinding, cache poisoning through forged
  host names). ``/health...`` and ``/metrics`` are exempt: probes and scrapers address
  the pod by its IP.
* ``RENKEI_CORS_ORIGINS``: Starlette's ``CORSMiddleware`` answers preflights and lets
  the listed browser origins read NGSI-LD answers, with credentials (``*``: any origin,
  never with credentials), exposing the headers NGSI-LD clients read.
* :class:`SecurityHeaders`: ``X-Content-Type-Options``, ``Referrer-Policy`` and
  ``X-Frame-Options`` on every response, and a ``Content-Security-Policy`` allowing
  only this hub on HTML pages, unless the page set its own.
"""

from __future__ import annotations

import ipaddress
import logging

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.settings import Settings

log = logging.getLogger("renkei")

#: Headers a browser app sends to the hub beyond the CORS-safelisted ones.
CORS_ALLOW_HEADERS = [
    "Accept",
    "Accept-Language",
    "Authorization",
    "Content-Type",
    "Link",
    "NGSILD-Tenant",
    "NGSILD-Path",
    "Fiware-Service",
    "Fiware-ServicePath",
    "If-Match",
    "If-None-Match",
]
#: Response headers a browser app may read (NGSI-LD clause 6.3 and the temporal ranges).
CORS_EXPOSE_HEADERS = [
    "Link",
    "Location",
    "NGSILD-Results-Count",
    "NGSILD-Tenant",
    "NGSILD-Warning",
    "NGSILD-Entity-Id",
    "Content-Range",
    "ETag",
    "Last-Modified",
    "Retry-After",
]


def html_policy(*origins: str) -> str:
    """The ``Content-Security-Policy`` of an HTML page: this hub only.

    Inline styles are allowed (the OGC pages carry theirs; ReDoc's components inject
    them), scripts never. ``blob:`` workers are how MapLibre and ReDoc start theirs.
    ``origins`` adds hosts images and fetches may come from (the viewer's tile server).
    """
    extra = "".join(f" {o}" for o in origins)
    return (
        "default-src 'self'; "
        "script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data: blob:{extra}; "
        f"connect-src 'self'{extra}; "
        "font-src 'self' data:; "
        "worker-src 'self' blob:; "
        "child-src 'self' blob:; "
        "object-src 'none'; "
        "base-uri 'self'; "
        "form-action 'self'; "
        "frame-ancestors 'none'"
    )


class SecurityHeaders:
    """Pure ASGI middleware adding fixed headers to every response start.

    It sits on every request's path, so it does no more than append prebuilt byte
    pairs, and looks at the response's headers only to spot HTML and a page's own
    policy.
    """

    COMMON: tuple[tuple[bytes, bytes], ...] = (
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    )
    CSP = b"content-security-policy"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.html_csp = (self.CSP, html_policy().encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                html = own_policy = False
                for name, value in headers:
                    lowered = name.lower()
                    if lowered == b"content-type":
                        html = value.startswith(b"text/html")
                    elif lowered == self.CSP:
                        own_policy = True
                headers.extend(self.COMMON)
                if html and not own_policy:
                    headers.append(self.html_csp)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheck:
    """``TrustedHostMiddleware`` for every path but the probes' and the scraper's."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(("/health", "/metrics")):
            await self.app(scope, receive, send)
            return
        await self.checked(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_http_hygiene(app: FastAPI, settings: Settings) -> None:
    """Add the middleware above, outermost last (Starlette wraps in reverse order)."""
    if settings.allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    elif not is_loopback(settings.host):
        log.warning(
            "listening on %s without RENKEI_ALLOWED_HOSTS: any Host header is accepted; "
            "set it to the names clients use (e.g. RENKEI_ALLOWED_HOSTS=hub.example.lg.jp)",
            settings.host,
        )
    if settings.cors_origins:
        any_origin = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if any_origin else settings.cors_origins,
            allow_credentials=not any_origin,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"],
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)
