"""A real HTTP(S) endpoint on 127.0.0.1 (``http.server`` in a thread) that records requests."""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class HttpEndpoint:
    """What the endpoint received; ``status`` is what it answers next."""

    url: str
    status: int = 204
    answer: bytes = b""  # the body of the next answers
    answer_headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    requests: list[Request] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be observed
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        endpoint = self.server.endpoint
        endpoint.requests.append(
            Request(
                "POST",
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                self.client_address[1],
            )
        )
        if endpoint.delay:
            time.sleep(endpoint.delay)
        self.send_response(endpoint.status)
        for name, value in endpoint.answer_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(endpoint.answer)))
        self.end_headers()
        self.wfile.write(endpoint.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: HttpEndpoint

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up without reading the whole answer, as it may
        super().handle_error(request, client_address)


@contextmanager
def http_endpoint_server(tls: ssl.SSLContext | None = None) -> Iterator[HttpEndpoint]:
    """The endpoint; with ``tls`` (a server context) it speaks https."""
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    server.endpoint = HttpEndpoint(f"{scheme}://127.0.0.1:{server.server_address[1]}/notify")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
