"""Subscriptions and notifications (clause 5.8 and 5.11), one module per concern:

* :mod:`.payload`: a subscription document validated and compiled for matching;
* :mod:`.registry`: create, read, update, delete, and the cached list of active ones;
* :mod:`.matching`: committed changes matched and notifications rendered, and the
  periodic ``timeInterval`` round;
* :mod:`.delivery`: sends with retries, coalescing, throttling, and delivery status.

:class:`SubscriptionService` puts them together for the API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from broker.core.subscriptions.delivery import Delivery
from broker.core.subscriptions.matching import LinkedEntities, Matcher
from broker.core.subscriptions.payload import Compiled, Compiler, ImplicitUrl, ResolveContext
from broker.core.subscriptions.registry import Registry
from broker.jsonld.context import ContextValue, TermMap
from broker.model.store import WriteResult
from broker.notify.senders import Senders
from broker.outbound import OutboundPolicy
from broker.store.base import Store

__all__ = ["Compiled", "SubscriptionService"]


class SubscriptionService:
    """The subscriptions of every tenant, and the notifications they ask for."""

    def __init__(
        self,
        store: Store,
        senders: Senders,
        *,
        resolve: ResolveContext,
        implicit_url: ImplicitUrl,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        cache_ttl: float = 1.0,
        concurrency: int = 64,
        linked: LinkedEntities | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.store = store
        self.senders = senders
        #: endpoints it refuses are refused when a subscription is created or updated
        self.outbound = outbound or OutboundPolicy()
        self.registry = Registry(
            store, Compiler(resolve, implicit_url), outbound=self.outbound, cache_ttl=cache_ttl
        )
        self.delivery = Delivery(
            store,
            senders,
            max_attempts=max_attempts,
            backoff=backoff,
            backoff_cap=backoff_cap,
            concurrency=concurrency,
        )
        self.delivery.deactivate = self.registry.deactivate
        self.matcher = Matcher(store, self.registry, self.delivery, linked=linked)

    @property
    def may_read(self) -> Callable[[dict[str, Any], str, list[str]], bool] | None:
        """``(owner record, tenant, entity types) -> bool``: set when access control is on."""
        return self.matcher.may_read

    @may_read.setter
    def may_read(self, check: Callable[[dict[str, Any], str, list[str]], bool] | None) -> None:
        self.matcher.may_read = check

    async def compile(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        """Validate a subscription document and compile it; raise BadRequestData if invalid."""
        return await self.registry.compile(tenant, doc)

    async def create(self, tenant: str, body: dict[str, Any], context: ContextValue | None) -> str:
        return await self.registry.create(tenant, body, context)

    async def get(self, tenant: str, sub_id: str) -> dict[str, Any]:
        return await self.registry.get(tenant, sub_id)

    async def update(
        self, tenant: str, sub_id: str, patch: dict[str, Any], context: ContextValue | None
    ) -> None:
        await self.registry.update(tenant, sub_id, patch, context)

    async def delete(self, tenant: str, sub_id: str) -> None:
        await self.registry.delete(tenant, sub_id)

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        return await self.registry.all(tenant)

    async def render(
        self, tenant: str, doc: dict[str, Any], tm: TermMap, *, sys_attrs: bool = False
    ) -> dict[str, Any]:
        """The subscription as a client sees it: status filled in (with the outcomes not
        yet written, so this process reads its own), terms in the request's context."""
        status = self.delivery.status(tenant, doc.get("id", ""), doc.get("notificationStatus", {}))
        return await self.registry.render(tenant, doc, tm, status, sys_attrs=sys_attrs)

    # -- NGSI v2 (``/v2/subscriptions``) -------------------------------------------------------

    async def create_v2(self, tenant: str, body: Any, service_path: str | None) -> str:
        return await self.registry.create_v2(tenant, body, service_path)

    async def get_v2(self, tenant: str, sub_id: str) -> dict[str, Any]:
        return await self.registry.get_v2(tenant, sub_id)

    async def update_v2(self, tenant: str, sub_id: str, body: Any) -> None:
        await self.registry.update_v2(tenant, sub_id, body)

    async def delete_v2(self, tenant: str, sub_id: str) -> None:
        await self.registry.delete_v2(tenant, sub_id)

    async def all_v2(self, tenant: str, service_path: str | None) -> list[dict[str, Any]]:
        return await self.registry.all_v2(tenant, service_path)

    def render_v2(self, tenant: str, doc: dict[str, Any]) -> dict[str, Any]:
        """A v2 subscription as ``GET /v2/subscriptions`` shows it, with its delivery
        status (the outcomes not yet written included)."""
        status = self.delivery.status(tenant, doc.get("id", ""), doc.get("notificationStatus", {}))
        return self.registry.render_v2(doc, status)

    async def on_change(self, tenant: str, results: Sequence[WriteResult]) -> None:
        """Entity listener: match each committed change and queue notifications."""
        await self.matcher.on_change(tenant, results)

    def submit(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        self.delivery.submit(sub, data)

    def start(self) -> None:
        """Start the periodic round of ``timeInterval`` notifications."""
        self.matcher.start()

    async def tick(self) -> None:
        await self.matcher.tick()

    async def flush(self) -> None:
        await self.delivery.flush()

    async def aclose(self) -> None:
        await self.matcher.aclose()
        await self.registry.aclose()
        await self.delivery.aclose()
