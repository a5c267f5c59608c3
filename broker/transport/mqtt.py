"""MQTT transport: one paho-mqtt 2.x client bridged to asyncio.

The broker's MQTT notifications (``broker/notify/mqtt.py``) and the IoT agent's
southbound (``connectors/mqtt/southbound.py``) both talk to MQTT brokers through
:class:`MqttClient`. A leaf module: it imports the standard library and paho only.

A client is used in one of two ways:

- :meth:`MqttClient.connect` opens the connection and waits for the CONNACK, raising
  :class:`MqttError` when it cannot (the notifier: a dropped connection stays down and
  its owner opens a new client on the next publish);
- :meth:`MqttClient.start` connects in the background and keeps the connection up, paho
  reconnecting with a backoff from 1 s to 30 s (the agent). A failure is logged once
  per distinct cause and kept in :attr:`MqttClient.last_error`.

paho's network loop runs in its own thread (``loop_start``) and calls back from it;
results cross to the event loop with ``call_soon_threadsafe``: the CONNACK and every
publish acknowledgement settle asyncio futures, received messages arrive in batches
(one ``call_soon_threadsafe`` per batch). Every client passes
``CallbackAPIVersion.VERSION2``.

Versions: ``mqtt3.1.1``, ``mqtt5.0`` or ``auto``, which speaks MQTT 5 and falls back to
3.1.1 when the broker refuses the protocol version or, before any connection
succeeded, leaves the MQTT 5 CONNECT unanswered for ``connect_timeout`` (some 3.1.1
brokers read it as a malformed 3.1.1 CONNECT and wait for bytes that never come).

Sockets: paho leaves the socket of a failed TLS handshake (an untrusted certificate, a
plain listener) open, on the first connection and on every reconnection alike; the
sockets :func:`tls_context` makes close themselves when their handshake fails. paho's
wake-up socket pair lives until its client is garbage collected; :meth:`MqttClient.close`
and a failed :meth:`MqttClient.connect` close it, so nothing stays open after them.

Credentials come from the URL (``mqtt://user:password@host``) and never appear in logs
or error messages: :attr:`MqttServer.display` is the URL without its userinfo.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from paho.mqtt.client import (
    MQTT_CLEAN_START_FIRST_ONLY,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("renkei.mqtt")

Version = Literal["mqtt3.1.1", "mqtt5.0", "auto"]
MQTT_VERSIONS = ("mqtt3.1.1", "mqtt5.0")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# CONNACK / PUBACK reason codes after which trying again later may succeed; any other
# refusal (bad credentials, not authorised, bad topic ...) needs the settings changed.
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
_BAD_PROTOCOL = frozenset({0x01, 0x84})  # 3.1.1 "unacceptable protocol version", 5.0 0x84

T = TypeVar("T")


class MqttError(Exception):
    """An MQTT operation failed; ``retryable`` says whether trying again may help.

    ``reason`` is the broker's reason code when it refused (paho reports MQTT 3.1.1
    return codes as their MQTT 5.0 equivalents).
    """

    def __init__(self, message: str, *, retryable: bool, reason: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class MqttAddressError(ValueError):
    """An MQTT URL that does not name a broker."""


def display(host: str, port: int, tls: bool) -> str:
    """An MQTT broker's URL without credentials: the only form that is ever logged."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}"


@dataclass(frozen=True)
class MqttServer:
    """Where an MQTT broker is and how to log in to it."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return display(self.host, self.port, self.tls)


def parse_server(url: str) -> MqttServer:
    """Read ``mqtt(s)://[user[:password]@]host[:port]``; credentials percent-decoded.

    The path, if any, is left to the caller (the notifier reads a topic from it).
    """
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


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its TLS handshake fails.

    paho drops the socket of a failed handshake without closing it, so every attempt
    (paho's own reconnections included) would leak a file descriptor.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the broker's certificate and host name against ``ca_file`` (or system CAs).

    Loading the system CAs takes a while: call it off the event loop.
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.sslsocket_class = _ClosingSSLSocket
    return context


def refusal(what: str, reason: ReasonCode) -> MqttError:
    """The error for a CONNACK or an acknowledgement carrying a failure reason code."""
    return MqttError(
        f"{what}: {reason} ({reason.value:#04x})",
        retryable=reason.value in _TRANSIENT_REASONS,
        reason=reason.value,
    )


def _settle(fut: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)  # type: ignore[arg-type]


@dataclass(slots=True)
class Message:
    """A message received; ``session`` tells which connection it came on."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    session: int
    arrival: float


