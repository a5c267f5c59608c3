"""MQTT delivery: one connection per MQTT broker, through :mod:`broker.transport.mqtt`.

An endpoint such as ``mqtts://user:secret@host:8883/city/parking`` names a broker
(host, port, TLS, credentials, protocol version) and a topic. Every broker gets one
:class:`~broker.transport.mqtt.MqttClient`, opened on first use and reused by every
later publish to that broker; once the connection drops, the next publish opens a new
one (the transport's :meth:`~broker.transport.mqtt.MqttClient.connect` does not
reconnect by itself, so a dead connection never lingers). Every operation is bounded
by the pool's timeout.

Credentials never appear in logs or error messages: :attr:`MqttTarget.display` is
the endpoint without its userinfo.

Every connection passes the outbound policy (:mod:`broker.outbound`) when it is made:
the broker's name is resolved and checked, and a plain ``mqtt://`` connection goes to
the checked address itself, so a name that resolves elsewhere later (DNS rebinding)
cannot redirect it. An ``mqtts://`` connection is made by name after the same check:
the certificate is verified against that name, which another host cannot present.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import unquote, urlsplit

from broker.outbound import OutboundPolicy, OutboundRefused, ResolutionFailed
from broker.transport.mqtt import (
    MQTT_VERSIONS,
    MqttAddressError,
    MqttClient,
    MqttError,
    MqttServer,
    display,
    parse_server,
)

__all__ = ["DEFAULT_VERSION", "BrokerKey", "MqttError", "MqttPool", "MqttTarget", "parse_target"]

log = logging.getLogger("renkei.notify")

DEFAULT_VERSION = "mqtt3.1.1"
KEEPALIVE = 60


@dataclass(frozen=True)
class BrokerKey:
    """What identifies one connection: publishes with equal keys share it."""

    host: str
    port: int
    tls: bool
    version: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return display(self.host, self.port, self.tls)

    @property
    def server(self) -> MqttServer:
        return MqttServer(self.host, self.port, self.tls, self.username, self.password)


@dataclass(frozen=True)
class MqttTarget:
    broker: BrokerKey
    topic: str
    qos: int = 0
    retain: bool = False

    @property
    def display(self) -> str:
        return f"{self.broker.display}/{self.topic}"


def parse_target(
    uri: str,
    notifier_info: Iterable[tuple[str, str]] = (),
    *,
    topic: str | None = None,
    retain: bool = False,
) -> MqttTarget:
    """Read an ``mqtt(s)://[user[:password]@]host[:port]/topic`` endpoint.

    ``notifier_info`` may hold ``MQTT-QoS`` (0, 1, 2; default 0) and ``MQTT-Version``
    (``mqtt3.1.1``, the default, or ``mqtt5.0``). ``topic``, when given, is the topic as
    it is (NGSI v2 names it apart from a URL without a path). Raises a non-retryable
    :class:`MqttError` for anything malformed.
    """
    try:
        server = parse_server(uri)
    except MqttAddressError as exc:
        raise MqttError(f"MQTT endpoint: {exc}", retryable=False) from None
    parts = urlsplit(uri)
    if topic is None:
        topic = unquote(parts.path.removeprefix("/"))
    elif parts.path not in ("", "/"):
        raise MqttError(f"MQTT endpoint {server.display} has a path and a topic", retryable=False)
    shown = f"{server.display}/{topic}"
    if not topic:
        raise MqttError(f"MQTT endpoint {shown} has no topic", retryable=False)
    if parts.query or parts.fragment or "#" in uri or "?" in uri:
        raise MqttError(f"MQTT endpoint {shown} cannot have a query or fragment", retryable=False)
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise MqttError(f"MQTT topic {topic!r} cannot be published to", retryable=False)
    info = {key.lower(): value.strip() for key, value in notifier_info}
    qos_text = info.get("mqtt-qos", "0")
    if qos_text not in ("0", "1", "2"):
        raise MqttError(f"MQTT-QoS must be 0, 1 or 2, not {qos_text!r}", retryable=False)
    version = info.get("mqtt-version", DEFAULT_VERSION)
    if version not in MQTT_VERSIONS:
        raise MqttError(
            f"MQTT-Version must be one of {', '.join(MQTT_VERSIONS)}, not {version!r}",
            retryable=False,
        )
    broker = BrokerKey(
        server.host, server.port, server.tls, version, server.username, server.password
    )
    return MqttTarget(broker, topic, int(qos_text), retain)


class MqttPool:
    """One connection per :class:`BrokerKey`, opened on demand and reopened once dropped."""

    def __init__(self, timeout: float = 10.0, policy: OutboundPolicy | None = None) -> None:
        self.timeout = timeout
        self.policy = policy or OutboundPolicy()
        self.connections_opened = 0
        self._clients: dict[BrokerKey, MqttClient] = {}
        self._locks: dict[BrokerKey, asyncio.Lock] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections currently up (``connections_opened`` counts every one ever made)."""
        return sum(1 for client in self._clients.values() if client.connected)

    @property
    def clients(self) -> list[MqttClient]:
        """The connections made and not yet replaced, up or down."""
        return list(self._clients.values())

    async def publish(
        self, target: MqttTarget, payload: bytes, *, content_type: str | None = None
    ) -> None:
        if self._closed:
            raise MqttError("the MQTT sender is closed", retryable=False)
        try:
            async with asyncio.timeout(self.timeout):
                client = await self._client(target.broker)
                await client.publish(
                    target.topic,
                    payload,
                    target.qos,
                    content_type=content_type,
                    retain=target.retain,
                )
        except TimeoutError:
            raise MqttError(
                f"no answer from {target.broker.display} within {self.timeout:g}s", retryable=True
            ) from None

    async def _client(self, key: BrokerKey) -> MqttClient:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            client = self._clients.get(key)
            if client is not None and client.connected:
                return client
            if client is not None:
                del self._clients[key]
                await client.close()
            client = MqttClient(
                await self._checked_server(key),
                version=cast(Literal["mqtt3.1.1", "mqtt5.0"], key.version),
                keepalive=KEEPALIVE,
                connect_timeout=self.timeout,
                logger=log,
            )
            await client.connect()  # leaves nothing open when it fails
            log.debug("MQTT connected to %s (%s)", key.display, key.version)
            self._clients[key] = client
            self.connections_opened += 1
            return client

    async def _checked_server(self, key: BrokerKey) -> MqttServer:
        """The server to connect to, after the outbound policy's check of its address."""
        try:
            addresses = await asyncio.to_thread(self.policy.check_host, key.host, key.port)
        except OutboundRefused:
            raise MqttError(
                f"{key.display}: refused by the outbound policy", retryable=False
            ) from None
        except ResolutionFailed:
            raise MqttError(f"{key.display}: cannot resolve the host", retryable=True) from None
        if not addresses:
            raise MqttError(f"{key.display}: refused by the outbound policy", retryable=False)
        server = key.server
        if key.tls:
            return server
        return MqttServer(addresses[0], server.port, False, server.username, server.password)

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients))
