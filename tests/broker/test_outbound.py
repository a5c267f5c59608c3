"""The outbound policy, on real connections to listeners on 127.0.0.1.

Loopback is allowed by the default policy (a hub and its receivers often share a
machine), so the tests that need a refused destination put 127.0.0.0/8 and ::1 on the
deny list: a listener there then stands for a host the hub must not reach.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import httpx
import pytest

from broker.outbound import (
    DEFAULT_DENY,
    OutboundPolicy,
    OutboundRefused,
    Rules,
    policy_resolver,
    policy_transport,
)

pytestmark = pytest.mark.anyio

LOOPBACK_DENIED = OutboundPolicy.build(deny=[*DEFAULT_DENY, "127.0.0.0/8", "::1"])


class Listener:
    """An HTTP server on 127.0.0.1 that records the Host header of every request."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hosts.append(self.headers.get("Host", ""))
                body = "避難所の一覧".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def refusal(policy: OutboundPolicy, host: str, ip: str, port: int = 80) -> str | None:
    return policy.address_refusal(host, ipaddress.ip_address(ip), port)


def test_the_default_deny_list() -> None:
    policy = OutboundPolicy.build()
    for ip in (
        "169.254.169.254",  # cloud metadata
        "::ffff:169.254.169.254",  # the same, IPv4-mapped
        "fe80::1",
        "0.0.0.0",
        "::",
        "224.0.0.251",
        "ff02::1",
    ):
        assert refusal(policy, "shelter.example.jp", ip) is not None, ip
    for ip in ("127.0.0.1", "10.1.2.3", "203.0.113.7", "2001:db8::1"):
        assert refusal(policy, "shelter.example.jp", ip) is None, ip


def test_allow_rules_by_name_domain_and_network() -> None:
    policy = OutboundPolicy.build(allow=["10.0.0.0/8", ".city.example.jp", "ctx.example.org"])
    assert refusal(policy, "gis.city.example.jp", "203.0.113.7") is None
    assert refusal(policy, "ctx.example.org", "203.0.113.8") is None
    assert refusal(policy, "internal", "10.20.30.40") is None
    assert refusal(policy, "other.example.org", "203.0.113.9") is not None
    # deny wins over allow
    assert refusal(policy, "gis.city.example.jp", "169.254.169.254") is not None
    with pytest.raises(ValueError, match="http://x"):
        Rules.parse(["http://x"])


def test_self_is_the_listening_address_and_the_public_url() -> None:
    policy = OutboundPolicy.build(
        listen_host="127.0.0.1", listen_port=1026, public_url="https://hub.city.example.jp"
    )
    assert refusal(policy, "127.0.0.1", "127.0.0.1", 1026) is not None
    assert refusal(policy, "127.0.0.1", "127.0.0.1", 1027) is None
    assert refusal(policy, "hub.city.example.jp", "203.0.113.7", 443) is not None
    anywhere = OutboundPolicy.build(listen_host="0.0.0.0", listen_port=1026)
    assert refusal(anywhere, "localhost", "127.0.0.5", 1026) is not None
    assert refusal(anywhere, "localhost", "::1", 1026) is not None
    assert refusal(anywhere, "localhost", "127.0.0.5", 8080) is None
    without_self = OutboundPolicy.build(deny=[], listen_host="127.0.0.1", listen_port=1026)
    assert refusal(without_self, "127.0.0.1", "127.0.0.1", 1026) is None


async def test_creation_time_check_of_urls() -> None:
    policy = OutboundPolicy.build(listen_host="127.0.0.1", listen_port=1026)
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://127.0.0.1:1026/ngsi-ld/v1/entities",
        "http://localhost:1026/ngsi-ld/v1/entities",  # by what the name resolves to
        "mqtt://169.254.10.1/避難所",
    ):
        with pytest.raises(OutboundRefused):
            await policy.check_url(url, ("http", "https", "mqtt", "mqtts"))
    # a name that does not resolve (yet) is checked when connecting, not refused now
    await policy.check_url("http://shelter.invalid/notify")
    await policy.check_url("http://127.0.0.1:8080/notify")
    with pytest.raises(ValueError, match="scheme"):
        await policy.check_url("ftp://127.0.0.1/")


def test_check_host_resolves_and_filters() -> None:
    assert "127.0.0.1" in OutboundPolicy.build().check_host("localhost", 1883)
    with pytest.raises(OutboundRefused):
        LOOPBACK_DENIED.check_host("localhost", 1883)


async def test_httpx_transport_checks_the_resolved_address(listener: Listener) -> None:
    url = f"http://localhost:{listener.port}/避難所"
    async with httpx.AsyncClient(transport=policy_transport(OutboundPolicy.build())) as client:
        response = await client.get(url)
    assert response.text == "避難所の一覧"
    assert listener.hosts == [f"localhost:{listener.port}"]  # the Host header is the URL's
    async with httpx.AsyncClient(transport=policy_transport(LOOPBACK_DENIED)) as client:
        with pytest.raises(OutboundRefused, match=r"127\.0\.0|::1"):
            await client.get(url)
        with pytest.raises(OutboundRefused):
            await client.get(f"http://127.0.0.1:{listener.port}/")
    # the refusals came before any connection: the listener saw the first request only
    assert len(listener.hosts) == 1


async def test_aiohttp_resolver_hands_out_checked_addresses_only(listener: Listener) -> None:
    url = f"http://localhost:{listener.port}/避難所"
    resolver = policy_resolver(OutboundPolicy.build())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session,
        session.get(url) as response,
    ):
        assert await response.text() == "避難所の一覧"
    resolver = policy_resolver(LOOPBACK_DENIED)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(url)
    assert isinstance(caught.value.os_error, OutboundRefused)
    assert len(listener.hosts) == 1