MessageHandler = Callable[[list[Message]], None]


class MqttClient:
    """One connection to one MQTT broker, used from asyncio.

    ``persistent`` asks for a session that outlives the connection (stable
    ``client_id``, no clean start, ``session_expiry`` seconds with MQTT 5), so that
    what was never acknowledged is delivered again after a reconnection;
    ``manual_ack`` acknowledges a received QoS 1/2 message only when :meth:`acker`'s
    callable is called, and ``receive_maximum`` (MQTT 5) bounds how many wait
    unacknowledged. ``connect_timeout`` bounds the TCP connect, the TLS handshake and,
    in :meth:`start`, the wait for the CONNACK.
    """

    def __init__(
        self,
        server: MqttServer,
        *,
        client_id: str | None = None,
        version: Version = "mqtt3.1.1",
        ca_file: str | None = None,
        keepalive: int = 60,
        connect_timeout: float = 10.0,
        persistent: bool = False,
        session_expiry: int = 3600,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if version not in (*MQTT_VERSIONS, "auto"):
            raise ValueError(f"unknown MQTT version {version!r}")
        self.server = server
        self.client_id = client_id or f"renkei-{uuid.uuid4().hex[:16]}"
        self.version = version
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.manual_ack = manual_ack
        self.receive_maximum = (
            None if receive_maximum is None else max(1, min(receive_maximum, 65535))
        )
        self.log = logger or log
        #: whether the protocol spoken (or being tried) is MQTT 5
        self.mqtt5 = version != "mqtt3.1.1"
        self.connected = False
        #: connections made so far (reconnections included)
        self.connections = 0
        #: why the last connection attempt failed (None once connected)
        self.last_error: str | None = None
        #: failed connection attempts since :meth:`start` (connect() raises instead)
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._background = False
        # Guards what paho's thread and the event loop both touch; never held while
        # calling into paho, so it cannot deadlock against paho's own locks.
        self._lock = threading.Lock()
        self._session = 0  # bumped per connection: an old message id is never acked on a new one
        self._connack: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._acked_early: dict[int, ReasonCode] = {}
        self._subscriptions: list[tuple[str, int, str | None]] = []
        self._handler: MessageHandler | None = None
        self._queue: collections.deque[Message] = collections.deque()
        self._scheduled = False
        self._connecting_since: float | None = None  # socket open, CONNACK not yet in
        self._fallback = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._started = False  # the network thread runs
        self._abandoned = False  # connect() gave up while the thread was starting
        self._closing = False
        # Serialises the blocking calls that create and end paho clients (run in worker
        # threads, never on the event loop): close() waits for a connect in progress.
        self._paho_lock = threading.Lock()
        self._changed = asyncio.Event()  # set, and replaced, whenever the state changes

    @property
    def display(self) -> str:
        return self.server.display

    async def wait_until(self, predicate: Callable[[MqttClient], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked at every change of state
        (connected, disconnected, a failed attempt); the caller bounds the wait."""
        while True:
            changed = self._changed
            if predicate(self):
                return
            await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- configuration ----------------------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str], qos: int = 1, *, share_group: str | None = None
    ) -> None:
        """Subscribe to ``topics`` on every connection, this one and each later one.

        With ``share_group`` the subscriptions are MQTT 5 shared ones
        (``$share/<group>/<topic>``), so that several clients split the messages; over
        MQTT 3.1.1, which has none, they are plain. Received messages go to the
        handler given to :meth:`start`.
        """
        added = [(topic, qos, share_group) for topic in topics]
        self._subscriptions.extend(added)
        client = self._client
        if client is not None and self.connected:
            client.subscribe([(self._filter(t, g), q) for t, q, g in added])

    def _filter(self, topic: str, share_group: str | None) -> str:
        return f"$share/{share_group}/{topic}" if share_group and self.mqtt5 else topic

    @property
    def shared(self) -> bool:
        """Whether the subscriptions with a share group are shared ones right now."""
        return self.mqtt5 and any(g for _, _, g in self._subscriptions)

    # -- paho client ------------------------------------------------------------------------

    def _make_client(self) -> Client:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.mqtt5 else not self.persistent,
            manual_ack=self.manual_ack,
            reconnect_on_failure=self._background,
        )
        client.connect_timeout = self.connect_timeout
        client.reconnect_delay_set(1, 30)
        if self.server.username is not None:
            client.username_pw_set(self.server.username, self.server.password)
        if self.server.tls:
            client.tls_set_context(tls_context(self.ca_file))
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = self._on_socket_open
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_args(self) -> dict[str, Any]:
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.persistent:
                properties.SessionExpiryInterval = self.session_expiry
            if self.receive_maximum is not None:
                properties.ReceiveMaximum = self.receive_maximum
        if self.mqtt5:
            clean_start: bool | int = not self.persistent
        else:
            clean_start = MQTT_CLEAN_START_FIRST_ONLY  # MQTT 3.1.1 uses clean_session
        return {
            "host": self.server.host,
            "port": self.server.port,
            "keepalive": self.keepalive,
            "clean_start": clean_start,
            "properties": properties,
        }

    @staticmethod
    def _release(client: Client) -> None:
        """Close what paho still holds once its network thread has ended.

        paho has no public call closing its wake-up socket pair; it does so only when
        the client is garbage collected.
        """
        client._reset_sockets()

    def _stop_client(self) -> None:
        """Disconnect, end the network thread and close every socket (blocking)."""
        with self._paho_lock:
            self._stop_client_locked()

    def _stop_client_locked(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()  # also wakes the network thread up at once
        client.loop_stop()
        self._release(client)

    # -- paho thread --------------------------------------------------------------------------

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody listens any more
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_log(self, client: Client, userdata: Any, level: int, buf: str) -> None:
        # paho reports some routine states (a retry while the broker is away, say) as
        # errors; the failures that matter are logged by _failed, once per cause.
        self.log.debug("paho: %s", buf)

    def _on_socket_open(self, client: Client, userdata: Any, sock: Any) -> None:
        self._connecting_since = time.monotonic()

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connecting_since = None
        if reason.is_failure:
            error = refusal(f"connection to {self.display} refused", reason)
            if self._background and self.falls_back(reason.value):
                self.log.debug("MQTT broker %s refused MQTT 5: %s", self.display, reason)
                self._post(self._fallback.set)
            elif self._background:
                self._failed(f"connection refused by the broker: {reason}")
            if self._connack is not None:
                self._post(_settle, self._connack, None, error)
            self._post(self._notify)
            return
        with self._lock:
            self._session += 1
            self.connected = True
            self.connections += 1
            self.last_error = None
        if self._subscriptions:
            client.subscribe([(self._filter(t, g), q) for t, q, g in self._subscriptions])
        shared = {g for _, _, g in self._subscriptions if g} if self.mqtt5 else set()
        self.log.log(
            logging.INFO if self._background else logging.DEBUG,
            "MQTT connected to %s (MQTT %s%s)",
            self.display,
            "5" if self.mqtt5 else "3.1.1",
            "".join(f", shared subscriptions $share/{g}" for g in sorted(shared)),
        )
        if self._connack is not None:
            self._post(_settle, self._connack, None, None)
        self._post(self._notify)

    def falls_back(self, reason: int) -> bool:
        """Whether a refusal for ``reason`` makes an ``auto`` client try MQTT 3.1.1."""
        return self.version == "auto" and self.mqtt5 and reason in _BAD_PROTOCOL

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` block: the cause is current.
        exc = sys.exc_info()[1]
        self._failed(self._cause(exc))

    def _cause(self, exc: BaseException | None) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            cause = f"TLS certificate not trusted: {exc.verify_message or exc}"
            if self.ca_file:
                cause += f" (CA file {self.ca_file})"
            return cause
        return f"cannot connect: {exc}" if exc is not None else "cannot connect"

    def _failed(self, cause: str) -> None:
        """Log a connection failure: an error when its cause changes, debug while it repeats."""
        with self._lock:
            repeated = cause == self.last_error
            self.last_error = cause
            self.failures += 1
        self._post(self._notify)
        self.log.log(
            logging.DEBUG if repeated else logging.ERROR,
            "MQTT broker %s: %s; retrying with backoff",
            self.display,
            cause,
        )

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.log.error("MQTT subscriptions refused by %s: %s", self.display, reasons)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        unanswered = self._connecting_since is not None
        self._connecting_since = None
        with self._lock:
            self._session += 1
            was = self.connected
            self.connected = False
            pending, self._pending = self._pending, {}
        lost = f"connection to {self.display} lost ({reason})"
        if self._connack is not None:
            self._post(_settle, self._connack, None, MqttError(lost, retryable=True))
        for fut in pending.values():
            self._post(_settle, fut, None, MqttError(lost, retryable=True))
        self._post(self._notify)
        if self._closing:
            return
        if unanswered and self._background:
            self._failed(f"connection closed before the broker answered the CONNECT ({reason})")
        if was:
            self.log.log(
                logging.WARNING if self._background else logging.DEBUG,
                "MQTT %s%s",
                lost,
                "; reconnecting" if self._background else "",
            )

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
            self._post(_settle, fut, reason, None)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        item = Message(msg.topic, bytes(msg.payload), msg.qos, msg.mid, self._session, time.time())
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._post(self._drain)

    # -- connect once (event loop) ------------------------------------------------------------

    def _connect_blocking(self) -> None:
        with self._paho_lock:
            client = self._client = self._make_client()  # TLS loads CAs: not on the loop
            try:
                client.connect(**self._connect_args())
            except BaseException:
                self._client = None
                self._release(client)
                raise
            client.loop_start()
            with self._lock:
                self._started = True
                abandoned = self._abandoned
            if abandoned:  # connect() gave up meanwhile: nobody will use this client
                self._stop_client_locked()

    async def connect(self) -> None:
        """Connect and wait for the CONNACK; no reconnection once the connection drops.

        Raises :class:`MqttError`: retryable when the broker cannot be reached, the TLS
        handshake fails or the broker is busy; final when the broker refuses the login
        or the address is unusable. The caller bounds the time taken (a cancelled
        connect leaves nothing open).
        """
        self._loop = asyncio.get_running_loop()
        self._background = False
        try:
            await self._connect_once()
        except MqttError as exc:
            if exc.reason is None or not self.falls_back(exc.reason):
                raise
            self.log.warning("MQTT broker %s refuses MQTT 5: using MQTT 3.1.1", self.display)
            self.mqtt5 = False
            await self._connect_once()

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._started = self._abandoned = False
        try:
            await asyncio.to_thread(self._connect_blocking)
            await self._connack
        except OSError as exc:
            raise MqttError(f"cannot connect to {self.display}: {exc}", retryable=True) from None
        except ValueError as exc:
            raise MqttError(f"cannot connect to {self.display}: {exc}", retryable=False) from None
        except BaseException:
            # Refused, timed out or cancelled: the network thread (when it got that far)
            # sends DISCONNECT and ends; close() or the next attempt joins it.
            with self._lock:
                self._abandoned = True
                started = self._started
            if started:
                await asyncio.to_thread(self._stop_client)
            raise

    # -- stay connected (event loop) ----------------------------------------------------------

    async def start(self, handler: MessageHandler | None = None) -> None:
        """Connect in the background and stay connected; ``handler`` gets batches of
        received messages on the event loop. Returns at once, broker up or not."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._background = True
        await asyncio.to_thread(self._connect_background)
        self._supervisor = asyncio.create_task(self._supervise(), name="mqtt-supervisor")

    def _connect_background(self) -> None:
        with self._paho_lock:
            self._client = self._make_client()
            self._client.connect_async(**self._connect_args())
            self._client.loop_start()

    async def _supervise(self) -> None:
        """Fall back to MQTT 3.1.1 when allowed, and report a CONNECT left unanswered."""
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await self._fallback.wait()
            except TimeoutError:
                since = self._connecting_since
                if since is None or time.monotonic() - since < self.connect_timeout:
                    continue
                if self.version == "auto" and self.mqtt5 and self.connections == 0:
                    self.log.warning(
                        "MQTT broker %s does not answer an MQTT 5 CONNECT", self.display
                    )
                    self._fallback.set()
                else:
                    version = "5" if self.mqtt5 else "3.1.1"
                    self._failed(
                        f"no answer to the MQTT {version} CONNECT within {self.connect_timeout:g} s"
                    )
                continue
            self._fallback.clear()
            self.log.warning("MQTT broker %s refuses MQTT 5: using MQTT 3.1.1", self.display)
            await asyncio.to_thread(self._stop_client)
            self.mqtt5 = False
            self._connecting_since = None
            await asyncio.to_thread(self._connect_background)

    # -- messages (event loop) ----------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._scheduled = False
        if batch and self._handler is not None:
            self._handler(batch)

    def acker(self, message: Message) -> Callable[[], None] | None:
        """What acknowledges ``message`` once it is handled (None for QoS 0 or automatic
        acknowledgement). A message from an earlier connection is not acknowledged: the
        broker delivers it again on the persistent session."""
        if message.qos == 0 or not self.manual_ack:
            return None

        def ack() -> None:
            client = self._client
            # an int read needs no lock; a session ending right after it is no worse
            # than one ending as the PUBACK is written
            if self._session == message.session and client is not None:
                client.ack(message.mid, message.qos)

        return ack

    # -- publish (event loop) -----------------------------------------------------------------

    def _properties(self, content_type: str | None) -> Properties | None:
        if not (self.mqtt5 and content_type):
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = content_type
        return properties

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        content_type: str | None = None,
        retain: bool = False,
    ) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1 and 2) or, for
        QoS 0, until it is written. ``content_type`` is sent over MQTT 5 only;
        ``retain`` asks the broker to keep the message for later subscribers.

        Raises :class:`MqttError` (retryable when the connection is down or lost). The
        caller bounds the time taken; a publish given up on a :meth:`connect` client
        ends that connection, so that a late acknowledgement cannot match a reused
        message id.
        """
        client = self._client
        if client is None or not self.connected:
            raise MqttError(f"not connected to {self.display}", retryable=True)
        try:
            info = client.publish(
                topic, payload, qos, retain, properties=self._properties(content_type)
            )
        except ValueError as exc:
            raise MqttError(f"cannot publish to {topic!r}: {exc}", retryable=False) from None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            raise MqttError(
                f"cannot publish to {self.display}/{topic}: {info.rc.name}",
                retryable=info.rc
                in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE),
            )
        assert self._loop is not None
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        with self._lock:
            early = self._acked_early.pop(info.mid, None)
            if early is None:
                if not self.connected:
                    raise MqttError(f"connection to {self.display} lost", retryable=True)
                self._pending[info.mid] = fut
        try:
            reason = early if early is not None else await fut
        except BaseException:
            with self._lock:
                self._pending.pop(info.mid, None)
                if not self._background:
                    self.connected = False
            if not self._background:
                client.disconnect()
            raise
        if reason.is_failure:
            raise refusal(f"publish to {self.display}/{topic} refused", reason)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Queue a publish without waiting for it; False when not connected."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- close (event loop) -------------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect cleanly and close every socket; the client is not used again."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self._stop_client)
        self.connected = False
