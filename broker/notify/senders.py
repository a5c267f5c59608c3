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

NGSI v2 notifications use the same transports with what v2 adds: another HTTP method
(``httpCustom.method``), and over MQTT the notification published as it is on the topic
the subscription names, with QoS and retain (``Endpoint.raw``, ``topic``, ``retain``).

The MQTT message of NGSI-LD follows the NGSI-LD MQTT binding: the notification headers and the
receiverInfo pairs go in ``metadata`` (so ``metadata.Content-Type``, ``metadata.Link``
and ``metadata.<receiverInfo key>``), the notification object in ``body``. Both
protocol versions carry the same message; with MQTT 5.0 it is also labelled with a
Content Type property.

Each HTTP endpoint origin gets a small pool of kept-alive connections
(``http_connections`` at a time; an ``aiohttp`` client, whose HTTP parser is compiled:
a notification costs a tenth of the CPU it did with a pure-Python HTTP stack, which is
what lets one broker process keep up with many subscriptions) and each MQTT broker one
connection (see :mod:`broker.notify.mqtt`). ``https`` endpoints are verified against the
system's CAs (``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply) and certifi's bundle. Endpoint
credentials (``user:password@``) go out as Basic authentication and are never logged
nor put in error messages. Every HTTP connection passes the outbound policy
(:mod:`broker.outbound`) on the address it is made to; a refused endpoint fails at once,
and is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from broker.notify.mqtt import MqttError, MqttPool, parse_target
from broker.outbound import OutboundPolicy, OutboundRefused, policy_resolver

log = logging.getLogger("renkei.notify")

HTTP_SCHEMES = frozenset({"http", "https"})
MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Endpoints answer a notification with an empty or small body; more is not read.
MAX_RESPONSE_READ = 64 * 1024
# A header name is an RFC 9110 token; a value printable ASCII (and tabs): anything else
# cannot be sent as the endpoint would read it.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")


#: Builds a notification (its body and NGSI-LD headers) once it is its turn to go out.
Build = Callable[[], tuple[bytes, dict[str, str]]]


@dataclass(frozen=True)
class Endpoint:
    uri: str
    accept: str = "application/json"
    receiver_info: tuple[tuple[str, str], ...] = ()
    notifier_info: tuple[tuple[str, str], ...] = ()
    #: HTTP method (NGSI v2 ``httpCustom.method``)
    method: str = "POST"
    #: MQTT: publish the notification as it is, as NGSI v2 does, instead of wrapping it
    #: in the NGSI-LD binding's ``{"metadata", "body"}``
    raw: bool = False
    #: MQTT topic named apart from the URI (NGSI v2 ``mqtt.topic``), and the retain flag
    topic: str | None = None
    retain: bool = False
    #: seconds to wait for the answer, when not the senders' own limit (v2 ``timeout``)
    timeout: float | None = None


