"""Catalog retries and pacing, against a FAULT-INJECTING fake of CKAN's action API.

A real CKAN cannot be made to answer 503 or time out on demand, so these tests use a
small HTTP server that does exactly that (``FaultInjectingCkan``), then answers as CKAN
does. Everything else about publishing is tested against a real CKAN (test_publish.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from opendata.publish import Catalog, CatalogError

LICENSES = [{"id": "cc-by-4.0", "title": "CC BY 4.0"}]


class FaultInjectingCkan:
    """Answers the first ``failures`` requests with ``status`` (or hangs past the client's
    timeout when ``hang``), then like CKAN's ``license_list``."""

    def __init__(self) -> None:
        self.failures = 0
        self.status = 503
        self.hang = 0.0
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.requests.append(dict(self.headers))
                if len(owner.requests) <= owner.failures:
                    if owner.hang:
                        time.sleep(owner.hang)
                    body = b"<html>Service Unavailable</html>"
                    self.send_response(owner.status)
                else:
                    body = json.dumps({"success": True, "result": LICENSES}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[FaultInjectingCkan]:
    f = FaultInjectingCkan()
    thread = threading.Thread(target=f.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f
    f.server.shutdown()
    f.server.server_close()


def test_5xx_is_retried_with_backoff(fake: FaultInjectingCkan) -> None:
    fake.failures = 2
    cat = Catalog(fake.url, "secret-token", rate=0, retries=3, backoff=0.05)
    started = time.monotonic()
    assert cat.licenses() == {"cc-by-4.0"}
    assert len(fake.requests) == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # two waits, the second doubled
    assert fake.requests[0]["Authorization"] == "secret-token"


def test_gives_up_after_the_retries_without_showing_the_token(fake: FaultInjectingCkan) -> None:
    fake.failures = 100
    fake.status = 502
    cat = Catalog(fake.url, "secret-token", rate=0, retries=2, backoff=0.01)
    with pytest.raises(CatalogError) as exc:
        cat.licenses()
    assert exc.value.transient
    assert "HTTP 502" in str(exc.value)
    assert "after 3 attempts" in str(exc.value)
    assert "secret-token" not in str(exc.value)
    assert len(fake.requests) == 3


def test_timeouts_are_retried(fake: FaultInjectingCkan) -> None:
    fake.failures = 1
    fake.hang = 1.0
    cat = Catalog(fake.url, None, rate=0, retries=1, backoff=0.01, timeout=0.2)
    assert cat.licenses() == {"cc-by-4.0"}
    assert len(fake.requests) == 2


def test_4xx_is_not_retried(fake: FaultInjectingCkan) -> None:
    fake.failures = 100
    fake.status = 403
    cat = Catalog(fake.url, "t", rate=0, retries=3, backoff=0.01)
    with pytest.raises(CatalogError) as exc:
        cat.licenses()
    assert not exc.value.transient
    assert len(fake.requests) == 1


def test_requests_are_spaced_to_the_rate(fake: FaultInjectingCkan) -> None:
    cat = Catalog(fake.url, "t", rate=20)
    started = time.monotonic()
    for _ in range(5):
        cat.call("license_list")
    assert time.monotonic() - started >= 4 / 20
    assert len(fake.requests) == 5
