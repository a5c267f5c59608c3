"""MQTT delivery: one paho-mqtt client per MQTT broker, bridged to asyncio.

An endpoint such as ``mqtts://user:secret@host:8883/city/parking`` names a broker
(host, port, TLS, credentials, protocol version) and a topic. Every broker gets one
:class:`_Session`: a paho client whose network loop runs in its own thread
(``loop_start``). A session is opened on first use and reused by every later publish
to that broker; once the connection drops, the next publish opens a new one (paho's
own reconnection is switched off, so a dead session never lingers).

paho calls back from its thread; results cross to the event loop through
``call_soon_threadsafe`` on asyncio futures: one for the CONNACK, one per in-flight
message id. Every operation is bounded by the pool's timeout.

Credentials never appear in logs or error messages: :attr:`MqttTarget.display` is
the endpoint without its userinfo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("renkei.notify")

MQTT_VERSIONS = {"mqtt3.1.1": MQTTProtocolVersion.MQTTv311, "mqtt5.0": MQTTProtocolVersion.MQTTv5}
DEFAULT_VERSION = "mqtt3.1.1"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
KEEPALIVE = 60
# CONNACK / PUBACK reason codes after which trying again later may succeed; any other
# refusal (bad credentials, not authorised, bad topic ...) needs the endpoint changed.
_TRANSIENT_REASONS = frozenset(
    {
        0x80,  # Unspecified error
        0x83,  # Implementation specific error
        0x88,  # Server unavailable
        0x89,  # Server busy
        0x97,  # Quota exceeded
        0x9F,  # Connection rate exceeded
    }
)

T = TypeVar("T")


class MqttError(Exception):
    """A publish failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


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
        return _display(self.host, self.port, self.tls)


def _display(host: str, port: int, tls: bool) -> str:
    """An MQTT broker's URL without credentials: the only form that is ever logged."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}"


class MqttAddressError(ValueError):
    """An MQTT URL that does not name a broker."""


@dataclass(frozen=True)
class MqttServer:
    """Where an MQTT broker is and how to log in to it (notifier and IoT agent alike)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return _display(self.host, self.port, self.tls)


def parse_server(url: str) -> MqttServer:
    """Read ``mqtt(s)://[user[:password]@]host[:port]``; credentials percent-decoded."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise MqttAddressError(f"not an MQTT URL: scheme {scheme!r}")
    try:
        host = parts.hostname
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise MqttAddressError(f"invalid MQTT address: {exc}") from None
    if not host:
        raise MqttAddressError("the MQTT URL has no host")
    return MqttServer(
        host,
        port,
        scheme == "mqtts",
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True)
class MqttTarget:
    broker: BrokerKey
    topic: str
    qos: int = 0

    @property
    def display(self) -> str:
        return f"{self.broker.display}/{self.topic}"


def parse_target(uri: str, notifier_info: Iterable[tuple[str, str]] = ()) -> MqttTarget:
    """Read an ``mqtt(s)://[user[:password]@]host[:port]/topic`` endpoint.

    ``notifier_info`` may hold ``MQTT-QoS`` (0, 1, 2; default 0) and ``MQTT-Version``
    (``mqtt3.1.1``, the default, or ``mqtt5.0``). Raises a non-retryable
    :class:`MqttError` for anything malformed.
    """
    try:
        server = parse_server(uri)
    except MqttAddressError as exc:
        raise MqttError(f"MQTT endpoint: {exc}", retryable=False) from None
    parts = urlsplit(uri)
    topic = unquote(parts.path.removeprefix("/"))
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
    return MqttTarget(broker, topic, int(qos_text))


def _refusal(what: str, reason: ReasonCode) -> MqttError:
    # paho reports MQTT 3.1.1 return codes as their MQTT 5.0 equivalents too.
    return MqttError(
        f"{what}: {reason} ({reason.value:#04x})", retryable=reason.value in _TRANSIENT_REASONS
    )


def _settle(fut: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)  # type: ignore[arg-type]


class _TlsContext(ssl.SSLContext):
    """System CAs with hostname checks; remembers the sockets it wraps, so that one
    whose TLS handshake failed is closed (paho leaves it open then)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.wrapped: list[ssl.SSLSocket] = []

    @classmethod
    def system_default(cls) -> _TlsContext:
        context = cls(ssl.PROTOCOL_TLS_CLIENT)
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.wrapped.append(sock)
        return sock


