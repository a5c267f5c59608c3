"""A real HTTP notification receiver on loopback for tests: records what it gets.

Tests wait on the notifications themselves (``wait``, ``wait_for``); a check that no
further notification comes (``quiet``) waits a stated bound after a positive wait.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Received = list[tuple[dict[str, str], Any]]


@dataclass
class Request:
    """One request as it arrived: method, path with its query, headers, raw body."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes


class Receiver:
    def __init__(self, status: int = 200, delay: float = 0.0, port: int = 0) -> None:
        """``delay``: seconds the receiver takes before it answers (a slow endpoint);
        ``port``: where it listens (a free one by default).

        ``received`` holds (lower-cased headers, body) of every request, the body parsed
        as JSON (the text when it is not JSON, None when empty); ``requests`` holds
        each request whole, whatever its method."""
        self.received: Received = []
        self.requests: list[Request] = []
        self.status = status
        self._arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer._arrived:
                    outer.received.append((headers, body))
                    outer.requests.append(Request(self.command, self.path, headers, raw))
                    outer._arrived.notify_all()
                if delay:
                    time.sleep(delay)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(
        self, done: Callable[[Received], bool], timeout: float = 10.0, what: str = ""
    ) -> Received:
        """Wait until ``done(received)`` holds, waking at each notification."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: done(self.received), timeout):
                raise AssertionError(
                    f"{what or 'the awaited notification'} did not arrive within {timeout}s "
                    f"({len(self.received)} received)"
                )
            return list(self.received)

    def wait(self, count: int, timeout: float = 10.0) -> Received:
        """Wait until at least ``count`` notifications arrived."""
        return self.wait_for(lambda r: len(r) >= count, timeout, f"notification #{count}")

    def quiet(self, count: int, bound: float = 0.5) -> None:
        """Check that no notification beyond the first ``count`` arrives within ``bound``
        seconds (call it after waiting for those ``count``)."""
        with self._arrived:
            more = self._arrived.wait_for(lambda: len(self.received) > count, bound)
        assert not more, f"got {len(self.received)} notifications, wanted only {count}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
