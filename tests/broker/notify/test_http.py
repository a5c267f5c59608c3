"""HTTP delivery to a real local endpoint: headers, body, status classification."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import trustme

from broker.notify.senders import DeliveryError, Endpoint, Senders
from tests.broker.notify.http_endpoint import HttpEndpoint, http_endpoint_server
from tests.support import free_port

pytestmark = pytest.mark.anyio

LINK = '<https://example.org/ctx.jsonld>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
NOTIFICATION = {
    "id": "urn:ngsi-ld:Notification:1",
    "type": "Notification",
    "subscriptionId": "urn:ngsi-ld:Subscription:1",
    "notifiedAt": "2024-05-01T00:00:00.000Z",
    "data": [{"id": "urn:ngsi-ld:Building:1", "type": "Building"}],
}
BODY = orjson.dumps(NOTIFICATION)
HEADERS = {"Content-Type": "application/json", "Link": LINK, "NGSILD-Tenant": "komae"}


@pytest.fixture
async def senders() -> AsyncIterator[Senders]:
    s = Senders(http_timeout=2.0, mqtt_timeout=2.0)
    yield s
    await s.aclose()


async def test_post_carries_body_headers_and_receiver_info(
    senders: Senders, http_endpoint: HttpEndpoint
) -> None:
    endpoint = Endpoint(
        http_endpoint.url,
        receiver_info=(("X-Auth-Token", "abc123"), ("Content-Type", "text/plain")),
    )
    await senders.send(endpoint, BODY, HEADERS)
    [request] = http_endpoint.requests
    assert request.method == "POST"
    assert request.path == "/notify"
    assert orjson.loads(request.body) == NOTIFICATION
    assert request.headers["content-type"] == "application/json"  # not overridden
    assert request.headers["link"] == LINK
    assert request.headers["ngsild-tenant"] == "komae"
    assert request.headers["x-auth-token"] == "abc123"


async def test_content_type_defaults_to_accept(
    senders: Senders, http_endpoint: HttpEndpoint
) -> None:
    endpoint = Endpoint(http_endpoint.url, accept="application/ld+json")
    await senders.send(endpoint, BODY, {})
    assert http_endpoint.requests[0].headers["content-type"] == "application/ld+json"


async def test_connections_are_pooled(senders: Senders, http_endpoint: HttpEndpoint) -> None:
    for _ in range(5):
        await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)
    assert len(http_endpoint.requests) == 5
    assert len({r.client_port for r in http_endpoint.requests}) == 1


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (404, False), (410, False), (301, False), (429, True), (500, True), (503, True)],
)
async def test_status_classification(
    senders: Senders, http_endpoint: HttpEndpoint, status: int, retryable: bool
) -> None:
    http_endpoint.status = status
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    assert str(status) in str(caught.value)


async def test_any_2xx_is_success(senders: Senders, http_endpoint: HttpEndpoint) -> None:
    for status in (200, 201, 202, 204):
        http_endpoint.status = status
        await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)
    assert len(http_endpoint.requests) == 4


async def test_credentials_in_the_uri_go_as_basic_auth(
    senders: Senders, http_endpoint: HttpEndpoint
) -> None:
    uri = http_endpoint.url.replace("://", "://alice:s3cret@")
    await senders.send(Endpoint(uri), BODY, HEADERS)
    [request] = http_endpoint.requests
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode(
        "ascii"
    )


async def test_a_large_answer_is_not_read_whole(
    senders: Senders, http_endpoint: HttpEndpoint
) -> None:
    http_endpoint.status = 200
    http_endpoint.answer = b"x" * (8 * 1024 * 1024)
    await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)
    http_endpoint.answer = b""
    await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)  # on a new connection
    assert len(http_endpoint.requests) == 2
    assert http_endpoint.requests[0].client_port != http_endpoint.requests[1].client_port


async def test_cookies_an_endpoint_sets_are_not_sent_back(
    senders: Senders, http_endpoint: HttpEndpoint
) -> None:
    http_endpoint.answer_headers = {"Set-Cookie": "session=of-one-subscriber; Path=/"}
    by_name = http_endpoint.url.replace("127.0.0.1", "localhost")  # cookies need a host name
    await senders.send(Endpoint(by_name), BODY, HEADERS)
    await senders.send(Endpoint(by_name), BODY, HEADERS)
    assert [r.headers.get("cookie") for r in http_endpoint.requests] == [None, None]


async def test_a_notification_is_built_when_a_connection_is_free(
    http_endpoint: HttpEndpoint,
) -> None:
    """With the origin's one connection busy, the next notification is built only once
    it is free, so it can still take in what changed meanwhile."""
    http_endpoint.delay = 0.3
    senders = Senders(http_timeout=5.0, http_connections=1)
    built_at: list[float] = []

    def build() -> tuple[bytes, dict[str, str]]:
        built_at.append(time.monotonic())
        return BODY, HEADERS

    try:
        first = asyncio.create_task(senders.send(Endpoint(http_endpoint.url), BODY, HEADERS))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(senders.send_built(Endpoint(http_endpoint.url), build))
        await asyncio.sleep(0.1)
        assert built_at == []  # still waiting for the connection
        await first
        finished = time.monotonic()
        await second
        assert len(built_at) == 1
        assert built_at[0] <= finished + 0.05
        assert len(http_endpoint.requests) == 2
    finally:
        await senders.aclose()


async def test_https_endpoints_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    city_ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    city_ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    with http_endpoint_server(server_tls) as endpoint:
        assert endpoint.url.startswith("https://")
        untrusting = Senders(http_timeout=2.0)
        try:
            with pytest.raises(DeliveryError) as caught:
                await untrusting.send(Endpoint(endpoint.url), BODY, HEADERS)
            assert "certificate" in str(caught.value).lower()
        finally:
            await untrusting.aclose()
        assert endpoint.requests == []

        ca_file = tmp_path / "city-ca.pem"
        city_ca.cert_pem.write_to_path(str(ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the operator trusts the city CA
        trusting = Senders(http_timeout=2.0)
        try:
            await trusting.send(Endpoint(endpoint.url), BODY, HEADERS)
        finally:
            await trusting.aclose()
        [request] = endpoint.requests
        assert orjson.loads(request.body) == NOTIFICATION


async def test_connection_refused_is_retryable_and_hides_credentials(senders: Senders) -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}/notify"
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(uri), BODY, HEADERS)
    assert caught.value.retryable
    assert caught.value.status is None
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)


async def test_silent_endpoint_times_out_retryably() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}/notify"
        senders = Senders(http_timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                await senders.send(Endpoint(uri), BODY, HEADERS)
            assert time.monotonic() - started < 2
            assert caught.value.retryable
        finally:
            await senders.aclose()


@pytest.mark.parametrize(
    "uri",
    ["ftp://127.0.0.1/notify", "urn:ngsi-ld:Endpoint:1", "", "notify", "mailto:a@example.org"],
)
async def test_unsupported_scheme_is_final(senders: Senders, uri: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(uri), BODY, HEADERS)
    assert not caught.value.retryable


async def test_unsendable_header_is_final(senders: Senders, http_endpoint: HttpEndpoint) -> None:
    endpoint = Endpoint(http_endpoint.url, receiver_info=(("X-Name", "小江戸"),))
    with pytest.raises(DeliveryError) as caught:
        await senders.send(endpoint, BODY, HEADERS)
    assert not caught.value.retryable
    assert http_endpoint.requests == []


async def test_closed_senders_refuse(http_endpoint: HttpEndpoint) -> None:
    senders = Senders()
    await senders.aclose()
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(http_endpoint.url), BODY, HEADERS)
    assert not caught.value.retryable