class DeliveryError(Exception):
    """Delivery failed; `retryable` says whether trying again may help (timeouts, 5xx, connection refused: yes; 4xx: no)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # HTTP status of the endpoint's answer, when there was one
        #: what went wrong, without the endpoint's address (it may carry a token):
        #: shown to the subscription's owner as ``lastFailureReason``
        self.reason = reason if reason is not None else message


def redact_uri(uri: str) -> str:
    """The URI without its userinfo, for logs and error messages."""
    try:
        parts = urlsplit(uri)
        if "@" not in parts.netloc:
            return uri
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "<invalid URI>"


def _without_credentials(text: str, uri: str) -> str:
    """``text`` (a library's error message) with the URI's userinfo and password masked."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return text
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        text = text.replace(f"{userinfo}@", "")
        for secret in {userinfo, parts.password, unquote(parts.password or "")}:
            if secret:
                text = text.replace(secret, "***")
    return text


def _typed(endpoint: Endpoint, headers: dict[str, str]) -> dict[str, str]:
    """The headers, with the endpoint's ``accept`` as Content-Type when they have none."""
    if any(name.lower() == "content-type" for name in headers):
        return headers
    return {"Content-Type": endpoint.accept, **headers}


def merge_metadata(headers: dict[str, str], extra: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The notification headers plus receiverInfo pairs; a pair never overrides a header."""
    merged = dict(headers)
    taken = {name.lower() for name in merged}
    for name, value in extra:
        if name.lower() not in taken:
            merged[name] = value
            taken.add(name.lower())
    return merged


def unsendable_header(headers: dict[str, str]) -> str | None:
    """Why these headers cannot go out on HTTP/1.1 as they are, or None if they can."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            return f"header name {name!r} is not an HTTP token"
        if not _VALUE.fullmatch(value):
            return f"header {name} has characters HTTP cannot carry (printable ASCII only)"
    return None


def tls_context() -> ssl.SSLContext:
    """Certificate and host name verification against the system's CAs and certifi's."""
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with the dependencies
        return context
    context.load_verify_locations(cafile=certifi.where())
    return context


class _Origin:
    """Kept-alive connections to one endpoint origin, and no more requests handed to
    them than there are connections: the waiting ones queue here, outside the time
    limit of a request."""

    def __init__(
        self, connections: int, timeout: float, tls: ssl.SSLContext, policy: OutboundPolicy
    ) -> None:
        self.slots = asyncio.Semaphore(connections)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=connections,
                limit_per_host=0,
                ssl=tls,
                # names resolve to the addresses the outbound policy allows, and only
                # those are connected to; a refused name fails as a DNS error would
                resolver=policy_resolver(policy),
            ),
            timeout=aiohttp.ClientTimeout(total=timeout),
            # an endpoint's cookies would otherwise go out with the notifications of
            # every subscription to that origin, whoever owns them
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # the answer's body is read only to reuse the connection
            skip_auto_headers=("Accept-Encoding",),
            raise_for_status=False,
        )


