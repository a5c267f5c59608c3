"""The paho-to-asyncio MQTT bridge against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import trustme

from broker.transport.mqtt import (
    Message,
    MqttClient,
    MqttError,
    MqttServer,
    Version,
    parse_server,
)
from tests.support import free_port
from tests.support_mqtt import MqttBroker, amqtt_broker, mosquitto

pytestmark = [pytest.mark.anyio, pytest.mark.mqtt]

TOPIC = "小金井市/環境センサー/気温"
READING = {"地点": "本町三丁目", "気温": 18.5, "天気": "晴れ"}
#: how long a negative check waits after the positive one before it
QUIET = 0.5


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MqttBroker]:
    with mosquitto(tmp_path) as b:
        yield b


class Inbox:
    """Messages handed over by a client, with an event to wait on."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    def __call__(self, batch: list[Message]) -> None:
        self.messages.extend(batch)
        self._arrived.set()

    async def wait(self, count: int) -> list[Message]:
        """The first ``count`` messages; fails if fewer arrive within 5 s."""
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages


@asynccontextmanager
async def running(
    client: MqttClient, handler: Callable[[list[Message]], None] | None = None
) -> AsyncIterator[MqttClient]:
    await client.start(handler)
    try:
        yield client
    finally:
        await client.close()


async def until(client: MqttClient, predicate: Callable[[MqttClient], bool], bound: float) -> None:
    async with asyncio.timeout(bound):
        await client.wait_until(predicate)


