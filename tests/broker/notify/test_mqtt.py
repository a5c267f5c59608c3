"""MQTT delivery to a real Mosquitto, observed by a paho subscriber."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from broker.notify.mqtt import MqttError, parse_target
from broker.notify.senders import DeliveryError, Endpoint, Senders
from tests.support import free_port
from tests.support_mqtt import MqttBroker, mosquitto, subscribe

pytestmark = [pytest.mark.anyio, pytest.mark.mqtt]

TOPIC = "ngsild-test-suite/topic"
LINK = '<https://example.org/ctx.jsonld>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
NOTIFICATION = {
    "id": "urn:ngsi-ld:Notification:1",
    "type": "Notification",
    "subscriptionId": "urn:ngsi-ld:Subscription:1",
    "notifiedAt": "2024-05-01T00:00:00.000Z",
    "data": [{"id": "urn:ngsi-ld:Building:1", "type": "Building", "floors": 5}],
}
BODY = orjson.dumps(NOTIFICATION)
HEADERS = {"Content-Type": "application/json", "Link": LINK}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MqttBroker]:
    with mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
async def senders() -> AsyncIterator[Senders]:
    s = Senders(http_timeout=2.0, mqtt_timeout=2.0)
    yield s
    await s.aclose()


@pytest.mark.parametrize(
    ("qos", "version"),
    [
        (None, None),
        ("0", "mqtt3.1.1"),
        ("1", "mqtt3.1.1"),
        ("2", "mqtt3.1.1"),
        ("0", "mqtt5.0"),
        ("1", "mqtt5.0"),
    ],
)
async def test_publishes_the_ngsi_ld_mqtt_message(
    senders: Senders, broker: MqttBroker, qos: str | None, version: str | None
) -> None:
    notifier_info = tuple(
        (key, value) for key, value in (("MQTT-QoS", qos), ("MQTT-Version", version)) if value
    )
    endpoint = Endpoint(
        broker.endpoint(TOPIC),
        receiver_info=(("test-receiver-key", "test-receiver-info"),),
        notifier_info=notifier_info,
    )
    with subscribe(broker, TOPIC, mqtt5=version == "mqtt5.0") as sub:
        await senders.send(endpoint, BODY, {**HEADERS, "NGSILD-Tenant": "komae"})
        [msg] = sub.wait(1)
    assert msg.topic == TOPIC
    assert msg.qos == int(qos or 0)
    message = orjson.loads(msg.payload)
    assert message == {
        "metadata": {
            "Content-Type": "application/json",
            "Link": LINK,
            "NGSILD-Tenant": "komae",
            "test-receiver-key": "test-receiver-info",
        },
        "body": NOTIFICATION,
    }
    if version == "mqtt5.0":
        assert msg.properties is not None
        assert getattr(msg.properties, "ContentType", None) == "application/json"


async def test_user_without_password_on_anonymous_broker(
    senders: Senders, broker: MqttBroker
) -> None:
    with subscribe(broker, TOPIC) as sub:
        await senders.send(Endpoint(broker.endpoint(TOPIC, user="user")), BODY, HEADERS)
        sub.wait(1)


async def test_user_and_password(senders: Senders, tmp_path: Path) -> None:
    users = {"user_with_password": "password"}
    with mosquitto(tmp_path, users=users) as broker:
        endpoint = Endpoint(broker.endpoint(TOPIC, "user_with_password", "password"))
        with subscribe(broker, TOPIC, user="user_with_password", password="password") as sub:
            await senders.send(endpoint, BODY, HEADERS)
            assert orjson.loads(sub.wait(1)[0].payload)["body"] == NOTIFICATION

        wrong = Endpoint(broker.endpoint(TOPIC, "user_with_password", "not-the-password"))
        with pytest.raises(DeliveryError) as caught:
            await senders.send(wrong, BODY, HEADERS)
        assert not caught.value.retryable
        assert "not-the-password" not in str(caught.value)

        anonymous = Endpoint(broker.endpoint(TOPIC))
        with pytest.raises(DeliveryError) as caught:
            await senders.send(anonymous, BODY, HEADERS)
        assert not caught.value.retryable


async def test_one_connection_per_broker(senders: Senders, broker: MqttBroker) -> None:
    qos1 = (("MQTT-QoS", "1"),)
    with subscribe(broker, "#") as sub:
        for i in range(10):
            await senders.send(Endpoint(broker.endpoint(f"a/{i}"), notifier_info=qos1), BODY, {})
        await asyncio.gather(
            *(senders.send(Endpoint(broker.endpoint("b")), BODY, {}) for _ in range(20))
        )
        sub.wait(30)
        assert senders.mqtt_connections_opened == 1

        # Another protocol version or user is another connection.
        v5 = Endpoint(broker.endpoint("c"), notifier_info=(("MQTT-Version", "mqtt5.0"),))
        await senders.send(v5, BODY, {})
        await senders.send(Endpoint(broker.endpoint("d", user="someone")), BODY, {})
        sub.wait(32)
        assert senders.mqtt_connections_opened == 3
        assert senders.mqtt.open_connections == 3


async def test_reconnects_after_the_broker_restarts(senders: Senders, broker: MqttBroker) -> None:
    endpoint = Endpoint(broker.endpoint(TOPIC), notifier_info=(("MQTT-QoS", "1"),))
    await senders.send(endpoint, BODY, HEADERS)
    [client] = senders.mqtt.clients
    broker.stop()
    async with asyncio.timeout(5):  # the sender notices the drop within milliseconds
        await client.wait_until(lambda c: not c.connected)
    assert senders.mqtt.open_connections == 0

    with pytest.raises(DeliveryError) as caught:  # still down
        await senders.send(endpoint, BODY, HEADERS)
    assert caught.value.retryable

    broker.start()
    with subscribe(broker, TOPIC) as sub:
        await senders.send(endpoint, BODY, HEADERS)
        sub.wait(1)
    assert senders.mqtt_connections_opened == 2


async def test_broker_down_is_retryable(senders: Senders) -> None:
    uri = f"mqtt://user:s3cret@127.0.0.1:{free_port()}/{TOPIC}"
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(uri), BODY, HEADERS)
    assert time.monotonic() - started < 2
    assert caught.value.retryable
    assert "s3cret" not in str(caught.value)
    assert senders.mqtt_connections_opened == 0


async def test_tls_failure_is_retryable_and_closes_the_socket(
    senders: Senders, broker: MqttBroker
) -> None:
    uri = f"mqtts://user:s3cret@{broker.host}:{broker.port}/{TOPIC}"  # plain listener
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(uri), BODY, HEADERS)
    assert caught.value.retryable
    assert "s3cret" not in str(caught.value)
    gc.collect()
    open_tls = [o for o in gc.get_objects() if isinstance(o, ssl.SSLSocket) and o.fileno() != -1]
    assert open_tls == []


async def test_silent_broker_times_out_retryably() -> None:
    with socket.socket() as listener:  # accepts TCP connections, never sends CONNACK
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"mqtt://127.0.0.1:{listener.getsockname()[1]}/{TOPIC}"
        senders = Senders(mqtt_timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(DeliveryError) as caught:
                await senders.send(Endpoint(uri), BODY, HEADERS)
            assert 0.4 < time.monotonic() - started < 1.5
            assert caught.value.retryable
        finally:
            await senders.aclose()


@pytest.mark.parametrize(
    ("uri", "notifier_info"),
    [
        ("mqtt://127.0.0.1:1883", ()),
        ("mqtt://127.0.0.1:1883/", ()),
        ("mqtt:///topic", ()),
        ("mqtt://127.0.0.1:1883/a/+/b", ()),
        ("mqtt://127.0.0.1:1883/a/#", ()),
        ("mqtt://127.0.0.1:99999/topic", ()),
        ("mqtt://127.0.0.1/topic", (("MQTT-QoS", "3"),)),
        ("mqtt://127.0.0.1/topic", (("MQTT-Version", "mqtt3.1"),)),
    ],
)
async def test_malformed_endpoint_is_final(
    senders: Senders, uri: str, notifier_info: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(uri, notifier_info=notifier_info), BODY, HEADERS)
    assert not caught.value.retryable


async def test_body_must_be_json(senders: Senders, broker: MqttBroker) -> None:
    with pytest.raises(DeliveryError) as caught:
        await senders.send(Endpoint(broker.endpoint(TOPIC)), b"not json", HEADERS)
    assert not caught.value.retryable


def test_parse_target() -> None:
    target = parse_target(
        "mqtts://us%40er:p%3Ass@broker.example.org/city/parking%20lots",
        (("mqtt-qos", "2"), ("MQTT-Version", "mqtt5.0")),
    )
    assert target.topic == "city/parking lots"
    assert target.qos == 2
    key = target.broker
    assert (key.host, key.port, key.tls, key.version) == (
        "broker.example.org",
        8883,
        True,
        "mqtt5.0",
    )
    assert (key.username, key.password) == ("us@er", "p:ss")
    assert "p:ss" not in repr(target)
    assert target.display == "mqtts://broker.example.org:8883/city/parking lots"
    assert parse_target("mqtt://h/t").broker.port == 1883
    with pytest.raises(MqttError):
        parse_target("http://h/t")


async def test_the_outbound_policy_is_checked_when_the_connection_is_made(
    broker: MqttBroker,
) -> None:
    """An MQTT endpoint whose name resolves to a refused address (loopback here, standing
    for an internal host after DNS rebinding) is not connected to: the delivery fails for
    good, and the subscriber on that broker receives nothing."""
    from broker.outbound import DEFAULT_DENY, OutboundPolicy

    policy = OutboundPolicy.build(deny=[*DEFAULT_DENY, "127.0.0.0/8", "::1"])
    denied = Senders(http_timeout=2.0, mqtt_timeout=2.0, policy=policy)
    allowed = Senders(http_timeout=2.0, mqtt_timeout=2.0)
    endpoint = Endpoint(broker.endpoint(TOPIC).replace("127.0.0.1", "localhost"))
    try:
        with subscribe(broker, TOPIC) as sub:
            with pytest.raises(DeliveryError) as caught:
                await denied.send(endpoint, BODY, HEADERS)
            assert not caught.value.retryable
            assert "outbound policy" in str(caught.value)
            assert denied.mqtt.connections_opened == 0
            # the same endpoint under the default policy is delivered: the bound for the
            # refused one is the delivery of this later message
            await allowed.send(endpoint, BODY, HEADERS)
            messages = sub.wait(1)
            assert len(messages) == 1
    finally:
        await denied.aclose()
        await allowed.aclose()
