"""JSON-LD contexts: offline preload, remote fetch with limits, the /jsonldContexts API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import JSON, LD, building, link, make_settings

E = "/ngsi-ld/v1/entities"
C = "/ngsi-ld/v1/jsonldContexts"
CTX = {
    "@context": {"Building": "https://example.org/Building", "floors": "https://example.org/floors"}
}


class ContextServer:
    """A real HTTP server on loopback serving contexts, counting requests per path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path == "/slow.jsonld":
                    time.sleep(2)
                body = {
                    "/ctx.jsonld": json.dumps(CTX).encode(),
                    "/big.jsonld": json.dumps({"@context": {"x": "y" * 5000}}).encode(),
                    "/broken.jsonld": b"{not json",
                    "/nocontext.jsonld": b'{"a": 1}',
                    "/slow.jsonld": json.dumps(CTX).encode(),
                }.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/ld+json")
                    self.end_headers()
                    self.wfile.write(body)
                except BrokenPipeError:  # the broker gave up waiting (the timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def remote() -> Iterator[ContextServer]:
    server = ContextServer()
    yield server
    server.close()


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    s = make_settings(tmp_path, context_max_bytes=1000, context_fetch_timeout=0.5)
    with TestClient(create_app(s)) as c:
        yield c


def test_remote_context_is_fetched_once_and_listed_as_cached(
    limited: TestClient, remote: ContextServer
) -> None:
    url = remote.url + "/ctx.jsonld"
    for i in range(3):
        r = limited.post(
            E, json=building(f"urn:ngsi-ld:Building:{i}"), headers={**JSON, **link(url)}
        )
        assert r.status_code == 201
    assert remote.hits["/ctx.jsonld"] == 1
    body = limited.get(f"{E}/urn:ngsi-ld:Building:1", headers=link(url)).json()
    assert body["type"] == "Building"
    assert "floors" in body
    expanded = limited.get(f"{E}/urn:ngsi-ld:Building:1").json()
    assert expanded["type"] == "https://example.org/Building"
    details = limited.get(f"{C}?details=true&kind=Cached").json()
    assert url in [d["URL"] for d in details]


def test_unretrievable_and_malformed_contexts(limited: TestClient, remote: ContextServer) -> None:
    for path, status in [
        ("/missing.jsonld", 503),
        ("/slow.jsonld", 503),
        ("/big.jsonld", 503),
        ("/broken.jsonld", 400),
        ("/nocontext.jsonld", 400),
    ]:
        r = limited.post(E, json=building(), headers={**JSON, **link(remote.url + path)})
        assert r.status_code == status, path
        if status == 503:
            assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
    assert limited.get(f"{E}/urn:ngsi-ld:Building:1").status_code == 404


def test_preloaded_contexts_are_never_fetched(tmp_path: Path, remote: ContextServer) -> None:
    url = remote.url + "/ctx.jsonld"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "local.jsonld").write_text(
        json.dumps({"@context": {"Building": "https://example.org/local#Building"}})
    )
    preload = tmp_path / "preload.json"
    preload.write_text(json.dumps({url: "ctx/local.jsonld"}))
    with TestClient(create_app(make_settings(tmp_path, context_preload=preload))) as client:
        assert client.post(E, json=building(), headers={**JSON, **link(url)}).status_code == 201
        assert (
            client.get(f"{E}/urn:ngsi-ld:Building:1").json()["type"]
            == "https://example.org/local#Building"
        )
    assert remote.hits == {}


def test_inline_contexts_with_arrays_and_scoped_terms(client: TestClient) -> None:
    ctx = [
        {"ex": "https://example.org/"},
        {
            "Building": {
                "@id": "ex:Building",
                "@context": {"floors": "https://example.org/building#floors"},
            }
        },
    ]
    r = client.post(E, json={**building(), "@context": ctx}, headers=LD)
    assert r.status_code == 201
    expanded = client.get(f"{E}/urn:ngsi-ld:Building:1").json()
    assert expanded["type"] == "https://example.org/Building"
    assert "https://example.org/building#floors" in expanded
    # an application/json response points at the inline context through an implicit URL
    r = client.post(
        "/ngsi-ld/v1/entities",
        json={**building("urn:ngsi-ld:Building:2"), "@context": ctx},
        headers=LD,
    )
    implicit = client.get(f"{C}?kind=ImplicitlyCreated").json()
    assert len(implicit) == 1
    served = client.get(C + "/" + implicit[0].rsplit("/", 1)[1]).json()
    assert served == {"@context": ctx}


