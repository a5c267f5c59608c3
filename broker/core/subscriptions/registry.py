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

from broker.auth.access import current
from broker.auth.masking import keep_masked, keep_masked_v2, mask_subscription
from broker.core.guard import OWNER_KEY
from broker.core.subscriptions import v2
from broker.core.subscriptions.payload import TRIGGERS, Compiled, Compiler, compact_selection
from broker.errors import BadRequestData, Forbidden, NgsiLdError, ResourceNotFound, Unauthorized
from broker.jsonld.context import ContextValue, TermMap
from broker.model.entity import check_entity_id, now_iso
from broker.notify.senders import redact_uri
from broker.outbound import OutboundPolicy, OutboundRefused
from broker.store.base import Store

#: Delivery status members only NGSI v2 shows.
_V2_STATUS = ("lastSuccessCode", "lastFailureReason", "failsCounter")
SUB_NOT_FOUND = "The requested subscription has not been found. Check id"

log = logging.getLogger("renkei.subscriptions")


def check_subscribe(tenant: str, compiled: Compiled) -> None:
    """Refuse a subscription reaching beyond the principal's ``subscribe`` types.

    Every entity selector must select only entities of a type the principal may
    subscribe to: each alternative of its type expression names at least one such type
    (an entity matching ``A;B`` has both); an NGSI v2 selector names such a type. A
    subscription without entity selectors, or a selector without a type (or with a v2
    ``typePattern``), watches every type and needs ``subscribe`` on all of them.
    Outside a request, or with access control off, nothing is checked.
    """
    access = current()
    if access is None:
        return
    allowed = access.allowed("subscribe", tenant)
    if allowed is None:
        return
    if compiled.v2 is not None:
        v2_selectors = compiled.v2.selectors
        if v2_selectors and all(s.type_iri in allowed for s in v2_selectors):
            return
    elif compiled.selectors and all(
        s.types and all(any(t in allowed for t in conj) for conj in s.types)
        for s in compiled.selectors
    ):
        return
    if access.principal.anonymous:
        raise Unauthorized("credentials are required for this operation")
    raise Forbidden("not allowed to subscribe to these entities")


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
        what the name resolves to now); every connection is checked again when made.
        ``${...}`` macros of a v2 custom URL are checked as plain text here."""
        try:
            await self.outbound.check_url(
                v2.substitute_text(uri, {}) if "${" in uri else uri,
                ("http", "https", "mqtt", "mqtts"),
            )
        except (OutboundRefused, ValueError) as exc:
            raise BadRequestData(f"notification endpoint {redact_uri(uri)}: {exc}") from None

    async def _save(
        self, tenant: str, doc: dict[str, Any], *, create: bool, past_ok: bool = True
    ) -> None:
        compiled = await self.compile(tenant, doc)
        if not past_ok and compiled.expires_at is not None and compiled.expires_at <= time.time():
            raise BadRequestData("expiresAt is in the past")
        check_subscribe(tenant, compiled)
        await self._check_endpoint(compiled.endpoint.uri)
        doc["modifiedAt"] = now_iso()
        if create:
            doc["createdAt"] = doc["modifiedAt"]
        await self.store.put_subscription(tenant, doc, create=create)
        self._forget(tenant)

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
        await self._save(tenant, doc, create=True, past_ok=False)
        return str(doc["id"])

    async def get(self, tenant: str, sub_id: str) -> dict[str, Any]:
        """An NGSI-LD subscription (an NGSI v2 one answers as missing here)."""
        check_entity_id(sub_id)
        doc = await self.store.get_subscription(tenant, sub_id)
        if doc is None or v2.is_v2(doc):
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
        await self._save(tenant, doc, create=False, past_ok="expiresAt" not in patch)

    async def delete(self, tenant: str, sub_id: str) -> None:
        await self.get(tenant, sub_id)
        if not await self.store.delete_subscription(tenant, sub_id):
            raise ResourceNotFound(f"subscription {sub_id} not found")
        self._forget(tenant)

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's NGSI-LD subscriptions."""
        return [d for d in await self.store.list_subscriptions(tenant) if not v2.is_v2(d)]

    # -- NGSI v2 ------------------------------------------------------------------------------

    async def create_v2(self, tenant: str, body: Any, service_path: str | None) -> str:
        """Create an NGSI v2 subscription; ``service_path`` is the ``Fiware-ServicePath``
        it was created under (the entities it selects)."""
        doc_v2 = v2.checked(body)
        doc: dict[str, Any] = {
            "id": v2.new_id(),
            v2.V2_KEY: doc_v2,
            "servicePath": v2.stored_paths(service_path),
        }
        if doc_v2.get("status") == "oneshot":
            doc["oneshotSince"] = time.time()
        await self._save(tenant, doc, create=True)
        return str(doc["id"])

    async def get_v2(self, tenant: str, sub_id: str) -> dict[str, Any]:
        doc = await self.store.get_subscription(tenant, sub_id) if v2.check_sub_id(sub_id) else None
        if doc is None or not v2.is_v2(doc):
            raise ResourceNotFound(SUB_NOT_FOUND)
        return doc

    async def update_v2(self, tenant: str, sub_id: str, body: Any) -> None:
        """PATCH: each member given replaces the stored one (``expires: null`` drops it);
        credentials echoed back masked keep the stored ones."""
        patch = v2.checked(body, partial=True)
        doc = await self.get_v2(tenant, sub_id)
        doc.pop("notificationStatus", None)
        stored = dict(doc[v2.V2_KEY])
        if "notification" in patch:
            patch["notification"] = keep_masked_v2(stored["notification"], patch["notification"])
        for key, value in patch.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
        doc[v2.V2_KEY] = stored
        if patch.get("status") == "oneshot":
            doc["oneshotSince"] = time.time()
        await self._save(tenant, doc, create=False)

    async def delete_v2(self, tenant: str, sub_id: str) -> None:
        await self.get_v2(tenant, sub_id)
        if not await self.store.delete_subscription(tenant, sub_id):
            raise ResourceNotFound(SUB_NOT_FOUND)
        self._forget(tenant)

    async def all_v2(self, tenant: str, service_path: str | None) -> list[dict[str, Any]]:
        """The tenant's NGSI v2 subscriptions; with a ``Fiware-ServicePath`` other than
        ``/#``, those created under exactly that one (as Orion lists them)."""
        wanted = v2.stored_paths(service_path)
        return [
            d
            for d in await self.store.list_subscriptions(tenant)
            if v2.is_v2(d) and (wanted == "/#" or d.get("servicePath") == wanted)
        ]

    def render_v2(self, doc: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        return mask_subscription(v2.shown(doc, status))

    async def deactivate(self, sub: Compiled, why: str) -> None:
        """Make a v2 subscription inactive: a ``oneshot`` one that fired (unless it was
        set ``oneshot`` again meanwhile), or one over its ``maxFailsLimit``."""
        doc = await self.store.get_subscription(sub.tenant, sub.id)
        if doc is None or not v2.is_v2(doc):
            return
        doc.pop("notificationStatus", None)
        stored = doc[v2.V2_KEY]
        if why == "oneshot" and (
            stored.get("status") != "oneshot"
            or (sub.v2 is not None and doc.get("oneshotSince") != sub.v2.armed_at)
        ):
            return
        stored["status"] = "inactive"
        doc["modifiedAt"] = now_iso()
        await self.store.put_subscription(sub.tenant, doc, create=False)
        self._forget(sub.tenant)

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
        compact_selection(out, compiled.tm, tm)
        notification = dict(out.get("notification", {}))
        if "attributes" in notification:
            notification["attributes"] = [
                tm.compact(compiled.tm.expand(a)) for a in notification["attributes"]
            ]
        notification.update({k: v for k, v in status.items() if k not in _V2_STATUS})
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