class _Session:
    """One paho client, from its CONNECT until the connection ends."""

    def __init__(self, key: BrokerKey, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.key = key
        self._loop = loop
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"renkei-{uuid.uuid4().hex[:16]}",
            protocol=MQTT_VERSIONS[key.version],
            reconnect_on_failure=False,
        )
        self.client.connect_timeout = timeout  # TCP connect and TLS handshake
        if key.username is not None:
            self.client.username_pw_set(key.username, key.password)
        self._tls: _TlsContext | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._connack: asyncio.Future[None] = loop.create_future()
        # Guards what paho's thread and the event loop both touch; never held while
        # calling into paho, so it cannot deadlock against paho's own locks.
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._acked_early: dict[int, ReasonCode] = {}
        self._alive = False
        self._started = False
        self._abandoned = False

    @property
    def alive(self) -> bool:
        return self._alive

    # -- paho thread -----------------------------------------------------------

    def _post(self, fut: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
        # A closed event loop raises RuntimeError: nobody is waiting any more then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, fut, result, error)

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._post(
                self._connack, None, _refusal(f"connection to {self.key.display} refused", reason)
            )
            return
        with self._lock:
            self._alive = True
        self._post(self._connack, None, None)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._alive = False
            pending, self._pending = self._pending, {}
        lost = f"connection to {self.key.display} lost ({reason})"
        log.debug("MQTT %s", lost)
        self._post(self._connack, None, MqttError(lost, retryable=True))
        for fut in pending.values():
            self._post(fut, None, MqttError(lost, retryable=True))

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:  # acknowledged before publish() returned its message id
                self._acked_early[mid] = reason
        if fut is not None:
            self._post(fut, reason, None)

    def _connect_blocking(self) -> None:
        if self.key.tls:  # loading the system CAs takes a while: not on the event loop
            self._tls = _TlsContext.system_default()
            self.client.tls_set_context(self._tls)
        try:
            self.client.connect(self.key.host, self.key.port, keepalive=KEEPALIVE)
        except BaseException:
            for sock in self._tls.wrapped if self._tls is not None else ():
                sock.close()
            raise
        self.client.loop_start()
        with self._lock:
            self._started = True
            abandoned = self._abandoned
        if abandoned:
            self.client.disconnect()

    # -- event loop ------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for the CONNACK; the caller bounds the time taken."""
        try:
            await asyncio.to_thread(self._connect_blocking)
            await self._connack
        except OSError as exc:
            raise MqttError(
                f"cannot connect to {self.key.display}: {exc}", retryable=True
            ) from None
        except ValueError as exc:
            raise MqttError(
                f"cannot connect to {self.key.display}: {exc}", retryable=False
            ) from None
        except BaseException:
            # Refused, timed out or cancelled: the network thread (when it got that
            # far) sends DISCONNECT and ends by itself.
            with self._lock:
                self._abandoned = True
                started = self._started
            if started:
                self.client.disconnect()
            raise
        log.debug("MQTT connected to %s (%s)", self.key.display, self.key.version)

    async def publish(
        self, topic: str, payload: bytes, qos: int, properties: Properties | None
    ) -> ReasonCode:
        try:
            info = self.client.publish(topic, payload, qos, properties=properties)
        except ValueError as exc:
            raise MqttError(f"cannot publish to {topic!r}: {exc}", retryable=False) from None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise MqttError(
                f"cannot publish to {self.key.display}/{topic}: {info.rc.name}",
                retryable=info.rc
                in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE),
            )
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        with self._lock:
            early = self._acked_early.pop(info.mid, None)
            if early is not None:
                return early
            if not self._alive:
                raise MqttError(f"connection to {self.key.display} lost", retryable=True)
            self._pending[info.mid] = fut
        try:
            return await fut
        except BaseException:
            # Lost, timed out or cancelled: this connection is not trusted any more
            # (a late acknowledgement must not match a reused message id), so the
            # next publish opens a new one.
            with self._lock:
                self._pending.pop(info.mid, None)
                self._alive = False
            self.client.disconnect()
            raise

    def _shutdown(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)


class MqttPool:
    """One session per :class:`BrokerKey`, opened on demand and reopened once dropped."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.connections_opened = 0
        self._sessions: dict[BrokerKey, _Session] = {}
        self._locks: dict[BrokerKey, asyncio.Lock] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections currently up (``connections_opened`` counts every one ever made)."""
        return sum(1 for session in self._sessions.values() if session.alive)

    async def publish(
        self, target: MqttTarget, payload: bytes, *, content_type: str | None = None
    ) -> None:
        if self._closed:
            raise MqttError("the MQTT sender is closed", retryable=False)
        properties = None
        if target.broker.version == "mqtt5.0" and content_type:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = content_type
        try:
            async with asyncio.timeout(self.timeout):
                session = await self._session(target.broker)
                reason = await session.publish(target.topic, payload, target.qos, properties)
        except TimeoutError:
            raise MqttError(
                f"no answer from {target.broker.display} within {self.timeout:g}s", retryable=True
            ) from None
        if reason.is_failure:
            raise _refusal(f"publish to {target.display} refused", reason)

    async def _session(self, key: BrokerKey) -> _Session:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and session.alive:
                return session
            if session is not None:
                del self._sessions[key]
                await session.close()
            session = _Session(key, asyncio.get_running_loop(), self.timeout)
            await session.open()
            self._sessions[key] = session
            self.connections_opened += 1
            return session

    async def aclose(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions))