def test_hosted_context_lifecycle(client: TestClient) -> None:
    r = client.post(C, json=CTX, headers=JSON)
    assert r.status_code == 201
    location = r.headers["location"]
    assert location.startswith("/ngsi-ld/v1/jsonldContexts/")
    assert client.get(location).json() == CTX
    details = client.get(location + "?details=true").json()
    assert details["kind"] == "Hosted"
    assert details["createdAt"].endswith("Z")
    # the hosted context is usable by URL without any network
    url = "http://127.0.0.1:1026" + location
    assert client.post(E, json=building(), headers={**JSON, **link(url)}).status_code == 201
    assert (
        client.get(f"{E}/urn:ngsi-ld:Building:1").json()["type"] == "https://example.org/Building"
    )
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.post(C, json={"no": "context"}, headers=JSON).status_code == 400
    assert client.get(f"{C}?kind=Other").status_code == 400
    assert client.get(f"{C}?details=maybe").status_code == 400


def test_core_context_cannot_be_deleted(client: TestClient) -> None:
    core = "https%3A%2F%2Furi.etsi.org%2Fngsi-ld%2Fv1%2Fngsi-ld-core-context-v1.8.jsonld"
    assert client.get(f"{C}/{core}?details=true").json()["kind"] == "Cached"
    assert client.delete(f"{C}/{core}").status_code == 400
    assert client.delete(f"{C}/{core}?reload=true").status_code == 204


def test_hosted_contexts_survive_restart(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as client:
        location = client.post(C, json=CTX, headers=JSON).headers["location"]
    with TestClient(create_app(s)) as client:
        assert client.get(location).json() == CTX


def test_a_tenants_contexts_stay_within_the_tenant(tmp_path: Path) -> None:
    """Hosted and ImplicitlyCreated contexts are listed, served and deleted only with the
    tenant that made them; after a restart too."""
    city = {"NGSILD-Tenant": "komae_city"}
    other = {"NGSILD-Tenant": "chofu_city"}
    ctx = {"避難所": "https://example.jp/ns/避難所", "収容人数": "https://example.jp/ns/収容人数"}
    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as client:
        location = client.post(C, json={"@context": ctx}, headers={**JSON, **city}).headers[
            "location"
        ]
        shelter = {
            "id": "urn:ngsi-ld:Shelter:hinanjo-1",
            "type": "避難所",
            "収容人数": {"type": "Property", "value": 120},
            "@context": [ctx, "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"],
        }
        assert client.post(E, json=shelter, headers={**LD, **city}).status_code == 201
    with TestClient(create_app(s)) as client:
        for kind in ("Hosted", "ImplicitlyCreated"):
            mine = client.get(f"{C}?kind={kind}", headers=city).json()
            assert len(mine) == 1, kind
            assert client.get(f"{C}?kind={kind}", headers=other).json() == []
            assert client.get(f"{C}?kind={kind}").json() == []  # the default tenant
        implicit = client.get(f"{C}?kind=ImplicitlyCreated", headers=city).json()[0]
        for path in (location, C + "/" + implicit.rsplit("/", 1)[1]):
            assert client.get(path, headers=other).status_code == 404
            assert client.get(path).status_code == 404
            assert client.delete(path, headers=other).status_code == 404
            assert client.get(path, headers=city).status_code == 200
        assert client.delete(location, headers=city).status_code == 204
        assert client.get(location, headers=city).status_code == 404
        # an application/json answer to a request with an inline context names, in its
        # Link header, the tenant's implicit context
        query = {"type": "Query", "entities": [{"type": "避難所"}], "@context": shelter["@context"]}
        r = client.post(
            "/ngsi-ld/v1/entityOperations/query",
            json=query,
            headers={**LD, **city, "Accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert [e["収容人数"]["value"] for e in r.json()] == [120]
        linked = r.headers["Link"].split(">", 1)[0].lstrip("<")
        assert linked == implicit
        cached = client.get(f"{C}?kind=Cached", headers=other).json()
        assert "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld" in cached
