"""The broker application: ``create_app(settings)`` builds it; the lifespan opens the store."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from broker import health as probes
from broker import metrics
from broker.api import (
    csubscriptions,
    docs,
    entities,
    entity_operations,
    entitymaps,
    jsonld_contexts,
    ogc,
    registrations,
    subscriptions,
    temporal,
    types,
    unimplemented,
    viewer,
)
from broker.api import v2 as ngsi_v2
from broker.api.auth import authorize
from broker.api.deps import Hub, check_loop
from broker.api.errors import add_exception_handlers
from broker.api.hygiene import add_http_hygiene
from broker.auth import Principal
from broker.auth.middleware import AuditMiddleware, AuthState, auth_state
from broker.core.batch import BatchService
from broker.core.contexts import ContextRegistry
from broker.core.csubscriptions import CsourceSubscriptionService
from broker.core.discovery import DiscoveryService
from broker.core.distributed import DistributedService
from broker.core.entities import EntityService
from broker.core.entitymaps import EntityMapService
from broker.core.guard import GuardedStore
from broker.core.subscriptions import SubscriptionService
from broker.core.temporal import TemporalService
from broker.federation.forward import Forwarder, hub_name, new_hub_name
from broker.federation.registrations import RegistrationService
from broker.jsonld.context import ContextResolver, ContextValue, TermMap, load_preload_map
from broker.model.history import HistoryPolicy
from broker.notify.senders import Senders, redact_uri
from broker.outbound import OutboundPolicy
from broker.settings import Settings, get_settings
from broker.store import open_store

log = logging.getLogger("renkei")


def outbound_policy(settings: Settings) -> OutboundPolicy:
    """The outbound policy of these settings; ``self`` is the listening address and port
    and the public URL's host and port."""
    return OutboundPolicy.build(
        allow=settings.outbound_allow,
        deny=settings.outbound_deny,
        listen_host=settings.host,
        listen_port=settings.port,
        public_url=settings.public_url,
    )


async def build_hub(settings: Settings, auth: AuthState | None = None) -> Hub:
    raw = open_store(settings.store)
    await raw.open()
    # every service reads and writes through the guard: the request's access applies
    store: Any = GuardedStore(raw) if auth is not None else raw
    preload = load_preload_map(settings.context_preload) if settings.context_preload else {}
    outbound = outbound_policy(settings)
    resolver = ContextResolver(
        preload=preload,
        fetch_timeout=settings.context_fetch_timeout,
        max_bytes=settings.context_max_bytes,
        cache_size=settings.context_cache_size,
        base_url=settings.base_url,
        policy=outbound,
        fetch_mode=settings.context_fetch,
    )
    contexts = ContextRegistry(
        store,
        settings.base_url,
        max_cached=settings.context_cache_max,
        max_cached_bytes=settings.context_cache_max_bytes,
    )
    contexts.attach(resolver)
    await contexts.load()
    service = EntityService(store, max_attributes=settings.max_attributes)
    if settings.history_retention:
        core = await resolver.term_map(None)
        store.history_policy = HistoryPolicy.from_setting(settings.history_retention, core.expand)

    async def resolve(ctx: ContextValue | None) -> TermMap:
        # a subscription's inline context is hosted for its tenant when it is compiled
        # (``implicit_url`` below), not here for the default tenant
        tm = await resolver.term_map(ctx)
        for url in [ctx] if isinstance(ctx, str) else ctx if isinstance(ctx, list) else []:
            if isinstance(url, str):
                contexts.touch(url)
        return tm

    name = hub_name(settings.hub_id, settings.public_url)
    if name is None:  # kept in the store: the same after a restart
        name = await raw.hub_identity(new_hub_name())
    registrations = RegistrationService(
        store, resolve, outbound=outbound, local_entity=store.get_entity
    )
    senders = Senders(
        http_timeout=settings.notification_timeout,
        mqtt_timeout=settings.notification_timeout,
        policy=outbound,
    )
    hub = Hub(
        settings=settings,
        resolver=resolver,
        contexts=contexts,
        entities=service,
        batch=BatchService(service, max_batch=settings.max_batch),
        discovery=DiscoveryService(store),
        subscriptions=SubscriptionService(
            store,
            senders,
            resolve=resolve,
            outbound=outbound,
            implicit_url=contexts.implicit,
            max_attempts=settings.notification_attempts,
            linked=service.linked,
        ),
        temporal=TemporalService(service),
        registrations=registrations,
        distributed=DistributedService(
            service,
            registrations,
            Forwarder(
                outbound,
                name=name,
                timeout=settings.federation_timeout,
                cooldown=settings.federation_cooldown,
                credentials=settings.federation_headers,
            ),
            max_limit=settings.max_limit,
            maps=EntityMapService(
                store,
                lifetime=settings.entity_map_lifetime,
                max_lifetime=settings.entity_map_max_lifetime,
                max_entries=settings.entity_map_max_entries,
                max_maps=settings.entity_map_max_count,
            ),
        ),
        csubscriptions=CsourceSubscriptionService(
            store, registrations, senders, resolve, outbound=outbound
        ),
    )
    if auth is not None:
        holder = auth.holder

        def may_read(owner: dict[str, Any], tenant: str, types: list[str]) -> bool:
            return holder.policy.can(Principal.from_record(owner), "read", tenant, types)

        hub.subscriptions.may_read = may_read
    service.on_change(hub.subscriptions.on_change)
    hub.subscriptions.start()
    hub.csubscriptions.start(store.tenants)
    hub.temporal.start_expiry(settings.history_expiry_interval)
    hub.entities.start_purge(settings.entity_purge_interval)
    hub.entity_maps.start_purge(settings.entity_purge_interval)
    return hub


