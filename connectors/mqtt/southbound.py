"""Southbound: one paho-mqtt client, its network loop in its own thread, bridged to asyncio.

The client subscribes to the IoT Agent JSON topics (``/+/+/attrs``, ``/json/+/+/attrs``,
single attributes and command results). With MQTT 5 the subscriptions are shared
(``$share/<group>/...``), so several agents split the messages; an MQTT 3.1.1 broker
gets plain subscriptions (one agent). In ``auto`` mode the agent speaks MQTT 5 and
falls back to 3.1.1 when the broker refuses the protocol version, or leaves its first
MQTT 5 CONNECT unanswered for ``CONNACK_TIMEOUT`` (some 3.1.1 brokers read an MQTT 5
CONNECT as a malformed 3.1.1 one and wait for bytes that never come).

Messages are acknowledged by hand (``manual_ack=True``): a QoS 1 message is
acknowledged only once its measure is stored, and the MQTT 5 receive maximum bounds
how many wait unacknowledged. The session is persistent (stable client id, no clean
start), so what was never acknowledged is delivered again after a reconnection.
paho reconnects by itself, with a backoff from 1 s up to 30 s. A connection that
cannot be made (broker unreachable, TLS certificate not trusted, login refused) is
logged as an error once per distinct cause and kept in :attr:`MqttLink.last_error`,
which ``/health`` shows.

paho calls back from its thread; messages cross to the event loop in batches
through a deque and one ``call_soon_threadsafe`` per batch.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

from broker.notify.mqtt import MqttServer

log = logging.getLogger("renkei.iota")

TOPICS = (
    "/+/+/attrs",
    "/+/+/attrs/+",
    "/+/+/cmdexe",
    "/json/+/+/attrs",
    "/json/+/+/attrs/+",
    "/json/+/+/cmdexe",
)
KEEPALIVE = 30
CONNACK_TIMEOUT = 5.0
SESSION_EXPIRY = 3600
_BAD_PROTOCOL = {0x01, 0x84}  # 3.1.1 "unacceptable protocol version", 5.0 0x84


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails.

    paho-mqtt drops the socket of a failed handshake (an untrusted certificate, say)
    without closing it, so every retry would leak a file descriptor.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the broker's certificate and host name against ``ca_file`` (or system CAs)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.sslsocket_class = _ClosingSSLSocket
    return context


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    mid: int
    session: int
    arrival: float


class MqttLink:
    def __init__(
        self,
        server: MqttServer,
        *,
        client_id: str,
        version: str = "auto",
        share_group: str = "renkei",
        receive_maximum: int = 1000,
        ca_file: str | None = None,
    ) -> None:
        self.server = server
        self.client_id = client_id
        self.version = version
        self.share_group = share_group
        self.receive_maximum = max(1, min(receive_maximum, 65535))
        self.ca_file = ca_file
        self.connected = False
        self.connections = 0
        #: why the last connection attempt failed (None once connected)
        self.last_error: str | None = None
        self.mqtt5 = version != "mqtt3.1.1"
        self._session = 0  # bumped per connection: an old message id is never acked on a new one
        self._lock = threading.Lock()
        self._queue: collections.deque[Incoming] = collections.deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: Callable[[list[Incoming]], None] | None = None
        self._client: Client | None = None
        self._fallback = asyncio.Event()
        self._connecting_since: float | None = None  # socket open, CONNACK not yet in
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle (event loop) ---------------------------------------------------------------

    def _make_client(self) -> Client:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.mqtt5 else False,
            manual_ack=True,
        )
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(0)
        if self.server.username is not None:
            client.username_pw_set(self.server.username, self.server.password)
        if self.server.tls:
            client.tls_set_context(tls_context(self.ca_file))
        client.enable_logger(log)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = self._on_socket_open
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect(self) -> None:
        self._client = self._make_client()
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY
            properties.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(
            self.server.host,
            self.server.port,
            keepalive=KEEPALIVE,
            clean_start=False if self.mqtt5 else MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    async def start(self, handler: Callable[[list[Incoming]], None]) -> None:
        """Connect in the background; ``handler`` gets batches of messages on the loop."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        await asyncio.to_thread(self._connect)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Fall back to MQTT 3.1.1 when allowed, and report a CONNECT left unanswered."""
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await self._fallback.wait()
            except TimeoutError:
                since = self._connecting_since
                if since is None or time.monotonic() - since < CONNACK_TIMEOUT:
                    continue
                if self.version == "auto" and self.mqtt5 and self.connections == 0:
                    log.warning(
                        "MQTT broker %s does not answer an MQTT 5 CONNECT", self.server.display
                    )
                    self._fallback.set()
                else:
                    version = "5" if self.mqtt5 else "3.1.1"
                    self._failed(
                        f"no answer to the MQTT {version} CONNECT within {CONNACK_TIMEOUT:g} s"
                    )
                continue
            self._fallback.clear()
            log.warning("MQTT broker %s refuses MQTT 5: using MQTT 3.1.1", self.server.display)
            await asyncio.to_thread(self._stop_client)
            self.mqtt5 = False
            self._connecting_since = None
            await asyncio.to_thread(self._connect)

    def _stop_client(self) -> None:
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self._stop_client)
        self.connected = False

    # -- paho thread --------------------------------------------------------------------------

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
            if self.version == "auto" and self.mqtt5 and reason.value in _BAD_PROTOCOL:
                log.debug("MQTT broker %s refused MQTT 5: %s", self.server.display, reason)
                self._post(self._fallback.set)
            else:
                self._failed(f"connection refused by the broker: {reason}")
            return
        with self._lock:
            self._session += 1
            self.connected = True
            self.connections += 1
            self.last_error = None
        prefix = f"$share/{self.share_group}/" if self.mqtt5 else ""
        client.subscribe([(prefix + t, 1) for t in TOPICS])
        log.info(
            "MQTT connected to %s (MQTT %s%s)",
            self.server.display,
            "5" if self.mqtt5 else "3.1.1",
            f", shared subscriptions $share/{self.share_group}" if self.mqtt5 else "",
        )

    def _on_socket_open(self, client: Client, userdata: Any, sock: Any) -> None:
        self._connecting_since = time.monotonic()

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` block: the cause is current.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLCertVerificationError):
            cause = f"TLS certificate not trusted: {exc.verify_message or exc}"
            if self.ca_file:
                cause += f" (CA file {self.ca_file})"
        elif exc is not None:
            cause = f"cannot connect: {exc}"
        else:
            cause = "cannot connect"
        self._failed(cause)

    def _failed(self, cause: str) -> None:
        """Log a connection failure: an error when its cause changes, debug while it repeats."""
        with self._lock:
            repeated = cause == self.last_error
            self.last_error = cause
        log.log(
            logging.DEBUG if repeated else logging.ERROR,
            "MQTT broker %s: %s; retrying with backoff",
            self.server.display,
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
            log.error("MQTT subscriptions refused by %s: %s", self.server.display, reasons)

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
        if unanswered and not self._stopping:
            self._failed(f"connection closed before the broker answered the CONNECT ({reason})")
        if was and not self._stopping:
            log.warning(
                "MQTT connection to %s lost (%s); reconnecting", self.server.display, reason
            )

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        item = Incoming(msg.topic, bytes(msg.payload), msg.qos, msg.mid, self._session, time.time())
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._post(self._drain)

    def _post(self, callback: Callable[[], Any]) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody listens any more
                self._loop.call_soon_threadsafe(callback)

    # -- event loop ---------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._scheduled = False
        if batch and self._handler is not None:
            self._handler(batch)

    def acker(self, item: Incoming) -> Callable[[], None] | None:
        """What acknowledges ``item`` once it is stored (None for QoS 0)."""
        if item.qos == 0:
            return None

        def ack() -> None:
            client = self._client
            # an int read needs no lock; a session ending right after it is no worse
            # than one ending as the PUBACK is written
            if self._session == item.session and client is not None:
                client.ack(item.mid, item.qos)

        return ack

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        client = self._client
        if client is None:
            return False
        info = client.publish(topic, payload, qos)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
