"""Requests the hub makes on a user's behalf pass the outbound policy.

Remote ``@context`` documents and notification endpoints are served by listeners on
127.0.0.1; where a test needs a destination the hub must not reach, loopback is put on
the deny list, so those listeners stand for the cloud metadata service or an internal
host.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.outbound import DEFAULT_DENY
from tests.conftest import JSON, link, make_settings
from tests.receiver import Receiver

E = "/ngsi-ld/v1/entities"
S = "/ngsi-ld/v1/subscriptions"
C = "/ngsi-ld/v1/jsonldContexts"
DENY_LOOPBACK = [*DEFAULT_DENY, "127.0.0.0/8", "::1"]
#: What the remote answers carry: it must never come back in an error.
SECRET = "内部の秘密-7f3a"
CTX = {
    "@context": {
        "避難所": "https://example.jp/ns/避難所",
        "収容人数": "https://example.jp/ns/収容人数",
    }
}


def shelter(n: int = 1) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Shelter:hinanjo-{n}",
        "type": "避難所",
        "収容人数": {"type": "Property", "value": 120 + n},
        "name": {"type": "Property", "value": f"駒江第{n}小学校"},
    }


class ContextHost:
    """A context server on 127.0.0.1: ``/ctx*.jsonld`` is a context, ``/moved`` redirects
    within the host, ``/away`` redirects to ``redirect_to``; other paths answer 404 with
    :data:`SECRET` in the body, ``/html`` answers 200 with it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.redirect_to = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                status, headers, body = 404, {}, f"<h1>{SECRET}</h1>".encode()
                if self.path.startswith("/ctx"):
                    status, body = 200, json.dumps(CTX).encode()
                elif self.path == "/html":
                    status = 200
                elif self.path == "/moved":
                    status, headers = 302, {"Location": "/ctx-moved.jsonld"}
                elif self.path == "/away":
                    status, headers = 302, {"Location": outer.redirect_to}
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def remote() -> Iterator[ContextHost]:
    host = ContextHost()
    yield host
    host.close()


@pytest.fixture
def other() -> Iterator[ContextHost]:
    host = ContextHost()
    yield host
    host.close()


def get_with(client: TestClient, url: str) -> Any:
    return client.get(E, params={"type": "避難所"}, headers=link(url))


def test_a_link_to_a_denied_address_is_refused_without_a_connection(
    tmp_path: Path, remote: ContextHost
) -> None:
    s = make_settings(tmp_path, outbound_deny=DENY_LOOPBACK)
    with TestClient(create_app(s)) as client:
        for url in (f"{remote.url}/ctx.jsonld", f"http://localhost:{remote.port}/ctx.jsonld"):
            r = get_with(client, url)
            assert r.status_code == 503, r.text
            problem = r.json()
            assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
            assert "cannot retrieve @context URL" in problem["detail"]
            assert "refused by policy" in problem["detail"]
        r = get_with(client, "http://169.254.169.254/latest/meta-data/")
        assert r.status_code == 503
        assert "refused by policy" in r.json()["detail"]
    assert remote.hits == []


def test_errors_name_a_category_never_the_remote_content(
    client: TestClient, remote: ContextHost
) -> None:
    for path, status, category in [
        ("/missing", 503, "HTTP status 404"),
        ("/html", 400, "not JSON-LD"),
    ]:
        r = get_with(client, remote.url + path)
        assert r.status_code == status, path
        assert "cannot retrieve @context URL" in r.json()["detail"]
        assert category in r.json()["detail"]
        assert SECRET not in r.text
    closed = ContextHost()
    closed.close()
    r = get_with(client, f"{closed.url}/ctx.jsonld")
    assert r.status_code == 503
    assert "connection failed" in r.json()["detail"]


def test_redirects_are_followed_within_the_host_only(
    client: TestClient, remote: ContextHost, other: ContextHost
) -> None:
    assert get_with(client, f"{remote.url}/moved").status_code == 200
    assert remote.hits == ["/moved", "/ctx-moved.jsonld"]
    remote.redirect_to = f"{other.url}/ctx.jsonld"
    r = get_with(client, f"{remote.url}/away")
    assert r.status_code == 503
    assert "redirect to another host is not followed" in r.json()["detail"]
    # the same listener by another name is another host too
    remote.redirect_to = f"http://localhost:{remote.port}/ctx.jsonld"
    assert get_with(client, f"{remote.url}/away").status_code == 503
    assert other.hits == []
    assert remote.hits.count("/ctx.jsonld") == 0


def test_off_mode_uses_preloaded_contexts_only(tmp_path: Path, remote: ContextHost) -> None:
    preloaded = f"{remote.url}/ctx-preloaded.jsonld"
    (tmp_path / "shelter.jsonld").write_text(json.dumps(CTX, ensure_ascii=False), "utf-8")
    (tmp_path / "preload.json").write_text(json.dumps({preloaded: "shelter.jsonld"}))
    s = make_settings(tmp_path, context_fetch="off", context_preload=tmp_path / "preload.json")
    with TestClient(create_app(s)) as client:
        r = client.post(E, json=shelter(), headers={**JSON, **link(preloaded)})
        assert r.status_code == 201, r.text
        found = get_with(client, preloaded).json()
        assert [e["収容人数"]["value"] for e in found] == [121]
        r = get_with(client, f"{remote.url}/ctx.jsonld")
        assert r.status_code == 503
        assert "refused by policy" in r.json()["detail"]
    assert remote.hits == []


