"""Requests forwarded to context sources (clauses 4.3.6.3, 6.3.17 and 6.3.18).

Every forwarded request:

* goes through httpx with the outbound policy's transport (the address is checked when
  connecting, as for remote contexts), without environment proxies;
* carries ``Via`` (RFC 9110 §7.6.3): the one it came with plus this hub's name. A
  request whose ``Via`` already names this hub has gone round a loop: it is refused
  with 508 LoopDetected (:meth:`Forwarder.check_loop`), and a source answering 508
  makes the whole operation 508, so a loop is never hidden in a partial answer;
* carries the request's ``@context`` (its Link header), ``Accept``, the tenant (the
  registration's ``tenant`` member, else the request's), and the registration's
  ``contextSourceInfo`` pairs as headers, which is where the hub's own credentials for
  that source live (``X-API-Key``, ``Authorization``), over those the configuration
  gives for the endpoint (``RENKEI_FEDERATION_HEADERS``, by URL prefix); a pair whose
  value is ``urn:ngsi-ld:request`` passes on the request's own header of that name,
  when it has one (clause 4.3.6.5);
* waits at most the registration's ``management.timeout`` (ms), else the hub's
  ``federation_timeout``; a source that failed or timed out is left alone for its
  ``management.cooldown`` (ms), else ``federation_cooldown``.

A source that fails does not fail the operation: its :class:`Answer` says why, and the
operation reports it in ``NGSILD-Warning`` (:func:`warning`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from broker.errors import LoopDetected
from broker.federation.registrations import Registration
from broker.jsonld.context import is_core_context_url
from broker.model.entity import iri_to_uri
from broker.outbound import OutboundPolicy, OutboundRefused, policy_transport

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")
#: Headers this hub sets itself, which a registration cannot replace.
_OWN = frozenset({"via", "link", "ngsild-tenant", "content-type", "content-length", "host"})

log = logging.getLogger("renkei.federation")

#: Via's protocol part for the requests this hub forwards.
PROTOCOL = "1.1"
NGSI_LD = "/ngsi-ld/v1"


def hub_name(configured: str | None, public_url: str | None) -> str | None:
    """The name this hub gives itself in ``Via`` (see the settings' ``hub_id``), or None
    when the settings give none: then the store keeps one (:func:`new_hub_name`, kept
    by ``RegistrationStore.hub_identity``), so that the hub keeps its name across
    restarts and a loop through it is still recognised after one."""
    if configured:
        return configured
    if public_url:
        netloc = urlsplit(public_url).netloc
        if netloc:
            return netloc.rpartition("@")[2]
    return None


def new_hub_name() -> str:
    """A name for a hub whose store has none yet."""
    return f"renkei-{uuid.uuid4().hex[:12]}"


def via_names(via: str | None) -> list[str]:
    """The received-by names of a ``Via`` header (``1.1 a, HTTP/1.1 b (comment)``)."""
    names = []
    for hop in (via or "").split(","):
        parts = hop.strip().split()
        if len(parts) >= 2:
            names.append(parts[1])
    return names


#: Characters a forwarded query string keeps as they are: RFC 3986 allows them in a
#: query, and the specification's examples write ids, lists and georel so
#: (``id=urn:ngsi-ld:Vehicle:A1,urn:ngsi-ld:Vehicle:A2``, ``georel=near;maxDistance==10``
#: with ``=`` escaped); ``&``, ``=``, ``+``, ``#``, quotes and spaces are escaped.
_QUERY_SAFE = ":,;@!$'()*/"


def query_string(params: Mapping[str, str]) -> str:
    """``params`` as a query string escaped no more than RFC 3986 needs (see
    ``_QUERY_SAFE``), as clients of NGSI-LD write them."""
    return "&".join(
        f"{quote(key, safe='')}={quote(value, safe=_QUERY_SAFE)}" for key, value in params.items()
    )


@dataclass(slots=True)
class Call:
    """What of the incoming request goes along with every forwarded request."""

    tenant: str = ""
    #: the request's Link header (its @context), passed on as it came
    link: str | None = None
    via: str | None = None
    accept: str = "application/json"
    #: the @context the request's body carried (application/ld+json), sent on in the
    #: bodies this hub makes from it (a Query); None when it came in ``link``
    context: Any = None
    #: the request's own headers, for contextSourceInfo values "urn:ngsi-ld:request"
    request: Mapping[str, str] | None = None
    #: the request's own URL parameters (its page, count, options), in its order
    params: Mapping[str, str] | None = None


JSONLD_REL = "http://www.w3.org/ns/json-ld#context"
#: A contextSourceInfo value meaning "the value the triggering request carried".
FROM_REQUEST = "urn:ngsi-ld:request"


def context_link(context: Any, hosted: str | None = None) -> str | None:
    """A Link header naming an inline ``@context``, for requests that can carry no body
    (``GET``): the context when it is one URL (besides the core context, which every
    broker has), else the URL this hub hosts it under (``hosted``), else None."""
    urls = context if isinstance(context, list) else [context]
    own = [u for u in urls if not (isinstance(u, str) and is_core_context_url(u))]
    url = own[0] if len(own) == 1 and isinstance(own[0], str) else hosted
    if not url:
        return None
    return f'<{url}>; rel="{JSONLD_REL}"; type="application/ld+json"'


@dataclass(slots=True)
class Answer:
    """A source's answer, or why there is none (``error``)."""

    reg: Registration
    status: int | None = None
    body: Any = None
    headers: httpx.Headers | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


def join_answers(reg: Registration, answers: list[Answer]) -> Answer:
    """Several answers of one source to queries (one per entity selector of a Query) as
    one: the entities of all, each id once, and the sum of their counts less the
    entities answered more than once; the first failure when one failed."""
    for answer in answers:
        if not answer.ok or not isinstance(answer.body, list):
            return answer
    body: list[Any] = []
    seen: set[str] = set()
    count = 0
    for answer in answers:
        header = answer.headers.get("NGSILD-Results-Count") if answer.headers else None
        count += int(header) if header and header.isdigit() else len(answer.body)
        for item in answer.body:
            key = str(item.get("id")) if isinstance(item, dict) else ""
            if key not in seen:
                seen.add(key)
                body.append(item)
    count -= sum(len(a.body) for a in answers) - len(body)
    headers = httpx.Headers({"NGSILD-Results-Count": str(count)})
    return Answer(reg, status=200, body=body, headers=headers)


def warning(answers: list[Answer]) -> dict[str, str]:
    """The ``NGSILD-Warning`` header (clause 6.3.18) naming the sources that failed."""
    failed = [a for a in answers if a.error is not None]
    if not failed:
        return {}
    # a header is ASCII: ids and addresses with other characters go percent-encoded
    text = ", ".join(
        f'199 {iri_to_uri(a.reg.id)} "{iri_to_uri(a.reg.endpoint)}: {a.error}"'.replace("\n", " ")
        for a in failed
    )
    return {"NGSILD-Warning": text}


class Forwarder:
    """Sends the requests of distributed operations (see the module docstring)."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        name: str,
        timeout: float = 5.0,
        cooldown: float = 0.0,
        credentials: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.name = name
        #: endpoint URL prefix -> headers (the hub's own credentials), longest first
        self.credentials = sorted((credentials or {}).items(), key=lambda kv: -len(kv[0]))
        self.timeout = timeout
        self.cooldown = cooldown
        self._client = httpx.AsyncClient(
            transport=policy_transport(policy), timeout=timeout, follow_redirects=False
        )
        #: endpoint -> monotonic time until which it is left alone
        self._resting: dict[str, float] = {}

    def check_loop(self, via: str | None) -> None:
        """508 LoopDetected when ``via`` names this hub (the request went round)."""
        if self.name in via_names(via):
            raise LoopDetected(f"this request has already passed through {self.name}")

    def via(self, incoming: str | None) -> str:
        hop = f"{PROTOCOL} {self.name}"
        return f"{incoming}, {hop}" if incoming else hop

    def headers(self, reg: Registration, call: Call) -> dict[str, str]:
        headers = {"Accept": call.accept, "Via": self.via(call.via)}
        if call.link:
            headers["Link"] = call.link
        tenant = reg.tenant if reg.tenant is not None else call.tenant
        if tenant:
            headers["NGSILD-Tenant"] = tenant
        extra: list[tuple[str, str]] = []
        for prefix, configured in self.credentials:
            if reg.endpoint.startswith(prefix):
                extra += configured.items()
                break
        for key, value in reg.source_info:
            if value == FROM_REQUEST:  # clause 4.3.6.5: the triggering request's value
                given = call.request.get(key) if call.request is not None else None
                if given is None:
                    continue
                value = given
            extra.append((key, value))
        for key, value in extra:
            # only what HTTP can carry as a header; other pairs are information only
            if _TOKEN.fullmatch(key) and _VALUE.fullmatch(value) and key.lower() not in _OWN:
                headers[key] = value
        return headers

    def url(self, reg: Registration, path: str) -> str:
        return reg.endpoint.rstrip("/") + NGSI_LD + path

    @staticmethod
    def segment(value: str) -> str:
        return quote(value, safe=":")

    async def send(
        self,
        reg: Registration,
        call: Call,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        extra: Mapping[str, str] | None = None,
    ) -> Answer:
        """One request to the source of ``reg``; never raises but LoopDetected.
        ``extra``: headers of the operation itself (``NGSILD-EntityMap``)."""
        now = time.monotonic()
        if self._resting.get(reg.endpoint, 0.0) > now:
            return Answer(reg, error="not asked: resting after a failure (cooldown)")
        headers = self.headers(reg, call)
        for key, value in (extra or {}).items():
            if _TOKEN.fullmatch(key) and _VALUE.fullmatch(value):
                headers[key] = value
        log.debug("forwarding %s %s to %s (%s)", method, path, reg.endpoint, reg.id)
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = content_type
            if content_type == "application/ld+json":
                headers.pop("Link", None)  # the body carries its @context
        url = self.url(reg, path)
        if params:
            url += "?" + query_string(params)
        try:
            response = await self._client.request(
                method,
                url,
                content=content,
                headers=headers,
                timeout=reg.timeout or self.timeout,
            )
        except httpx.TimeoutException:
            log.debug("%s %s at %s timed out", method, path, reg.endpoint)
            return self._failed(reg, "timed out")
        except (httpx.HTTPError, OutboundRefused, OSError) as exc:
            return self._failed(reg, f"unreachable ({type(exc).__name__})")
        if response.status_code == 508:
            raise LoopDetected(f"context source {reg.endpoint} detected a loop")
        parsed: Any = None
        if response.content:
            try:
                parsed = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                parsed = None
        if response.status_code >= 500:
            return self._failed(reg, f"answered {response.status_code}")
        return Answer(reg, status=response.status_code, body=parsed, headers=response.headers)

    def _failed(self, reg: Registration, why: str) -> Answer:
        rest = reg.cooldown if reg.cooldown is not None else self.cooldown
        if rest > 0:
            self._resting[reg.endpoint] = time.monotonic() + rest
        return Answer(reg, error=why)

    async def aclose(self) -> None:
        await self._client.aclose()
