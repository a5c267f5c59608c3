"""Context source registration subscriptions (clauses 5.11 and 5.2.12 as applied to
registrations): CRUD, and the notifications of registrations that start to match
(``newlyMatching``), change while matching (``updated``) or stop matching
(``noLongerMatching``, also when deleted).

A subscription selects registrations as ``GET /csourceRegistrations`` does: its
``entities`` (type, id, idPattern) and ``watchedAttributes`` against each registration's
``information``, ``q`` and ``csf`` against the registration's own members and context
source properties, ``geoQ`` against its ``location``. On creation, and after an update
(which may change what it selects), a notification of the registrations matching it is
sent (``newlyMatching``); with ``timeInterval`` the matching ones are sent again every
that many seconds. An update replaces the members it gives, ``notification`` whole
(clause 5.8.2); a deleted subscription sends nothing more, not even a retry. A notification's ``data`` holds
each registration as its subscriber's context names it, with only the ``information``
groups the subscription matches.

Notifications go out through the same senders as entity notifications (HTTP and MQTT,
the outbound policy checked when connecting), with retries; endpoints the policy refuses
are refused when the subscription is created or updated. Delivery counts (``timesSent``,
``timesFailed``, ``lastNotification``, ``lastSuccess``, ``lastFailure``) are kept in the
store beside the subscription, as those of entity subscriptions are: they survive a
restart and every process sharing the store shows the same ones. An attempt is counted
before it is sent, so a subscriber that has a notification in hand reads it counted;
an outcome not yet written is shown by the process that had it (reads and writes of a
subscription's counts take turns, so an outcome is never shown twice nor missed).
The counts show once a notification was attempted: ``notification.status`` is then
``ok`` or ``failed`` after the last attempt, and ``timesFailed`` shows once one failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from broker.auth.masking import keep_masked, mask_subscription
from broker.core.subscriptions.payload import compact_selection
from broker.errors import BadRequestData, NgsiLdError, ResourceNotFound
from broker.federation.registrations import (
    Registration,
    RegistrationQuery,
    RegistrationService,
    ResolveContext,
)
from broker.jsonld.context import CORE_CONTEXT_URL, ContextValue, TermMap
from broker.model.entity import check_entity_id, check_name, iri_to_uri, now_iso
from broker.model.store import NotificationRecord
from broker.notify.senders import DeliveryError, Endpoint, Senders
from broker.outbound import OutboundPolicy, OutboundRefused
from broker.query import geo_query_from_json, parse_q, resolve_geo, resolve_q
from broker.query.patterns import check_pattern
from broker.store.base import RegistrationStore

log = logging.getLogger("renkei.federation")

LINK_REL = "http://www.w3.org/ns/json-ld#context"
SYSTEM = ("createdAt", "modifiedAt")
READ_ONLY: tuple[str, ...] = ("status", "timesSent", "timesFailed", "lastNotification")
READ_ONLY += ("lastSuccess", "lastFailure")


def _epoch(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise BadRequestData(f"{what} must be a date-time string")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestData(f"{what} is not a valid date-time") from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@dataclass(slots=True)
class CompiledCsub:
    """A registration subscription compiled for matching."""

    id: str
    tenant: str
    doc: dict[str, Any]
    tm: TermMap
    selectors: list[RegistrationQuery]
    endpoint: Endpoint
    active: bool = True
    expires_at: float | None = None
    time_interval: float | None = None

    def status(self, now: float | None = None) -> str:
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active" if self.active else "paused"

    def matching_infos(self, reg: Registration) -> list[int]:
        """Indexes of the registration's ``information`` groups this subscription
        matches; empty when it does not match the registration."""
        if not reg.active():
            return []
        found: list[int] = []
        for sel in self.selectors:
            if not sel.admits(reg):
                continue
            for n, info in enumerate(reg.infos):
                if n not in found and (
                    not (sel.types or sel.ids or sel.id_pattern or sel.attrs)
                    or info.selects(
                        types=sel.types, ids=sel.ids, id_pattern=sel.id_pattern, attrs=sel.attrs
                    )
                ):
                    found.append(n)
        return sorted(found)


class CsourceSubscriptionService:
    """Subscriptions to context source registrations (see the module docstring)."""

    def __init__(
        self,
        store: RegistrationStore,
        registrations: RegistrationService,
        senders: Senders,
        resolve: ResolveContext,
        *,
        outbound: OutboundPolicy | None = None,
        max_attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.store = store
        self.registrations = registrations
        self.senders = senders
        self.resolve = resolve
        self.outbound = outbound or OutboundPolicy()
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._tasks: set[asyncio.Task[None]] = set()
        #: per subscription: its deliveries under way (cancelled when it is deleted)
        self._deliveries: dict[tuple[str, str], set[asyncio.Task[None]]] = {}
        #: per subscription: outcomes being written, and the turn of reads and writes
        self._unwritten: dict[tuple[str, str], list[NotificationRecord]] = {}
        self._turns: dict[tuple[str, str], asyncio.Lock] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._last_round: dict[tuple[str, str], float] = {}
        #: tenants with timeInterval subscriptions (see ``start``)
        self._periodic: set[str] = set()
        registrations.listeners.append(self.on_change)

    # -- validation ------------------------------------------------------------------------

    async def compile(self, tenant: str, doc: dict[str, Any]) -> CompiledCsub:
        if doc.get("type") != "Subscription":
            raise BadRequestData("a context source registration subscription has type Subscription")
        check_entity_id(doc.get("id"), "subscription id")
        tm = await self.resolve(doc.get("@context"))
        entities = doc.get("entities")
        watched = doc.get("watchedAttributes")
        if entities is not None and (not isinstance(entities, list) or not entities):
            raise BadRequestData("entities must be a non-empty array")
        if watched is not None and (
            not isinstance(watched, list)
            or not watched
            or not all(isinstance(w, str) for w in watched)
        ):
            raise BadRequestData("watchedAttributes must be a non-empty array of names")
        attrs = [tm.expand(check_name(w)) for w in watched or []] or None
        q = csf = geo = None
        try:
            if doc.get("q") is not None:
                q = resolve_q(parse_q(str(doc["q"])), tm.expand)
            if doc.get("csf") is not None:
                csf = resolve_q(parse_q(str(doc["csf"])), tm.expand)
            if doc.get("geoQ") is not None:
                parsed = geo_query_from_json(doc["geoQ"])
                geo = resolve_geo(parsed, tm.expand) if parsed else None
        except NgsiLdError as exc:
            raise BadRequestData(exc.detail) from None
        selectors = []
        for e in entities or [None]:
            if e is None:
                selectors.append(RegistrationQuery(attrs=attrs, q=q, csf=csf, geo=geo))
                continue
            if not isinstance(e, dict) or not isinstance(e.get("type"), str):
                raise BadRequestData("entities: each needs a type")
            if "id" in e:
                check_entity_id(e["id"])
            if "idPattern" in e:
                check_pattern(str(e["idPattern"]))
            selectors.append(
                RegistrationQuery(
                    ids=[e["id"]] if "id" in e else None,
                    id_pattern=e.get("idPattern"),
                    types=[[tm.expand(check_name(e["type"], "entity type"))]],
                    attrs=attrs,
                    q=q,
                    csf=csf,
                    geo=geo,
                )
            )
        notification = doc.get("notification")
        if not isinstance(notification, dict):
            raise BadRequestData("notification is mandatory")
        endpoint = notification.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("uri"), str):
            raise BadRequestData("notification.endpoint.uri is mandatory")
        accept = endpoint.get("accept", "application/json")
        if accept not in ("application/json", "application/ld+json"):
            raise BadRequestData(
                "notification.endpoint.accept must be application/json or application/ld+json"
            )
        fmt = notification.get("format", "normalized")
        if fmt not in ("normalized", "keyValues", "concise", "simplified"):
            raise BadRequestData("notification.format is not a known format")
        interval = doc.get("timeInterval")
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0
        ):
            raise BadRequestData("timeInterval must be a positive number of seconds")
        if interval is not None and watched is not None:
            raise BadRequestData("timeInterval and watchedAttributes cannot be used together")
        active = doc.get("isActive", True)
        if not isinstance(active, bool):
            raise BadRequestData("isActive must be true or false")
        expires = _epoch(doc["expiresAt"], "expiresAt") if doc.get("expiresAt") else None
        for key in ("throttling",):
            value = doc.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise BadRequestData(f"{key} must be a number of seconds")
        return CompiledCsub(
            id=doc["id"],
            tenant=tenant,
            doc=doc,
            tm=tm,
            selectors=selectors,
            endpoint=Endpoint(uri=endpoint["uri"], accept=accept),
            active=active,
            expires_at=expires,
            time_interval=float(interval) if interval is not None else None,
        )

    async def _check_endpoint(self, uri: str) -> None:
        try:
            await self.outbound.check_url(uri, ("http", "https", "mqtt", "mqtts"))
        except (OutboundRefused, ValueError) as exc:
            raise BadRequestData(f"notification endpoint: {exc}") from None

    # -- CRUD ------------------------------------------------------------------------------

    async def create(self, tenant: str, body: dict[str, Any], context: ContextValue | None) -> str:
        doc = {k: v for k, v in body.items() if k not in (*READ_ONLY, *SYSTEM)}
        doc.setdefault("id", f"urn:ngsi-ld:Subscription:{uuid.uuid4()}")
        if context is not None:
            doc["@context"] = context
        sub = await self.compile(tenant, doc)
        if sub.expires_at is not None and sub.expires_at <= time.time():
            raise BadRequestData("expiresAt is in the past")
        await self._check_endpoint(sub.endpoint.uri)
        doc["createdAt"] = doc["modifiedAt"] = now_iso()
        await self.store.put_registration(tenant, "subscription", doc, create=True)
        await self._send_matching(sub)
        return sub.id

    async def _send_matching(self, sub: CompiledCsub) -> None:
        """After a subscription is created or updated: the registrations that match it
        as it now stands, as ``newlyMatching`` (nothing when none does or when it is not
        active); a ``timeInterval`` one counts its next round from now."""
        if sub.status() == "active":
            data = [
                (reg, infos)
                for reg in await self.registrations.active(sub.tenant)
                if (infos := sub.matching_infos(reg))
            ]
            if data:
                self._submit(sub, data, "newlyMatching")
            if sub.time_interval is not None:
                self._last_round[(sub.tenant, sub.id)] = time.monotonic()
        if sub.time_interval is not None:
            self._periodic.add(sub.tenant)

    async def get(self, tenant: str, sub_id: str) -> dict[str, Any]:
        check_entity_id(sub_id, "subscription id")
        doc = await self.store.get_registration(tenant, "subscription", sub_id)
        if doc is None:
            raise ResourceNotFound(f"context source registration subscription {sub_id} not found")
        return doc

    async def update(
        self, tenant: str, sub_id: str, patch: dict[str, Any], context: ContextValue | None
    ) -> None:
        doc = await self.get(tenant, sub_id)
        if "id" in patch and patch["id"] != sub_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        for key, value in patch.items():
            if key in ("id", *READ_ONLY, *SYSTEM):
                continue
            if key == "notification" and isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = keep_masked(doc[key], value)  # replaced whole (clause 5.8.2)
            elif value is None or value == "urn:ngsi-ld:null":
                doc.pop(key, None)
            else:
                doc[key] = value
        if context is not None:
            doc["@context"] = context
        sub = await self.compile(tenant, doc)
        if "expiresAt" in patch and sub.expires_at is not None and sub.expires_at <= time.time():
            raise BadRequestData("expiresAt is in the past")
        await self._check_endpoint(sub.endpoint.uri)
        doc["modifiedAt"] = now_iso()
        await self.store.put_registration(tenant, "subscription", doc, create=False)
        # what it selects may have changed: the subscriber is told, as on creation, of
        # the registrations that match it now
        await self._send_matching(sub)

    async def delete(self, tenant: str, sub_id: str) -> None:
        check_entity_id(sub_id, "subscription id")
        if not await self.store.delete_registration(tenant, "subscription", sub_id):
            raise ResourceNotFound(f"context source registration subscription {sub_id} not found")
        self._last_round.pop((tenant, sub_id), None)
        self._turns.pop((tenant, sub_id), None)
        # a deleted subscription sends nothing more, retries of earlier notifications
        # included
        for task in self._deliveries.pop((tenant, sub_id), set()):
            task.cancel()

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        return await self.store.list_registrations(tenant, "subscription")

    async def render(
        self, tenant: str, doc: dict[str, Any], tm: TermMap, *, sys_attrs: bool = False
    ) -> dict[str, Any]:
        sub = await self.compile(tenant, doc)
        out = {k: v for k, v in doc.items() if k not in ("@context", *SYSTEM)}
        if sys_attrs:
            out.update({k: doc[k] for k in SYSTEM if k in doc})
        compact_selection(out, sub.tm, tm)
        notification = dict(out.get("notification", {}))
        status = await self.delivery_status(tenant, sub.id)
        if status.get("timesSent"):  # shown once a notification was attempted
            notification.update({k: v for k, v in status.items() if k != "timesFailed" or v})
            failed = "lastFailure" in status and status["lastFailure"] >= status.get(
                "lastSuccess", ""
            )
            notification["status"] = "failed" if failed else "ok"  # the last attempt's
        out["notification"] = notification
        out["status"] = sub.status()
        return mask_subscription(out)

    # -- notifications -----------------------------------------------------------------------

    async def _active(self, tenant: str) -> list[CompiledCsub]:
        out = []
        for doc in await self.all(tenant):
            try:
                sub = await self.compile(tenant, doc)
            except NgsiLdError as exc:
                log.warning(
                    "registration subscription %s cannot be used: %s", doc.get("id"), exc.detail
                )
                continue
            if sub.status() == "active":
                out.append(sub)
        return out

    async def on_change(
        self, tenant: str, before: Registration | None, after: Registration | None
    ) -> None:
        """Registration listener: notify the subscriptions the change concerns."""
        for sub in await self._active(tenant):
            if sub.time_interval is not None:
                continue  # those are sent on their own clock
            was = sub.matching_infos(before) if before is not None else []
            now = sub.matching_infos(after) if after is not None else []
            if now and after is not None:
                self._submit(sub, [(after, now)], "updated" if was else "newlyMatching")
            elif was and before is not None:
                self._submit(sub, [(before, was)], "noLongerMatching")

    def _render_registration(
        self, sub: CompiledCsub, reg: Registration, infos: list[int]
    ) -> dict[str, Any]:
        body = self.registrations.render(reg, sub.tm)
        body["information"] = [body["information"][n] for n in infos]
        return body

    def _submit(
        self, sub: CompiledCsub, data: list[tuple[Registration, list[int]]], reason: str
    ) -> None:
        notification: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "ContextSourceNotification",
            "subscriptionId": sub.id,
            "notifiedAt": now_iso(),
            "data": [self._render_registration(sub, reg, infos) for reg, infos in data],
            "triggerReason": reason,
        }
        headers = {"Content-Type": sub.endpoint.accept}
        ctx = sub.doc.get("@context")
        if sub.endpoint.accept == "application/ld+json":
            notification["@context"] = ctx if ctx is not None else CORE_CONTEXT_URL
        else:
            url = (
                ctx
                if isinstance(ctx, str)
                else ctx[0]
                if isinstance(ctx, list) and ctx and isinstance(ctx[0], str)
                else CORE_CONTEXT_URL
            )
            headers["Link"] = f'<{iri_to_uri(url)}>; rel="{LINK_REL}"; type="application/ld+json"'
        if sub.tenant:
            headers["NGSILD-Tenant"] = sub.tenant
        task = asyncio.create_task(self._deliver(sub, orjson.dumps(notification), headers))
        self._tasks.add(task)
        key = (sub.tenant, sub.id)
        self._deliveries.setdefault(key, set()).add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            pending = self._deliveries.get(key)
            if pending is not None:
                pending.discard(task)
                if not pending:
                    del self._deliveries[key]

        task.add_done_callback(done)

    def _turn(self, key: tuple[str, str]) -> asyncio.Lock:
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = asyncio.Lock()
        return turn

    async def delivery_status(self, tenant: str, sub_id: str) -> dict[str, Any]:
        """The stored delivery counts of a subscription with this process's outcomes
        not yet written added."""
        key = (tenant, sub_id)
        async with self._turn(key):
            status = dict(await self.store.registration_status(tenant, sub_id))
            for rec in self._unwritten.get(key, ()):
                status["timesSent"] = status.get("timesSent", 0) + rec.sent
                status["timesFailed"] = status.get("timesFailed", 0) + rec.failed
                for name, value in (
                    ("lastNotification", rec.last_notification),
                    ("lastSuccess", rec.last_success),
                    ("lastFailure", rec.last_failure),
                ):
                    if value is not None:
                        status[name] = value
        return status

    async def _record(self, record: NotificationRecord) -> None:
        """Keep a delivery outcome in the store; a store that cannot take it now does
        not stop the delivery (the count is then short by it). Shown at once, before it
        is written (see :meth:`delivery_status`)."""
        key = (record.tenant, record.sub_id)
        unwritten = self._unwritten.setdefault(key, [])
        unwritten.append(record)
        async with self._turn(key):
            try:
                await self.store.record_registration_notifications([record])
            except NgsiLdError as exc:
                log.warning(
                    "delivery status of registration subscription %s not kept: %s",
                    record.sub_id,
                    exc.detail,
                )
            finally:
                unwritten.remove(record)
                if not unwritten:
                    self._unwritten.pop(key, None)

    async def _deliver(self, sub: CompiledCsub, body: bytes, headers: dict[str, str]) -> None:
        delay = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            at = now_iso()
            await self._record(NotificationRecord(sub.tenant, sub.id, sent=1, last_notification=at))
            try:
                await self.senders.send(sub.endpoint, body, headers)
            except DeliveryError as exc:
                await self._record(
                    NotificationRecord(sub.tenant, sub.id, failed=1, last_failure=at)
                )
                if not exc.retryable or attempt == self.max_attempts:
                    log.warning("registration notification for %s failed: %s", sub.id, exc)
                    return
                await asyncio.sleep(delay)
                delay *= 2
            else:
                await self._record(NotificationRecord(sub.tenant, sub.id, last_success=at))
                return

    # -- timeInterval ----------------------------------------------------------------------

    def start(self, tenants: Any, *, rescan: float = 30.0) -> None:
        """Start the periodic round of ``timeInterval`` subscriptions; ``tenants`` is an
        async callable naming the tenants. The tenants having such subscriptions are
        looked for every ``rescan`` seconds (and noted at once when one is made here);
        only those are looked at every second."""

        async def loop() -> None:
            last_scan = -rescan
            failing = False
            while True:
                await asyncio.sleep(1.0)
                try:
                    if time.monotonic() - last_scan >= rescan:
                        last_scan = time.monotonic()
                        for tenant in dict.fromkeys(["", *await tenants()]):
                            if any(s.time_interval for s in await self._active(tenant)):
                                self._periodic.add(tenant)
                    for tenant in sorted(self._periodic):
                        await self.tick(tenant)
                    failing = False
                except NgsiLdError as exc:  # the store is unavailable: next round
                    if not failing:
                        log.warning("registration subscription round failed: %s", exc.detail)
                    failing = True

        self._ticker = asyncio.create_task(loop())

    async def tick(self, tenant: str) -> None:
        now = time.monotonic()
        for sub in await self._active(tenant):
            if sub.time_interval is None:
                continue
            key = (tenant, sub.id)
            last = self._last_round.get(key)
            if last is not None and now - last < sub.time_interval:
                continue
            self._last_round[key] = now
            data = [
                (reg, infos)
                for reg in await self.registrations.active(tenant)
                if (infos := sub.matching_infos(reg))
            ]
            if data:
                self._submit(sub, data, "newlyMatching")

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