def test_allowlist_mode_fetches_from_listed_hosts_only(tmp_path: Path, remote: ContextHost) -> None:
    s = make_settings(tmp_path, context_fetch="allowlist", outbound_allow=["localhost"])
    with TestClient(create_app(s)) as client:
        assert get_with(client, f"http://localhost:{remote.port}/ctx-a.jsonld").status_code == 200
        r = get_with(client, f"{remote.url}/ctx-b.jsonld")
        assert r.status_code == 503
        assert "refused by policy" in r.json()["detail"]
    assert remote.hits == ["/ctx-a.jsonld"]
    s = make_settings(tmp_path, context_fetch="allowlist")  # nothing listed: nothing fetched
    with TestClient(create_app(s)) as client:
        assert get_with(client, f"http://localhost:{remote.port}/ctx-c.jsonld").status_code == 503
    assert remote.hits == ["/ctx-a.jsonld"]


def test_the_context_cache_is_bounded(tmp_path: Path, remote: ContextHost) -> None:
    s = make_settings(tmp_path, context_cache_max=3)
    urls = [f"{remote.url}/ctx{i}.jsonld" for i in range(4)]
    with TestClient(create_app(s)) as client:
        for url in urls:
            assert get_with(client, url).status_code == 200
        cached = client.get(C, params={"kind": "Cached"}).json()
        assert [u for u in cached if u.startswith(remote.url)] == urls[1:]
    with TestClient(create_app(s)) as client:  # what the store kept
        cached = client.get(C, params={"kind": "Cached"}).json()
        assert sorted(u for u in cached if u.startswith(remote.url)) == urls[1:]
        assert get_with(client, urls[0]).status_code == 200  # fetched again when needed
    assert remote.hits.count("/ctx0.jsonld") == 2
    size = len(json.dumps(CTX, ensure_ascii=False).encode())
    s = make_settings(tmp_path, context_cache_max_bytes=2 * size + 10)
    with TestClient(create_app(s)) as client:  # a smaller bound applies at start-up
        cached = client.get(C, params={"kind": "Cached"}).json()
        assert len([u for u in cached if u.startswith(remote.url)]) == 2


def test_subscriptions_to_refused_endpoints_are_refused_at_creation(
    tmp_path: Path, receiver: Receiver
) -> None:
    s = make_settings(tmp_path, port=1026)

    def sub(uri: str) -> dict[str, Any]:
        return {
            "type": "Subscription",
            "entities": [{"type": "避難所"}],
            "notification": {"endpoint": {"uri": uri, "accept": "application/json"}},
            "@context": CTX["@context"],
        }

    ld = {"Content-Type": "application/ld+json"}
    with TestClient(create_app(s)) as client:
        for uri in (
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:1026/ngsi-ld/v1/entities",  # the hub itself
            "http://localhost:1026/ngsi-ld/v1/entities",
            "mqtt://169.254.169.254/避難所",
        ):
            r = client.post(S, json=sub(uri), headers=ld)
            assert r.status_code == 400, uri
            assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
        r = client.post(S, json=sub(receiver.url), headers=ld)
        assert r.status_code == 201, r.text
        location = r.headers["Location"]
        patch = {"notification": {"endpoint": {"uri": "http://169.254.169.254/"}}}
        assert client.patch(location, json=patch, headers=JSON).status_code == 400
        stored = client.get(location).json()
        assert stored["notification"]["endpoint"]["uri"] == receiver.url
        assert len(client.get(S).json()) == 1


def wait_failure(client: TestClient, location: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(location).json()["notification"]
        if status.get("timesFailed", 0) >= 1:
            return status
        time.sleep(0.05)
    raise AssertionError(f"no failed delivery within {timeout}s")


def test_the_policy_applies_when_a_notification_is_sent(tmp_path: Path, receiver: Receiver) -> None:
    """The endpoint's name resolves to an address the policy allows when the subscription
    is made and refuses when the notification goes out (as after DNS rebinding): it is not
    delivered."""
    endpoint = receiver.url.replace("127.0.0.1", "localhost")
    body = {
        "type": "Subscription",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": endpoint, "accept": "application/json"}},
    }
    ld = {"Content-Type": "application/ld+json"}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post(S, json={**body, "@context": CTX["@context"]}, headers=ld)
        assert r.status_code == 201, r.text
        location = r.headers["Location"]
        client.post(E, json={**shelter(1), "@context": CTX["@context"]}, headers=ld)
        receiver.wait(1)
    denied = make_settings(tmp_path, outbound_deny=DENY_LOOPBACK)
    with TestClient(create_app(denied)) as client:
        client.post(E, json={**shelter(2), "@context": CTX["@context"]}, headers=ld)
        status = wait_failure(client, location)
        assert status["status"] == "failed"
    assert len(receiver.received) == 1
