"""A small NGSI-LD HTTP client for connectors: they talk to the broker like any client.

Batch writes go to ``/entityOperations/upsert`` (or ``merge``, or the history through
``/temporal/entityOperations/upsert``), with retries and
exponential backoff on connection errors, timeouts and 5xx/429 answers; a 207
answer is not an error of the call but a per-entity result the caller reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

log = logging.getLogger("renkei.client")

LINK_REL = "http://www.w3.org/ns/json-ld#context"
REGISTRATIONS = "/ngsi-ld/v1/csourceRegistrations"


class BrokerError(Exception):
    """The broker refused a request (4xx) or could not be reached after the retries."""

    def __init__(self, message: str, *, status: int | None = None, problem: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem


@dataclass
class BatchOutcome:
    """Per-entity result of a batch write: ids written, and (id, problem) for the others."""

    success: list[str] = field(default_factory=list)
    errors: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Pager:
    """The paging rule every Renkei client shares, kept apart from any I/O.

    A query is read with ``limit``/``offset`` pages until a page comes back short, the
    broker's ``NGSILD-Results-Count`` (when asked for) is reached, or the caller's own
    ``limit`` is met. The sync and async clients drive it the same way::

        pager = Pager(params, page_size=500)
        while (page_params := pager.next_params()) is not None:
            page = get(page_params)            # one HTTP request
            yield from pager.feed(page, count_header)
    """

    def __init__(
        self, params: dict[str, Any], *, page_size: int = 500, limit: int | None = None
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        self.params = {k: v for k, v in params.items() if v is not None}
        self.page_size = page_size
        self.limit = limit
        self.offset = int(self.params.pop("offset", 0))
        self.yielded = 0
        self.total: int | None = None
        self.done = limit == 0

    def next_params(self) -> dict[str, Any] | None:
        """Query parameters of the next page, or ``None`` once every page was read."""
        if self.done:
            return None
        size = self.page_size
        if self.limit is not None:
            size = min(size, self.limit - self.yielded)
        return {**self.params, "limit": size, "offset": self.offset}

    def feed(self, page: list[dict[str, Any]], count: str | None = None) -> list[dict[str, Any]]:
        """Take one page's entities; returns them and decides whether another page follows."""
        asked = (
            self.page_size if self.limit is None else min(self.page_size, self.limit - self.yielded)
        )
        if count is not None and count.isdigit():
            self.total = int(count)
        self.offset += len(page)
        self.yielded += len(page)
        if (
            len(page) < asked
            or (self.limit is not None and self.yielded >= self.limit)
            or (self.total is not None and self.offset >= self.total)
        ):
            self.done = True
        return page


def credentials(api_key: str | None = None, token: str | None = None) -> dict[str, str]:
    """The header that authenticates a client: an API key (``X-API-Key``; else
    ``RENKEI_API_KEY``) or a bearer token (``RENKEI_TOKEN``), the key winning."""
    api_key = api_key or os.environ.get("RENKEI_API_KEY") or None
    token = token or os.environ.get("RENKEI_TOKEN") or None
    if api_key:
        return {"X-API-Key": api_key}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def request_headers(
    tenant: str | None, context: str | None, *, body: bool, auth: dict[str, str] | None = None
) -> dict[str, str]:
    """The NGSI-LD headers of a client request: JSON, the user @context as a Link, the
    tenant, and the credentials (``credentials()``) when given."""
    headers = {"Accept": "application/json", **(auth or {})}
    if body:
        headers["Content-Type"] = "application/json"
    if context:
        headers["Link"] = f'<{context}>; rel="{LINK_REL}"; type="application/ld+json"'
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    return headers