def sockets() -> int:
    """Sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def connected(c: MqttClient) -> bool:
    return c.connected


def disconnected(c: MqttClient) -> bool:
    return not c.connected


@pytest.mark.parametrize("version", ["mqtt3.1.1", "mqtt5.0"])
async def test_publish_and_subscribe_round_trip(broker: MqttBroker, version: Version) -> None:
    inbox = Inbox()
    subscriber = MqttClient(parse_server(broker.url), version=version)
    subscriber.subscribe(["小金井市/+/気温"], qos=1)
    async with running(subscriber, inbox):
        await until(subscriber, connected, 5)
        publisher = MqttClient(parse_server(broker.url), version=version)
        await publisher.connect()
        try:
            for qos in (0, 1, 2):
                payload = orjson.dumps({**READING, "qos": qos})
                await publisher.publish(TOPIC, payload, qos, content_type="application/json")
        finally:
            await publisher.close()
        messages = await inbox.wait(3)
    assert [m.topic for m in messages] == [TOPIC] * 3
    assert [orjson.loads(m.payload) for m in messages] == [
        {**READING, "qos": qos} for qos in (0, 1, 2)
    ]
    assert [m.qos for m in messages] == [0, 1, 1]  # granted at most the subscription's QoS
    assert subscriber.mqtt5 is (version == "mqtt5.0")


async def test_shared_subscription_splits_the_messages(broker: MqttBroker) -> None:
    inbox = Inbox()  # what both clients receive
    got: list[list[Message]] = [[], []]

    def handler(n: int) -> Callable[[list[Message]], None]:
        def handle(batch: list[Message]) -> None:
            got[n].extend(batch)
            inbox(batch)

        return handle

    clients = [MqttClient(parse_server(broker.url), version="mqtt5.0") for _ in got]
    for client in clients:
        client.subscribe(["小金井市/+/気温"], qos=1, share_group="renkei")
        assert client.shared
    async with running(clients[0], handler(0)), running(clients[1], handler(1)):
        for client in clients:
            await until(client, connected, 5)
        publisher = MqttClient(parse_server(broker.url))
        await publisher.connect()
        try:
            for i in range(20):
                await publisher.publish(TOPIC, orjson.dumps({"番号": i}), 1)
        finally:
            await publisher.close()
        await inbox.wait(20)
        await asyncio.sleep(QUIET)  # no copy of a message reaches the other client
    received = sorted(orjson.loads(m.payload)["番号"] for m in inbox.messages)
    assert received == list(range(20))
    assert got[0]
    assert got[1]  # both took a share


async def test_plain_subscriptions_over_mqtt_311_with_a_share_group(broker: MqttBroker) -> None:
    inbox = Inbox()
    client = MqttClient(parse_server(broker.url), version="mqtt3.1.1")
    client.subscribe([TOPIC], share_group="renkei")  # MQTT 3.1.1 has no shared subscriptions
    assert not client.shared
    async with running(client, inbox):
        await until(client, connected, 5)
        publisher = MqttClient(parse_server(broker.url))
        await publisher.connect()
        try:
            await publisher.publish(TOPIC, b"\xe6\x99\xb4", 1)
        finally:
            await publisher.close()
        [message] = await inbox.wait(1)
    assert message.payload.decode() == "晴"


async def test_refused_login_is_reported_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="renkei.mqtt")
    with mosquitto(tmp_path, users={"小金井": "正しい合言葉"}) as broker:
        good = MqttClient(MqttServer(broker.host, broker.port, False, "小金井", "正しい合言葉"))
        await good.connect()
        assert good.connected
        await good.close()

        wrong = MqttServer(broker.host, broker.port, False, "小金井", "間違った合言葉")
        with pytest.raises(MqttError) as caught:
            await MqttClient(wrong).connect()
        assert not caught.value.retryable
        assert caught.value.reason in (0x86, 0x87)  # bad user name or password / not authorised
        assert "間違った合言葉" not in str(caught.value)

        client = MqttClient(wrong, version="mqtt5.0")
        async with running(client):
            await until(client, lambda c: c.failures >= 1, 5)
            assert not client.connected
            assert client.last_error is not None
            assert "refused" in client.last_error
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            f"MQTT broker {broker.url}: connection refused by the broker: Not authorized;"
            " retrying with backoff"
        ]
        assert "間違った合言葉" not in caplog.text


async def test_broker_down_is_retryable_and_names_no_password() -> None:
    server = parse_server(f"mqtt://市役所:秘密の合言葉@127.0.0.1:{free_port()}")
    with pytest.raises(MqttError) as caught:
        await MqttClient(server).connect()
    assert caught.value.retryable
    assert "秘密の合言葉" not in str(caught.value)
    assert "mqtt://127.0.0.1" in str(caught.value)


async def test_reconnects_when_the_broker_comes_back(broker: MqttBroker) -> None:
    inbox = Inbox()
    client = MqttClient(parse_server(broker.url), client_id="小金井-iota", persistent=True)
    client.subscribe([TOPIC], qos=1)
    async with running(client, inbox):
        await until(client, connected, 5)
        broker.stop()
        await until(client, disconnected, 5)
        with pytest.raises(MqttError) as caught:
            await client.publish(TOPIC, b"{}", 1)
        assert caught.value.retryable
        assert not client.publish_nowait(TOPIC, b"{}")

        broker.start()  # the same port; its sessions did not survive (persistence false)
        await until(client, connected, 15)
        assert client.connections == 2
        await client.publish(TOPIC, orjson.dumps(READING), 1)  # the subscription is back
        [message] = await inbox.wait(1)
    assert orjson.loads(message.payload) == READING


async def test_close_leaves_no_socket_open(broker: MqttBroker) -> None:
    before = sockets()
    inbox = Inbox()
    subscriber = MqttClient(parse_server(broker.url), version="mqtt5.0", manual_ack=True)
    subscriber.subscribe([TOPIC], qos=1)
    await subscriber.start(inbox)
    await until(subscriber, connected, 5)
    publisher = MqttClient(parse_server(broker.url))
    await publisher.connect()
    await publisher.publish(TOPIC, orjson.dumps(READING), 1)
    [message] = await inbox.wait(1)
    ack = subscriber.acker(message)
    assert ack is not None
    ack()
    assert sockets() > before
    await publisher.close()
    await subscriber.close()
    assert sockets() == before
    assert not subscriber.connected


async def test_failed_tls_handshakes_leave_no_socket_open(broker: MqttBroker) -> None:
    before = sockets()
    plain = MqttServer(broker.host, broker.port, tls=True)  # TLS against a plain listener
    for _ in range(3):
        with pytest.raises(MqttError) as caught:
            await MqttClient(plain).connect()
        assert caught.value.retryable
    assert sockets() == before

    client = MqttClient(plain)  # paho's own reconnections, on its network thread
    await client.start()
    try:
        await until(client, lambda c: c.failures >= 1, 5)
        after_one = sockets()
        await until(client, lambda c: c.failures >= 2, 10)
        assert sockets() == after_one
        assert client.last_error is not None
    finally:
        await client.close()
    assert sockets() == before


async def test_cancelled_connect_leaves_no_socket_open() -> None:
    before = sockets()
    with socket.socket() as listener:  # accepts TCP connections, never sends CONNACK
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = MqttServer("127.0.0.1", listener.getsockname()[1], tls=False)
        client = MqttClient(server)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.connect()
        await client.close()
        assert sockets() == before + 1  # the listener only


@pytest.mark.parametrize("background", [False, True])
async def test_auto_falls_back_to_mqtt_311(tmp_path: Path, background: bool) -> None:
    inbox = Inbox()
    with amqtt_broker(tmp_path) as old:  # refuses MQTT 5 as "unacceptable protocol version"
        client = MqttClient(parse_server(old.url), version="auto")
        client.subscribe([TOPIC], qos=1, share_group="renkei")
        if background:
            await client.start(inbox)
            await until(client, connected, 15)
        else:
            await client.connect()
        try:
            assert client.mqtt5 is False
            assert not client.shared  # plain subscriptions over MQTT 3.1.1
            await client.publish(TOPIC, orjson.dumps(READING), 1)  # acknowledged
            if background:
                [message] = await inbox.wait(1)
                assert orjson.loads(message.payload) == READING
        finally:
            await client.close()

        explicit = MqttClient(parse_server(old.url), version="mqtt5.0")
        with pytest.raises(MqttError) as caught:
            await explicit.connect()
        assert explicit.mqtt5
        assert caught.value.reason == 0x84  # unsupported protocol version
        assert not caught.value.retryable


async def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    city_ca, other_ca = trustme.CA(), trustme.CA()
    issued = city_ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(certfile))
    issued.private_key_pem.write_to_path(str(keyfile))
    trusted, untrusted = tmp_path / "市のCA.pem", tmp_path / "other-ca.pem"
    city_ca.cert_pem.write_to_path(str(trusted))
    other_ca.cert_pem.write_to_path(str(untrusted))
    with mosquitto(tmp_path / "tls", tls=(certfile, keyfile)) as secure:
        server = parse_server(f"mqtts://{secure.host}:{secure.port}")
        client = MqttClient(server, ca_file=str(trusted), version="mqtt5.0")
        await client.connect()
        try:
            await client.publish(TOPIC, orjson.dumps(READING), 1)
        finally:
            await client.close()

        before = sockets()
        with pytest.raises(MqttError) as caught:
            await MqttClient(server, ca_file=str(untrusted)).connect()
        assert caught.value.retryable
        assert "certificate verify failed" in str(caught.value)
        client = MqttClient(server, ca_file=str(untrusted))
        await client.start()
        try:
            await until(client, lambda c: c.failures >= 1, 5)
            assert client.last_error is not None
            assert "TLS certificate not trusted" in client.last_error
            assert "other-ca.pem" in client.last_error
        finally:
            await client.close()
        assert sockets() == before
