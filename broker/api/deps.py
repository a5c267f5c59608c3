"""Dependency aliases so route signatures read as sentences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header
from starlette.requests import Request

from broker.api import params as P
from broker.api.common import Payload, check_tenant, link_context, read_payload
from broker.core.batch import BatchService
from broker.core.contexts import ContextRegistry
from broker.core.csubscriptions import CsourceSubscriptionService
from broker.core.discovery import DiscoveryService
from broker.core.distributed import DistributedService
from broker.core.entities import EntityService
from broker.core.entitymaps import EntityMapService
from broker.core.subscriptions import SubscriptionService
from broker.core.temporal import TemporalService
from broker.errors import InternalError
from broker.federation.registrations import RegistrationService
from broker.jsonld.context import ContextResolver, ContextValue, TermMap, single_url
from broker.settings import Settings


@dataclass
class Hub:
    """Everything built once in the app lifespan."""

    settings: Settings
    resolver: ContextResolver
    contexts: ContextRegistry
    entities: EntityService
    batch: BatchService
    discovery: DiscoveryService
    subscriptions: SubscriptionService
    temporal: TemporalService
    registrations: RegistrationService
    distributed: DistributedService
    csubscriptions: CsourceSubscriptionService

    @property
    def entity_maps(self) -> EntityMapService:
        """The entity maps of distributed queries (kept by the distributed service)."""
        maps = self.distributed.maps
        if maps is None:
            raise InternalError("entity maps are not set up")
        return maps

    async def term_map(self, ctx: ContextValue | None, tenant: str = "") -> TermMap:
        tm = await self.resolver.term_map(ctx)
        if single_url(ctx) is None and ctx is not None:
            # an inline context is hosted as an ImplicitlyCreated one of the tenant
            if not tenant:
                if tm.implicit_url is None:
                    tm.implicit_url = await self.contexts.implicit(tm)
            else:
                tm = tm.with_implicit_url(await self.contexts.implicit(tm, tenant))
        for url in [ctx] if isinstance(ctx, str) else ctx if isinstance(ctx, list) else []:
            if isinstance(url, str):
                self.contexts.touch(url)
        return tm

    async def payload(
        self, request: Request, *, allow_merge_patch: bool = False, shape: type = dict
    ) -> tuple[Payload, TermMap]:
        s = self.settings
        payload = await read_payload(
            request,
            max_bytes=s.max_body_bytes,
            max_depth=s.max_json_depth,
            allow_merge_patch=allow_merge_patch,
            shape=shape,
        )
        return payload, await self.term_map(payload.context, request_tenant(request))

    async def link_term_map(self, request: Request) -> TermMap:
        """The term map for requests without a body: context from the Link header."""
        return await self.term_map(link_context(request), request_tenant(request))


def request_tenant(request: Request) -> str:
    """The request's tenant as named (routes check it with ``TenantDep``)."""
    return request.headers.get("ngsild-tenant") or ""


async def check_loop(request: Request) -> None:
    """508 LoopDetected for an NGSI-LD request whose ``Via`` names this hub: it was
    forwarded here by a context source that this hub itself forwarded it to (clause
    6.3.18). A dependency of the whole application, like ``authorize``."""
    via = request.headers.get("via")
    if via is None or not str(request.scope["path"]).startswith("/ngsi-ld/"):
        return
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is not None:
        hub.distributed.forwarder.check_loop(via)


async def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


TenantHeader = Annotated[
    str | None,
    Header(
        alias="NGSILD-Tenant",
        description="Tenant (clause 6.3.14): letters, digits, '-' and '_'; "
        "none or empty for the default tenant.",
    ),
]
LinkHeader = Annotated[
    str | None,
    Header(
        alias="Link",
        description='JSON-LD @context of an application/json request: <url>; rel="'
        'http://www.w3.org/ns/json-ld#context"; type="application/ld+json" (clause 6.3.5).',
    ),
]


async def tenant(ngsild_tenant: TenantHeader = None, link: LinkHeader = None) -> str:
    """The request's tenant, for the operations that resolve terms.

    It also declares their ``Link`` header (one dependency costs less than two on every
    request). The route reads that header itself (``Hub.link_term_map``,
    ``Hub.payload``) after the media-type checks, so a bad Content-Type or Accept is
    answered first, as the common behaviours require.
    """
    return check_tenant(ngsild_tenant)


async def tenant_only(ngsild_tenant: TenantHeader = None) -> str:
    """The request's tenant, for operations without terms to resolve (``jsonldContexts``)."""
    return check_tenant(ngsild_tenant)


HubDep = Annotated[Hub, Depends(get_hub)]
TenantDep = Annotated[str, Depends(tenant)]
ContextsTenantDep = Annotated[str, Depends(tenant_only)]


@dataclass(frozen=True, slots=True)
class Operation:
    """A request to an NGSI-LD operation, past the dependencies most of them share."""

    request: Request
    hub: Hub
    tenant: str
    #: the ``local`` parameter as given (read by the operations a federation mirrors)
    local: str | None


async def operation(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Operation:
    """The request, the hub, the tenant and ``local``, as most operations take them:
    after the tenant, the query parameters are checked (400 for one the operation does
    not declare)."""
    P.check_params(request)
    return Operation(request, hub, tenant, local)


OperationDep = Annotated[Operation, Depends(operation)]
