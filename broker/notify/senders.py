"""Deliver one notification to its endpoint, over HTTP(S) or MQTT(S).

:class:`Senders` is the transport layer under the subscription engine: it is given
an :class:`Endpoint`, the serialised notification and its NGSI-LD headers, and
either delivers or raises :class:`DeliveryError`, whose ``retryable`` flag tells
the engine whether trying again later may help::

    HTTP  POST, headers + receiverInfo      2xx ok; 408/425/429/5xx, timeouts and
                                            network errors retryable; other
                                            statuses (4xx, 3xx) final
    MQTT  PUBLISH {"metadata": {...},       refused connections and timeouts
                   "body": <notification>}  retryable; bad credentials, malformed
                                            endpoints final

The MQTT message follows the NGSI-LD MQTT binding: the notification headers and the
receiverInfo pairs go in ``metadata`` (so ``metadata.Content-Type``, ``metadata.Link``
and ``metadata.<receiverInfo key>``), the notification object in ``body``. Both
protocol versions carry the same message; with MQTT 5.0 it is also labelled with a
Content Type property.

Each HTTP endpoint origin gets a small pooled ``httpx.AsyncClient`` (kept-alive
connections, ``http_connections`` at a time) and each MQTT broker one connection (see
:mod:`broker.notify.mqtt`). Endpoint credentials
(``user:password@``) are never logged nor put in error messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from broker.notify.mqtt import MqttError, MqttPool, parse_target

log = logging.getLogger("renkei.notify")

HTTP_SCHEMES = frozenset({"http", "https"})
MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Endpoints answer a notification with an empty or small body; more is not read.
MAX_RESPONSE_READ = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    uri: str
    accept: str = "application/json"
    receiver_info: tuple[tuple[str, str], ...] = ()
    notifier_info: tuple[tuple[str, str], ...] = ()


class DeliveryError(Exception):
    """Delivery failed; `retryable` says whether trying again may help (timeouts, 5xx, connection refused: yes; 4xx: no)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # HTTP status of the endpoint's answer, when there was one


def redact_uri(uri: str) -> str:
    """The URI without its userinfo, for logs and error messages."""
    try:
        parts = urlsplit(uri)
        if "@" not in parts.netloc:
            return uri
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "<invalid URI>"


def merge_metadata(headers: dict[str, str], extra: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The notification headers plus receiverInfo pairs; a pair never overrides a header."""
    merged = dict(headers)
    taken = {name.lower() for name in merged}
    for name, value in extra:
        if name.lower() not in taken:
            merged[name] = value
            taken.add(name.lower())
    return merged


class Senders:
    """Owns one HTTP client (httpx.AsyncClient, pooled) and one MQTT connection per MQTT broker (host, port, user, tls, version), reused across notifications."""

    def __init__(
        self, *, http_timeout: float = 10.0, mqtt_timeout: float = 10.0, http_connections: int = 8
    ) -> None:
        self.http_timeout = http_timeout
        self.http_connections = http_connections
        # One small pool per endpoint origin, its connections kept alive, and no more
        # requests handed to it than it has connections: httpx's pool looks at every
        # connection and queued request for each request, so one large shared pool costs
        # more CPU per notification than the notification itself.
        self._origins: dict[str, tuple[httpx.AsyncClient, asyncio.Semaphore]] = {}
        self.mqtt = MqttPool(timeout=mqtt_timeout)
        self._closed = False

    @property
    def mqtt_connections_opened(self) -> int:
        """MQTT connections made so far (a reused connection counts once)."""
        return self.mqtt.connections_opened

    async def send(self, endpoint: Endpoint, body: bytes, headers: dict[str, str]) -> None:
        """Deliver one notification. `headers` are the NGSI-LD headers of the notification (Content-Type, Link, NGSILD-Tenant ...). Raises DeliveryError."""
        if self._closed:
            raise DeliveryError("the notification senders are closed", retryable=False)
        try:
            scheme = urlsplit(endpoint.uri).scheme.lower()
        except ValueError:
            scheme = ""
        if not any(name.lower() == "content-type" for name in headers):
            headers = {"Content-Type": endpoint.accept, **headers}
        if scheme in HTTP_SCHEMES:
            await self._post(endpoint, body, headers)
        elif scheme in MQTT_SCHEMES:
            await self._publish(endpoint, body, headers)
        else:
            raise DeliveryError(
                f"unsupported endpoint scheme {scheme!r} in {redact_uri(endpoint.uri)}",
                retryable=False,
            )

    def _origin(self, uri: str) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        parts = urlsplit(uri)
        key = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}"
        found = self._origins.get(key)
        if found is None:
            n = self.http_connections
            client = httpx.AsyncClient(
                timeout=self.http_timeout,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            )
            found = self._origins[key] = (client, asyncio.Semaphore(n))
        return found

    async def _post(self, endpoint: Endpoint, body: bytes, headers: dict[str, str]) -> None:
        shown = redact_uri(endpoint.uri)
        request_headers = merge_metadata(headers, endpoint.receiver_info)
        try:
            client, slots = self._origin(endpoint.uri)
        except ValueError as exc:
            raise DeliveryError(f"POST {shown}: {exc}", retryable=False) from None
        try:
            async with (
                slots,
                asyncio.timeout(self.http_timeout),
                client.stream(
                    "POST", endpoint.uri, content=body, headers=request_headers
                ) as response,
            ):
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_READ:
                        break
        except TimeoutError:
            raise DeliveryError(
                f"POST {shown}: no answer within {self.http_timeout:g}s", retryable=True
            ) from None
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"POST {shown}: timed out ({exc})", retryable=True) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise DeliveryError(f"POST {shown}: {exc}", retryable=False) from None
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"POST {shown}: {type(exc).__name__}: {exc}", retryable=True
            ) from None
        except (ValueError, TypeError) as exc:  # headers that cannot be sent
            raise DeliveryError(f"POST {shown}: {exc}", retryable=False) from None
        status = response.status_code
        if 200 <= status < 300:
            log.debug("notified %s: %d", shown, status)
            return
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise DeliveryError(
            f"POST {shown}: {status} {response.reason_phrase}".rstrip(),
            retryable=retryable,
            status=status,
        )

    async def _publish(self, endpoint: Endpoint, body: bytes, headers: dict[str, str]) -> None:
        try:
            target = parse_target(endpoint.uri, endpoint.notifier_info)
        except MqttError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from None
        try:
            notification: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DeliveryError(
                f"notification for {target.display} is not JSON: {exc}", retryable=False
            ) from None
        message = {
            "metadata": merge_metadata(headers, endpoint.receiver_info),
            "body": notification,
        }
        payload = orjson.dumps(message)
        try:
            await self.mqtt.publish(target, payload, content_type="application/json")
        except MqttError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from None
        log.debug("notified %s (QoS %d, %s)", target.display, target.qos, target.broker.version)

    async def aclose(self) -> None:
        self._closed = True
        try:
            for client, _ in self._origins.values():
                await client.aclose()
            self._origins.clear()
        finally:
            await self.mqtt.aclose()