class BrokerClient:
    def __init__(
        self,
        base_url: str,
        *,
        tenant: str | None = None,
        context: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
        token: str | None = None,
    ) -> None:
        """``api_key`` / ``token``: credentials for a hub with access control (else
        ``RENKEI_API_KEY`` / ``RENKEI_TOKEN``); never logged."""
        self.base_url = base_url.rstrip("/")
        self.tenant = tenant
        self.context = context
        self.auth = credentials(api_key, token)
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    def _headers(self, *, body: bool = False) -> dict[str, str]:
        return request_headers(self.tenant, self.context, body=body, auth=self.auth)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = orjson.dumps(json) if json is not None else None
        delay = self.backoff
        sent = self._headers(body=content is not None)
        if headers:
            sent.update(headers)
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.request(
                    method,
                    path,
                    content=content,
                    params=params,
                    headers=sent,
                )
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise BrokerError(f"broker at {self.base_url} not reachable: {exc!r}") from exc
            else:
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                if attempt == self.retries:
                    return resp
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _fail(resp: httpx.Response, what: str) -> BrokerError:
        try:
            problem = resp.json()
            detail = problem.get("detail") or problem.get("title") or resp.text
        except ValueError:
            problem, detail = None, resp.text
        return BrokerError(
            f"{what}: HTTP {resp.status_code}: {detail}", status=resp.status_code, problem=problem
        )

    async def health(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def _batch(
        self,
        op: str,
        entities: list[dict[str, Any]],
        params: dict[str, Any] | None,
        *,
        prefix: str = "/ngsi-ld/v1",
    ) -> BatchOutcome:
        if not entities:
            return BatchOutcome()
        resp = await self._request(
            "POST", f"{prefix}/entityOperations/{op}", json=entities, params=params
        )
        if resp.status_code in (200, 201, 204):
            return BatchOutcome(success=[e["id"] for e in entities])
        if resp.status_code == 207:
            body = resp.json()
            return BatchOutcome(
                success=list(body.get("success", [])),
                errors=[
                    (e.get("entityId", ""), e.get("error", {})) for e in body.get("errors", [])
                ],
            )
        raise self._fail(resp, f"batch {op}")

    async def upsert(self, entities: list[dict[str, Any]], *, update: bool = False) -> BatchOutcome:
        """Create or replace (``update=True``: create or update attributes) entities."""
        return await self._batch("upsert", entities, {"options": "update"} if update else None)

    async def upsert_temporal(self, entities: list[dict[str, Any]]) -> BatchOutcome:
        """Add instances to the history of many entities (each attribute a list of
        instances); each attribute's current value becomes its newest by ``observedAt``.
        Renkei's ``/temporal/entityOperations/upsert`` extension."""
        return await self._batch("upsert", entities, None, prefix="/ngsi-ld/v1/temporal")

    async def update_v2(
        self, entities: list[dict[str, Any]], *, service_path: str = "/"
    ) -> BatchOutcome:
        """NGSI v2 ``POST /v2/op/update`` with ``actionType: append`` (the v2 entities
        created or their attributes appended/updated), under ``Fiware-Service`` (the
        tenant) and ``Fiware-ServicePath``. v2 answers a batch as a whole: when it is
        refused, each entity is sent again alone so that the outcome names the ones
        refused."""
        if not entities:
            return BatchOutcome()
        headers = {"Fiware-ServicePath": service_path}
        if self.tenant:
            headers["Fiware-Service"] = self.tenant
        body = {"actionType": "append", "entities": entities}
        resp = await self._request("POST", "/v2/op/update", json=body, headers=headers)
        ids = list(dict.fromkeys(e["id"] for e in entities))
        if resp.status_code in (200, 201, 204):
            return BatchOutcome(success=ids)
        if resp.status_code not in (400, 404, 413, 422) or len(ids) == 1:
            raise self._fail(resp, "v2 update")
        outcome = BatchOutcome()
        for eid in ids:
            mine = [e for e in entities if e["id"] == eid]
            one = await self._request(
                "POST",
                "/v2/op/update",
                json={"actionType": "append", "entities": mine},
                headers=headers,
            )
            if one.status_code in (200, 201, 204):
                outcome.success.append(eid)
            elif 400 <= one.status_code < 500 and one.status_code != 429:
                try:
                    problem = one.json()
                except ValueError:
                    problem = {"error": one.text}
                outcome.errors.append(
                    (eid, {"title": problem.get("error"), "detail": problem.get("description")})
                )
            else:
                raise self._fail(one, "v2 update")
        return outcome

    async def merge(self, entities: list[dict[str, Any]]) -> BatchOutcome:
        return await self._batch("merge", entities, None)

    async def get_entity(self, entity_id: str, **params: Any) -> dict[str, Any] | None:
        resp = await self._request(
            "GET", f"/ngsi-ld/v1/entities/{entity_id}", params=params or None
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"retrieve {entity_id}")
        result: dict[str, Any] = resp.json()
        return result

    async def query(self, page_size: int = 500, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Entities matching NGSI-LD query parameters, fetched page by page."""
        async for ent in self.paged(Pager(params, page_size=page_size)):
            yield ent

    async def paged(self, pager: Pager) -> AsyncIterator[dict[str, Any]]:
        """The entities of every page a ``Pager`` asks for, in order."""
        while (page_params := pager.next_params()) is not None:
            resp = await self._request("GET", "/ngsi-ld/v1/entities", params=page_params)
            if resp.status_code != 200:
                raise self._fail(resp, "query")
            for ent in pager.feed(resp.json(), resp.headers.get("NGSILD-Results-Count")):
                yield ent

    # -- context source registrations (the IoT agent registers itself) ----------------------

    async def create_registration(self, registration: dict[str, Any]) -> None:
        """``POST /csourceRegistrations``; a 409 is a ``BrokerError`` whose ``problem``
        says which (``AlreadyExists``, or ``Conflict`` with another registration or with
        attributes the broker holds)."""
        resp = await self._request("POST", REGISTRATIONS, json=registration)
        if resp.status_code != 201:
            raise self._fail(resp, "register")

    async def update_registration(self, registration_id: str, patch: dict[str, Any]) -> None:
        resp = await self._request("PATCH", f"{REGISTRATIONS}/{registration_id}", json=patch)
        if resp.status_code != 204:
            raise self._fail(resp, "update registration")

    async def delete_registration(self, registration_id: str) -> None:
        """Delete a registration; one already gone counts as deleted."""
        resp = await self._request("DELETE", f"{REGISTRATIONS}/{registration_id}")
        if resp.status_code not in (204, 404):
            raise self._fail(resp, "delete registration")

    async def query_registrations(self, **params: Any) -> list[dict[str, Any]]:
        """The registrations matching ``params`` (``q``, ``type`` ...), every page."""
        found: list[dict[str, Any]] = []
        page = 500
        while True:
            resp = await self._request(
                "GET", REGISTRATIONS, params={**params, "limit": page, "offset": len(found)}
            )
            if resp.status_code != 200:
                raise self._fail(resp, "query registrations")
            batch = resp.json()
            found.extend(batch)
            if len(batch) < page:
                return found

    async def delete_attribute(self, entity_id: str, name: str, **params: Any) -> None:
        """Delete one attribute of an entity; one already gone counts as deleted."""
        resp = await self._request(
            "DELETE", f"/ngsi-ld/v1/entities/{entity_id}/attrs/{name}", params=params or None
        )
        if resp.status_code not in (204, 404):
            raise self._fail(resp, f"delete attribute {name} of {entity_id}")

    async def subscribe(self, subscription: dict[str, Any]) -> str:
        resp = await self._request("POST", "/ngsi-ld/v1/subscriptions", json=subscription)
        if resp.status_code != 201:
            raise self._fail(resp, "subscribe")
        return str(resp.headers["location"].rsplit("/", 1)[1])

    async def aclose(self) -> None:
        await self._http.aclose()
