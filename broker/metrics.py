"""``/metrics``: the broker's Prometheus metrics (prometheus-client, text format 0.0.4).

=============================================  =========  ==========================
name                                           type       labels
=============================================  =========  ==========================
renkei_http_requests_total                     counter    method, route, status
renkei_http_request_duration_seconds           histogram  method, route
renkei_store_operation_duration_seconds        histogram  operation
renkei_writer_queue_depth                      gauge
renkei_notifications_total                     counter    transport, outcome
renkei_notifications_queued                    gauge      transport
renkei_entities                                gauge      tenant
renkei_history_instances                       gauge      tenant
=============================================  =========  ==========================

``route`` is the route's template (``/ngsi-ld/v1/entities/{entity_id:path}``), never the
path, so entity ids do not become series; a path no route matches is ``unmatched``.
``tenant`` is ``""`` for the default tenant. The IoT agent's metrics share the
``renkei_`` prefix (``renkei_iota_...``).

Cost: the request middleware sits on every request, the busiest included. Requests
and store operations are counted in plain dictionaries and bucket lists, on the event
loop thread only, and handed to prometheus-client's families at scrape time: a
request costs a few dictionary operations and a bisection, where prometheus-client's
own labelled metrics take a lock per update (measured in ``tests/broker/test_metrics.py``). Counts of entities and history instances are read
from the store at most every ``COUNT_INTERVAL`` seconds (longer when counting takes
long), in the background: a scrape never waits for more than ``COUNT_WAIT``.

Each application has a registry of its own (tests build many in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import logs
from broker.model.store import EntityQuery
from broker.store.base import Store

if TYPE_CHECKING:
    from broker.api.deps import Hub

log = logging.getLogger("renkei.metrics")

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: seconds a count of entities and history instances is reused at least ...
COUNT_INTERVAL = 15.0
#: ... and at least this many times as long as counting took
COUNT_COST_FACTOR = 100
#: seconds a scrape waits for a count under way before it answers with the last one
COUNT_WAIT = 2.0
UNMATCHED = "unmatched"
#: the templates of create and retrieve, the busiest routes
_ENTITIES = "/ngsi-ld/v1/entities"
_ENTITY = "/ngsi-ld/v1/entities/{entity_id:path}"


class Histogram:
    """Bucket counts and a sum, updated on the event loop thread only (as the IoT
    agent's counters are): an observation is a bisection and two additions, where
    prometheus-client's own metrics take a lock. Rendered at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Metrics:
    """The registry of one application and the metrics updated as it works."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        #: (method, route, status) -> requests answered
        self.requests: dict[tuple[str, str, int], int] = {}
        #: (method, route) -> their durations
        self.request_seconds: dict[tuple[str, str], Histogram] = {}
        #: store operation -> its durations
        self.store_seconds: dict[str, Histogram] = {}
        self.hub: Hub | None = None
        self.counts = StoreCounts()
        self.registry.register(_RequestCollector(self))
        self.registry.register(_HubCollector(self))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        timed = self.request_seconds.get((method, route))
        if timed is None:
            timed = self.request_seconds[method, route] = Histogram(HTTP_BUCKETS)
        timed.observe(seconds)

    def store_histogram(self, operation: str) -> Histogram:
        found = self.store_seconds.get(operation)
        if found is None:
            found = self.store_seconds[operation] = Histogram(STORE_BUCKETS)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector:
    """Requests and store operations, as counted by :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "renkei_http_requests",
            "HTTP requests answered, by method, route template and status",
            labels=("method", "route", "status"),
        )
        for (method, route, status), n in list(m.requests.items()):
            requests.add_metric([method, route, str(status)], n)
        yield requests
        durations = HistogramMetricFamily(
            "renkei_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template",
            labels=("method", "route"),
        )
        for (method, route), h in list(m.request_seconds.items()):
            durations.add_metric([method, route], h.buckets(), h.sum)
        yield durations
        store = HistogramMetricFamily(
            "renkei_store_operation_duration_seconds",
            "Time of store operations, by operation (the store protocol's method)",
            labels=("operation",),
        )
        for operation, h in list(m.store_seconds.items()):
            store.add_metric([operation], h.buckets(), h.sum)
        yield store