class Senders:
    """Owns the HTTP connection pools (one per endpoint origin) and one MQTT connection per MQTT broker (host, port, user, tls, version), reused across notifications."""

    def __init__(
        self,
        *,
        http_timeout: float = 10.0,
        mqtt_timeout: float = 10.0,
        http_connections: int = 8,
        policy: OutboundPolicy | None = None,
    ) -> None:
        #: checked on every HTTP connection when it is made (see :mod:`broker.outbound`)
        self.policy = policy or OutboundPolicy()
        self.http_timeout = http_timeout
        self.http_connections = http_connections
        self._origins: dict[str, _Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self.mqtt = MqttPool(timeout=mqtt_timeout, policy=self.policy)
        self._closed = False
        #: deliveries attempted by (transport, "sent" | "failed"), and per transport those
        #: under way (waiting for a connection or on the wire): read by /metrics
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.waiting: Counter[str] = Counter()

    @property
    def mqtt_connections_opened(self) -> int:
        """MQTT connections made so far (a reused connection counts once)."""
        return self.mqtt.connections_opened

    async def send(self, endpoint: Endpoint, body: bytes, headers: dict[str, str]) -> int | None:
        """Deliver one notification. `headers` are the NGSI-LD headers of the notification (Content-Type, Link, NGSILD-Tenant ...). Raises DeliveryError."""
        return await self.send_built(endpoint, lambda: (body, headers))

    async def send_built(self, endpoint: Endpoint, build: Build) -> int | None:
        """Deliver the notification ``build()`` returns, called when it is its turn: for
        HTTP once one of the origin's connections is free. A notification that waited
        for one can thus still take in the changes made meanwhile, rather than leave
        them to the next one. Returns the HTTP status the endpoint answered (None for
        MQTT). Raises DeliveryError.

        A header whose value is empty is not sent (NGSI v2's way to remove a header)."""
        if self._closed:
            raise DeliveryError("the notification senders are closed", retryable=False)
        try:
            scheme = urlsplit(endpoint.uri).scheme.lower()
        except ValueError:
            scheme = ""
        transport = "http" if scheme in HTTP_SCHEMES else "mqtt" if scheme in MQTT_SCHEMES else ""
        if not transport:
            raise DeliveryError(
                f"unsupported endpoint scheme {scheme!r} in {redact_uri(endpoint.uri)}",
                retryable=False,
            )
        self.waiting[transport] += 1
        status: int | None = None
        try:
            if transport == "http":
                status = await self._post(endpoint, build)
            else:
                body, headers = build()
                await self._publish(endpoint, body, _typed(endpoint, headers))
        except DeliveryError:
            self.outcomes[transport, "failed"] += 1
            raise
        else:
            self.outcomes[transport, "sent"] += 1
        finally:
            self.waiting[transport] -= 1
        return status

    def _origin(self, uri: str) -> _Origin:
        parts = urlsplit(uri)
        key = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}"
        found = self._origins.get(key)
        if found is None:
            if self._tls is None:
                self._tls = tls_context()
            found = self._origins[key] = _Origin(
                self.http_connections, self.http_timeout, self._tls, self.policy
            )
        return found

    async def _post(self, endpoint: Endpoint, build: Build) -> int:
        shown = f"{endpoint.method} {redact_uri(endpoint.uri)}"
        try:
            origin = self._origin(endpoint.uri)
            parts = urlsplit(endpoint.uri)
            # aiohttp asks no resolver about an IP literal: such a host is checked here
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            self.policy.check_literal(parts.hostname or "", port)
        except OutboundRefused as exc:
            raise DeliveryError(f"{shown}: {exc}", retryable=False, reason=str(exc)) from None
        except ValueError as exc:
            raise DeliveryError(f"{shown}: {exc}", retryable=False, reason=str(exc)) from None
        async with origin.slots:
            body, headers = build()
            request_headers = {
                k: v
                for k, v in merge_metadata(
                    _typed(endpoint, headers), endpoint.receiver_info
                ).items()
                if v != ""
            }
            problem = unsendable_header(request_headers)
            if problem is not None:
                raise DeliveryError(f"{shown}: {problem}", retryable=False, reason=problem)
            limit = endpoint.timeout or self.http_timeout
            try:
                async with (
                    asyncio.timeout(limit),
                    origin.session.request(
                        endpoint.method,
                        endpoint.uri,
                        data=body,
                        headers=request_headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=limit),
                    ) as response,
                ):
                    read = 0
                    async for chunk in response.content.iter_any():
                        read += len(chunk)
                        if read > MAX_RESPONSE_READ:
                            break  # the connection is closed, not reused
                    status, reason = response.status, response.reason or ""
            except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
                reason = f"no answer within {limit:g}s (timeout)"
                raise DeliveryError(f"{shown}: {reason}", retryable=True, reason=reason) from None
            except aiohttp.InvalidURL:
                raise DeliveryError(
                    f"{shown}: invalid URL", retryable=False, reason="invalid URL"
                ) from None
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, OutboundRefused):  # from the policy's resolver
                    reason = str(exc.os_error)
                    raise DeliveryError(
                        f"{shown}: {reason}", retryable=False, reason=reason
                    ) from None
                reason = f"cannot connect: {_without_credentials(str(exc), endpoint.uri)}"
                raise DeliveryError(f"{shown}: {reason}", retryable=True, reason=reason) from None
            except aiohttp.ClientError as exc:  # refused, reset, TLS, malformed answers
                reason = f"{type(exc).__name__}: {_without_credentials(str(exc), endpoint.uri)}"
                raise DeliveryError(f"{shown}: {reason}", retryable=True, reason=reason) from None
            except (ValueError, TypeError) as exc:  # a request that cannot be sent
                reason = _without_credentials(str(exc), endpoint.uri)
                raise DeliveryError(f"{shown}: {reason}", retryable=False, reason=reason) from None
        if 200 <= status < 300:
            log.debug("notified %s: %d", shown, status)
            return status
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        answered = f"the endpoint answered {status} {reason}".rstrip()
        raise DeliveryError(
            f"{shown}: {status} {reason}".rstrip(),
            retryable=retryable,
            status=status,
            reason=answered,
        )

    async def _publish(self, endpoint: Endpoint, body: bytes, headers: dict[str, str]) -> None:
        try:
            target = parse_target(
                endpoint.uri, endpoint.notifier_info, topic=endpoint.topic, retain=endpoint.retain
            )
        except MqttError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from None
        if endpoint.raw:
            payload = body
            content_type = next(
                (v for k, v in headers.items() if k.lower() == "content-type" and v), None
            )
        else:
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
            content_type = "application/json"
        try:
            await self.mqtt.publish(target, payload, content_type=content_type)
        except MqttError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from None
        log.debug("notified %s (QoS %d, %s)", target.display, target.qos, target.broker.version)

    async def aclose(self) -> None:
        self._closed = True
        try:
            origins, self._origins = list(self._origins.values()), {}
            for origin in origins:
                await origin.session.close()
        finally:
            await self.mqtt.aclose()
