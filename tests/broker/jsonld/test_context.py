"""Context resolution (NGSI-LD clause 5.5.7, JSON-LD 1.1): term maps, expansion and
compaction, preloaded contexts for isolated networks, nested and scoped contexts.

A remote context is served by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from broker.errors import BadRequestData, LdContextNotAvailable
from broker.jsonld.context import CORE_CONTEXT_URL, ContextResolver, load_preload_map
from broker.outbound import OutboundPolicy

pytestmark = pytest.mark.anyio

NS = "https://renkei.example/ns/"
KOMAE: dict[str, Any] = {
    "@context": {
        "避難所": f"{NS}避難所",
        "名称": f"{NS}名称",
        "所在地区": {"@id": f"{NS}所在地区", "@type": "@id"},
    }
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def resolver() -> AsyncIterator[ContextResolver]:
    r = ContextResolver(policy=OutboundPolicy.build(deny=[]))  # loopback server allowed
    yield r
    await r.aclose()


@pytest.fixture
def served() -> Iterator[tuple[str, list[str]]]:
    """A context server on 127.0.0.1: (base URL, paths requested)."""
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            if self.path != "/komae.jsonld":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(KOMAE, ensure_ascii=False).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/ld+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


async def test_core_terms_expand_and_compact_both_ways(resolver: ContextResolver) -> None:
    tm = await resolver.term_map(None)
    assert tm.context is None
    location = tm.expand("location")
    assert location == "https://uri.etsi.org/ngsi-ld/location"
    assert tm.compact(location) == "location"
    # a term the context does not define lands under the core context's @vocab
    assert tm.compact(tm.expand("収容人数")) == "収容人数"


async def test_inline_context_maps_japanese_terms(resolver: ContextResolver) -> None:
    tm = await resolver.term_map(KOMAE["@context"])
    assert tm.expand("避難所") == f"{NS}避難所"
    assert tm.compact(f"{NS}名称") == "名称"
    assert tm.expand("location") == "https://uri.etsi.org/ngsi-ld/location"  # core still there


async def test_remote_context_is_fetched_once_and_cached(
    resolver: ContextResolver, served: tuple[str, list[str]]
) -> None:
    base, requested = served
    url = f"{base}/komae.jsonld"
    first = await resolver.term_map(url)
    again = await resolver.term_map(url)
    assert first.expand("名称") == again.expand("名称") == f"{NS}名称"
    assert requested == ["/komae.jsonld"]


async def test_a_missing_remote_context_is_503_not_500(
    resolver: ContextResolver, served: tuple[str, list[str]]
) -> None:
    base, _ = served
    with pytest.raises(LdContextNotAvailable) as err:
        await resolver.term_map(f"{base}/無い.jsonld")
    assert err.value.status == 503


async def test_preloaded_context_needs_no_network(tmp_path: Path) -> None:
    (tmp_path / "komae.jsonld").write_text(json.dumps(KOMAE, ensure_ascii=False), "utf-8")
    (tmp_path / "preload.json").write_text(
        json.dumps({"https://city.komae.example/komae.jsonld": "komae.jsonld"}), "utf-8"
    )
    resolver = ContextResolver(
        preload=load_preload_map(tmp_path / "preload.json"), fetch_mode="off"
    )
    try:
        tm = await resolver.term_map("https://city.komae.example/komae.jsonld")
        assert tm.expand("避難所") == f"{NS}避難所"
        with pytest.raises(LdContextNotAvailable):
            await resolver.term_map("https://elsewhere.example/other.jsonld")
    finally:
        await resolver.aclose()


def test_a_broken_preload_file_says_which(tmp_path: Path) -> None:
    (tmp_path / "preload.json").write_text(
        json.dumps({"https://city.komae.example/c.jsonld": "missing.jsonld"}), "utf-8"
    )
    with pytest.raises(ValueError, match=r"city\.komae\.example/c\.jsonld"):
        load_preload_map(tmp_path / "preload.json")


async def test_nested_array_of_contexts_later_terms_win(resolver: ContextResolver) -> None:
    tm = await resolver.term_map(
        [CORE_CONTEXT_URL, KOMAE["@context"], {"名称": "https://schema.org/name"}]
    )
    assert tm.expand("名称") == "https://schema.org/name"
    assert tm.expand("避難所") == f"{NS}避難所"


async def test_scoped_context_applies_inside_its_term(resolver: ContextResolver) -> None:
    tm = await resolver.term_map(
        {
            "住所": {
                "@id": f"{NS}住所",
                "@context": {"郵便番号": "https://schema.org/postalCode"},
            },
            "郵便番号": f"{NS}郵便番号",
        }
    )
    assert tm.expand("郵便番号") == f"{NS}郵便番号"
    assert tm.scoped("住所").expand("郵便番号") == "https://schema.org/postalCode"
    assert tm.scoped("名称") is tm  # no scoped context: the same map


async def test_an_invalid_context_is_400(resolver: ContextResolver) -> None:
    with pytest.raises(BadRequestData):
        await resolver.term_map({"名称": {"@id": 42}})
