"""A context source on loopback for tests: a real HTTP server that records each request
(method, path, query, headers, body) and answers what the test set for that path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    #: the query string as it came (escaped as the sender escaped it)
    raw_query: str = ""


class Source:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        #: (method, path) -> (status, body, headers); anything else is 404
        self.answers: dict[tuple[str, str], tuple[int, Any, dict[str, str]]] = {}
        self.delay = 0.0
        self._arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    unquote(parts.path),
                    {k: v[0] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                    parts.query,
                )
                with outer._arrived:
                    outer.requests.append(request)
                    outer._arrived.notify_all()
                if outer.delay:
                    time.sleep(outer.delay)
                status, body, headers = outer.answers.get(
                    (self.command, request.path), (404, {"type": "ResourceNotFound"}, {})
                )
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, status: int, body: Any, **headers: str) -> None:
        self.answers[(method, path)] = (status, body, headers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def source() -> Iterator[Source]:
    s = Source()
    try:
        yield s
    finally:
        s.close()