class StoreCounts:
    """Entities and history instances per tenant, counted in the background at most
    every ``COUNT_INTERVAL`` seconds (or ``COUNT_COST_FACTOR`` times what counting
    took), so that scrapes never scan a large store."""

    def __init__(self) -> None:
        self.entities: dict[str, int] = {}
        self.history: dict[str, int] = {}
        self._at = float("-inf")
        self._cost = 0.0
        self._task: asyncio.Task[None] | None = None

    async def fresh(self, store: Store) -> None:
        """Start a count if the last is stale; wait for it at most ``COUNT_WAIT``."""
        if self._task is None or self._task.done():
            if time.monotonic() - self._at < max(COUNT_INTERVAL, COUNT_COST_FACTOR * self._cost):
                return
            self._task = asyncio.create_task(self._count(store), name="renkei-metrics-count")
        await asyncio.wait([self._task], timeout=COUNT_WAIT)

    async def _count(self, store: Store) -> None:
        started = time.monotonic()
        try:
            entities: dict[str, int] = {}
            for tenant in dict.fromkeys(["", *await store.tenants()]):
                _, n = await store.query(tenant, EntityQuery(limit=0, count=True))
                entities[tenant] = n or 0
            self.entities = entities
            self.history = await history_counts(store)
        except Exception:
            log.exception("counting entities for /metrics failed")
        finally:
            self._at = time.monotonic()
            self._cost = self._at - started

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def history_counts(store: Store) -> dict[str, int]:
    """History instances per tenant, from the SQLite store's daily rollups (one row
    per attribute and day, not per instance); other stores report none."""
    from broker.store.sqlite import SqliteStore

    if not isinstance(store, SqliteStore):
        return {}

    def count(conn: Any) -> dict[str, int]:
        rows = conn.execute(
            "SELECT s.tenant, sum(h.total) FROM history_daily h "
            "JOIN history_series s ON s.sid = h.sid GROUP BY s.tenant"
        )
        return {tenant: int(n) for tenant, n in rows}

    return await store._read(count)


class _HubCollector:
    """Gauges and counters read from the running hub at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        hub = self.metrics.hub
        depth = GaugeMetricFamily(
            "renkei_writer_queue_depth", "Store writes waiting to be sent to the writer"
        )
        queue = getattr(hub.entities.store, "_queue", None) if hub is not None else None
        depth.add_metric([], queue.qsize() if isinstance(queue, asyncio.Queue) else 0)
        yield depth
        sent = CounterMetricFamily(
            "renkei_notifications",
            "Notification deliveries attempted, by transport and outcome (sent, failed)",
            labels=("transport", "outcome"),
        )
        queued = GaugeMetricFamily(
            "renkei_notifications_queued",
            "Notifications handed to a transport and not yet delivered or failed",
            labels=("transport",),
        )
        if hub is not None:
            senders = hub.subscriptions.senders
            for (transport, outcome), n in sorted(senders.outcomes.items()):
                sent.add_metric([transport, outcome], n)
            for transport, n in sorted(senders.waiting.items()):
                queued.add_metric([transport], n)
        yield sent
        yield queued
        counts = self.metrics.counts
        entities = GaugeMetricFamily(
            "renkei_entities", "Entities stored, by tenant", labels=("tenant",)
        )
        for tenant, n in sorted(counts.entities.items()):
            entities.add_metric([tenant], n)
        yield entities
        history = GaugeMetricFamily(
            "renkei_history_instances",
            "Attribute history instances stored, by tenant",
            labels=("tenant",),
        )
        for tenant, n in sorted(counts.history.items()):
            history.add_metric([tenant], n)
        yield history


def route_of(scope: Scope) -> str:
    """The template of the route that served ``scope``."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


class ObserveRequests:
    """ASGI middleware, just inside ``TrailingSlash``: request id and context for logs,
    request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given: bytes | None = None
        tenant: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                given = value
            elif key == b"ngsild-tenant" or (key == b"fiware-service" and tenant is None):
                tenant = value
        rid = logs.clean_request_id(given)
        echo = (b"x-request-id", rid.encode("ascii"))
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        rid_token = logs.request_id.set(rid)
        tenant_token = logs.tenant.set(tenant)
        principal_token = logs.principal.set(None)  # the access-control layer sets it
        try:
            await self.app(scope, receive, sending)
        finally:
            logs.request_id.reset(rid_token)
            logs.tenant.reset(tenant_token)
            logs.principal.reset(principal_token)
            self.metrics.observe(
                scope["method"], route_of(scope), status, time.perf_counter() - started
            )


def instrument_store(store: Store, metrics: Metrics) -> None:
    """Time every operation of the store protocol called on ``store`` (the instance's
    methods are replaced by timed ones; its class is untouched)."""
    for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction):
        if name.startswith("_") or name in ("open", "close"):
            continue
        bound = getattr(store, name, None)
        if bound is None or not inspect.iscoroutinefunction(bound):
            continue
        setattr(store, name, _timed(bound, metrics.store_histogram(name)))


def _timed(
    fn: Callable[..., Awaitable[Any]], histogram: Histogram
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)

    return timed


def install(app: FastAPI) -> Metrics:
    """Add the middleware and ``GET /metrics`` to ``app`` (install it after every other
    middleware but ``TrailingSlash``, so that it sees every request)."""
    metrics = Metrics()
    app.state.metrics = metrics
    app.add_middleware(ObserveRequests, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        hub = metrics.hub
        if hub is not None:
            await metrics.counts.fresh(hub.entities.store)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics


def attach(app: FastAPI, hub: Hub) -> None:
    """In the lifespan, once the hub is built: time its store, read it at scrape time."""
    metrics: Metrics = app.state.metrics
    instrument_store(hub.entities.store, metrics)
    metrics.hub = hub


async def detach(app: FastAPI) -> None:
    metrics: Metrics = app.state.metrics
    metrics.hub = None
    await metrics.counts.aclose()