async def close_hub(hub: Hub) -> None:
    await hub.csubscriptions.aclose()
    await hub.distributed.forwarder.aclose()
    await hub.entity_maps.aclose()
    await hub.temporal.aclose()
    await hub.entities.aclose()
    await hub.subscriptions.aclose()
    await hub.subscriptions.senders.aclose()
    await hub.resolver.aclose()
    await hub.entities.store.close()


class TrailingSlash:
    """ASGI middleware: ``/entities/`` is ``/entities`` (clients and test suites send both).

    Every request then goes through the framework's routing and the routes' declared
    dependencies; there is no other way in. Outermost, so the request metrics record the
    route the router picks for the normalised path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope = dict(scope)
                scope["path"] = path.rstrip("/") or "/"
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


#: ``add_api_route`` keywords not copied from a route: given explicitly or derived.
_NOT_COPIED = frozenset({"self", "path", "endpoint", "dependencies", "route_class_override"})


def include_flat(app: FastAPI, router: APIRouter) -> None:
    """Add ``router``'s routes to the app's own list, as routes of the app.

    ``include_router`` of recent versions of the framework keeps the router whole and
    matches each request through it with a context of its own per candidate, which costs
    more than a cached retrieve; added as the app's own routes they are matched in one
    pass. Each route is rebuilt by the app from the route's own settings (the router's
    prefix, tags and dependencies are in them already), so the app's dependencies
    (``authorize``, ``check_loop``) come first, as with ``include_router``.
    """
    names = inspect.signature(app.router.add_api_route).parameters
    for route in router.routes:
        if not isinstance(route, APIRoute):
            app.router.routes.append(route)
            continue
        settings = {
            n: getattr(route, n) for n in names if n not in _NOT_COPIED and hasattr(route, n)
        }
        app.router.add_api_route(
            route.path,
            route.endpoint,
            dependencies=list(route.dependencies),
            route_class_override=type(route),
            **settings,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    auth = auth_state(settings.auth_file, settings.audit_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = await build_hub(settings, auth)
        app.state.hub = hub
        metrics.attach(app, hub)
        app.state.ready = True
        restore = auth.watch() if auth is not None else None
        log.info(
            "Renkei broker ready on %s (store %s)", settings.base_url, redact_uri(settings.store)
        )
        try:
            yield
        finally:
            app.state.ready = False
            if restore is not None:
                restore()
            await metrics.detach(app)
            await close_hub(hub)
            if auth is not None:
                await auth.aclose()

    app = FastAPI(
        title="Renkei NGSI-LD broker",
        version="0.1.0",
        description="Regional data-linkage hub: NGSI-LD (ETSI GS CIM 009 v1.8) context broker.",
        lifespan=lifespan,
        docs_url=None,  # served from the hub's own assets: broker/api/docs.py
        redoc_url=None,
        # the one access-control dependency, on every route of every API
        dependencies=[Depends(authorize), Depends(check_loop)],
    )
    app.state.ready = False
    app.state.auth = auth
    add_exception_handlers(app)
    app.add_middleware(AuditMiddleware)
    add_http_hygiene(app, settings)
    metrics.install(app)  # sees every request
    app.add_middleware(TrailingSlash)  # outermost
    probes.install(app)
    include_flat(app, entities.router)
    # routes are tried in order: NGSI v2's right after NGSI-LD's entities, so that neither
    # API's entity requests wait behind the 501 placeholders, OGC and the viewer
    for v2_router in ngsi_v2.ROUTERS:
        include_flat(app, v2_router)
    include_flat(app, entity_operations.router)
    include_flat(app, types.router)
    include_flat(app, subscriptions.router)
    include_flat(app, jsonld_contexts.router)
    include_flat(app, temporal.router)
    include_flat(app, registrations.router)
    include_flat(app, csubscriptions.router)
    include_flat(app, entitymaps.router)
    include_flat(app, unimplemented.router)
    include_flat(app, ogc.router)
    include_flat(app, viewer.router)
    include_flat(app, docs.router)

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> Response:
        ready = bool(request.app.state.ready)
        body = {"status": "ok" if ready else "starting", "store": settings.store.split("://")[0]}
        hub = getattr(request.app.state, "hub", None)
        # a store that cannot take writes for now says why (SqliteStore.unavailable)
        reason = (
            getattr(hub.entities.store, "unavailable", None) if ready and hub is not None else None
        )
        if reason:
            ready = False
            body.update(status="unavailable", reason=reason)
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    return app
