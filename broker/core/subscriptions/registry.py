"""The subscriptions of each tenant: create, read, update, delete (clause 5.8), and the
compiled list of active ones that matching reads.

The list is cached per tenant and read again after ``cache_ttl`` (other servers on the
same store may have changed it) and after every change made here. Endpoints the outbound
policy refuses are refused when a subscription is created or updated.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from broker.auth.masking import keep_masked, mask_subscription
from broker.core.guard import OWNER_KEY
from broker.core.subscriptions.payload import TRIGGERS, Compiled, Compiler
from broker.errors import BadRequestData, NgsiLdError, ResourceNotFound
from broker.jsonld.context import ContextValue, TermMap
from broker.model.entity import check_entity_id, now_iso
from broker.notify.senders import redact_uri
from broker.outbound import OutboundPolicy, OutboundRefused
from broker.store.base import Store

log = logging.getLogger("renkei.subscriptions")


class Registry:
    def __init__(
        self,
        store: Store,
        compiler: Compiler,
        *,
        outbound: OutboundPolicy,
        cache_ttl: float = 1.0,
    ) -> None:
        self.store = store
        self.compiler = compiler
        self.outbound = outbound
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, list[Compiled]]] = {}
        #: per tenant: how often its subscriptions changed here (see ``active``)
        self._generation: dict[str, int] = {}
        #: per tenant: the reload of its active subscriptions under way, and its generation
        self._loading: dict[str, tuple[int, asyncio.Task[list[Compiled]]]] = {}
        self._compiled: dict[tuple[str, str, str], Compiled] = {}
        #: reloads under way, which ``aclose`` cancels and waits for
        self._tasks: set[asyncio.Task[list[Compiled]]] = set()

    async def compile(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        return await self.compiler.compile(tenant, doc)

    async def _check_endpoint(self, uri: str) -> None:
        """400 for an endpoint the outbound policy refuses (by name, literal address or
        what the name resolves to now); every connection is checked again when made."""
        try:
            await self.outbound.check_url(uri, ("http", "https", "mqtt", "mqtts"))
        except (OutboundRefused, ValueError) as exc:
            raise BadRequestData(f"notification endpoint {redact_uri(uri)}: {exc}") from None

    # -- CRUD ---------------------------------------------------------------------------------

    def _forget(self, tenant: str) -> None:
        self._cache.pop(tenant, None)
        self._generation[tenant] = self._generation.get(tenant, 0) + 1

    async def create(self, tenant: str, body: dict[str, Any], context: ContextValue | None) -> str:
        doc = {
            k: v
            for k, v in body.items()
            if k not in ("status", "createdAt", "modifiedAt", "notificationStatus")
        }
        doc.setdefault("id", f"urn:ngsi-ld:Subscription:{uuid.uuid4()}")
        if context is not None:
            doc["@context"] = context
        compiled = await self.compile(tenant, doc)
        if compiled.expires_at is not None and compiled.expires_at <= time.time():
            raise BadRequestData("expiresAt is in the past")
        await self._check_endpoint(compiled.endpoint.uri)
        doc["createdAt"] = doc["modifiedAt"] = now_iso()
        await self.store.put_subscription(tenant, doc, create=True)
        self._forget(tenant)
        return str(doc["id"])

    async def get(self, tenant: str, sub_id: str) -> dict[str, Any]:
        check_entity_id(sub_id)
        doc = await self.store.get_subscription(tenant, sub_id)
        if doc is None:
            raise ResourceNotFound(f"subscription {sub_id} not found")
        return doc

    async def update(
        self, tenant: str, sub_id: str, patch: dict[str, Any], context: ContextValue | None
    ) -> None:
        doc = await self.get(tenant, sub_id)
        doc.pop("notificationStatus", None)
        if "id" in patch and patch["id"] != sub_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        for key, value in patch.items():
            if key in ("status", "createdAt", "modifiedAt", "id"):
                continue
            if (
                key == "notification"
                and isinstance(value, dict)
                and isinstance(doc.get("notification"), dict)
            ):
                doc["notification"] = {
                    **doc["notification"],
                    **keep_masked(doc["notification"], value),
                }
            elif value is None or value == "urn:ngsi-ld:null":
                doc.pop(key, None)
            else:
                doc[key] = value
        if context is not None:
            doc["@context"] = context
        compiled = await self.compile(tenant, doc)
        if (
            "expiresAt" in patch
            and compiled.expires_at is not None
            and compiled.expires_at <= time.time()
        ):
            raise BadRequestData("expiresAt is in the past")
        await self._check_endpoint(compiled.endpoint.uri)
        doc["modifiedAt"] = now_iso()
        await self.store.put_subscription(tenant, doc, create=False)
        self._forget(tenant)

    async def delete(self, tenant: str, sub_id: str) -> None:
        check_entity_id(sub_id)
        if not await self.store.delete_subscription(tenant, sub_id):
            raise ResourceNotFound(f"subscription {sub_id} not found")
        self._forget(tenant)

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        return await self.store.list_subscriptions(tenant)

    async def render(
        self,
        tenant: str,
        doc: dict[str, Any],
        tm: TermMap,
        status: dict[str, Any],
        *,
        sys_attrs: bool = False,
    ) -> dict[str, Any]:
        """The subscription as a client sees it: ``status`` (its delivery counts) filled
        in, terms in the request's context."""
        compiled = await self.compile(
            tenant, {k: v for k, v in doc.items() if k != "notificationStatus"}
        )
        out = {
            k: v
            for k, v in doc.items()
            if k not in ("@context", "notificationStatus", "createdAt", "modifiedAt", OWNER_KEY)
        }
        if sys_attrs:
            out.update({k: doc[k] for k in ("createdAt", "modifiedAt") if k in doc})
        for item in out.get("entities", []):
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                item["type"] = tm.compact(compiled.tm.expand(item["type"]))
        if "watchedAttributes" in out:
            out["watchedAttributes"] = [
                tm.compact(compiled.tm.expand(a)) for a in out["watchedAttributes"]
            ]
        notification = dict(out.get("notification", {}))
        if "attributes" in notification:
            notification["attributes"] = [
                tm.compact(compiled.tm.expand(a)) for a in notification["attributes"]
            ]
        notification.update(status)
        if status.get("timesSent"):  # "ok"/"failed" describe the last delivery, once there was one
            failed = "lastFailure" in status and status["lastFailure"] >= status.get(
                "lastSuccess", ""
            )
            notification["status"] = "failed" if failed else "ok"
        # the defaults of clause 5.2.12-5.2.15, shown as the subscription works with them
        notification.setdefault("format", "normalized")
        if isinstance(notification.get("endpoint"), dict):
            notification["endpoint"] = {"accept": "application/json", **notification["endpoint"]}
        out["notification"] = notification
        out.setdefault("notificationTrigger", sorted(compiled.triggers, key=TRIGGERS.index))
        out["status"] = compiled.status
        out["jsonldContext"] = compiled.context_url
        return mask_subscription(out)

    async def active(self, tenant: str) -> list[Compiled]:
        """The tenant's subscriptions, compiled; read again after ``cache_ttl`` (other
        servers on the same store) and after every change made here.

        One reload at a time per tenant: concurrent writes wait for the one under way
        instead of each reading the list. A reload that started before a change made
        here is not cached, and is not shared with callers that arrive after the change:
        it may have read the list as it was before."""
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1]
        generation = self._generation.get(tenant, 0)
        loading = self._loading.get(tenant)
        if loading is None or loading[0] != generation:
            reload = asyncio.create_task(self._reload(tenant, generation))
            loading = self._loading[tenant] = (generation, reload)
            self._tasks.add(reload)
            reload.add_done_callback(lambda done: self._reloaded(tenant, done))
        # shielded: a caller that is cancelled does not cancel the others' reload
        return await asyncio.shield(loading[1])

    def _reloaded(self, tenant: str, done: asyncio.Task[list[Compiled]]) -> None:
        self._tasks.discard(done)
        if self._loading.get(tenant, (0, None))[1] is done:
            del self._loading[tenant]
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have been cancelled

    async def _reload(self, tenant: str, generation: int) -> list[Compiled]:
        now = time.monotonic()
        compiled: list[Compiled] = []
        seen: dict[tuple[str, str, str], Compiled] = {}
        for doc in await self.store.list_subscriptions(tenant):
            # a subscription is compiled again only when it changed (its modifiedAt)
            key = (tenant, str(doc.get("id")), str(doc.get("modifiedAt")))
            found = self._compiled.get(key)
            if found is None:
                try:
                    found = await self.compile(
                        tenant, {k: v for k, v in doc.items() if k != "notificationStatus"}
                    )
                except NgsiLdError as exc:
                    log.warning("subscription %s cannot be used: %s", doc.get("id"), exc.detail)
                    continue
            seen[key] = found
            compiled.append(found)
        self._compiled = {k: v for k, v in self._compiled.items() if k[0] != tenant} | seen
        if self._generation.get(tenant, 0) == generation:  # else it may predate a change
            self._cache[tenant] = (now, compiled)
        return compiled

    def expire(self) -> None:
        """Forget the cached lists, as when their time-to-live ends: the next match reads
        the store again."""
        self._cache.clear()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
