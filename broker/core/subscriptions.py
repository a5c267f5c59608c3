"""Subscriptions and notifications (clause 5.8 and 5.11).

* A subscription is stored as the client wrote it (terms as given) with the context
  it was written under; it is compiled once (terms expanded, q/geoQ/scopeQ parsed)
  and cached, so matching a change is in-memory work.
* Matching runs in the process that wrote, right after the store committed, on the
  entity before and after the change (``broker.query.evaluate`` decides q, geoQ and
  scopeQ, exactly as queries do). Delivery is handed to background tasks: a slow or
  dead endpoint never slows a write and never holds back other subscriptions.
* Throttling and ``timeInterval`` are enforced with ``Store.claim_notification``, an
  atomic compare-and-set in the store, so several broker processes agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson

from broker.auth.masking import keep_masked, mask_subscription
from broker.core.guard import OWNER_KEY
from broker.core.model import View
from broker.core.projection import Tree
from broker.errors import BadRequestData, NgsiLdError, NotImplementedYet, ResourceNotFound
from broker.jsonld.context import CORE_CONTEXT_URL, ContextValue, TermMap, single_url
from broker.model.entity import (
    ATTRIBUTE_TYPES,
    ENTITY_KEYS,
    NULL,
    Entity,
    check_datetime,
    check_entity_id,
    check_name,
    now_iso,
)
from broker.model.query import GeoQuery, Node, ScopeQuery
from broker.model.store import EntityQuery, NotificationRecord, Selector, WriteResult
from broker.notify.senders import DeliveryError, Endpoint, Senders, redact_uri
from broker.outbound import OutboundPolicy, OutboundRefused
from broker.query import (
    geo_query_from_json,
    parse_q,
    parse_scope_q,
    resolve_geo,
    resolve_q,
)
from broker.query.evaluate import matches_geo, matches_q, matches_scope
from broker.query.patterns import check_pattern, search
from broker.query.types import type_alternatives
from broker.store.base import Store

log = logging.getLogger("renkei.subscriptions")

TRIGGERS = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
DEFAULT_TRIGGERS = ("attributeCreated", "attributeUpdated")
FORMATS = {
    "normalized": "normalized",
    "concise": "concise",
    "keyValues": "keyValues",
    "simplified": "keyValues",
}
ACCEPTS = ("application/json", "application/ld+json")
SCHEMES = ("http://", "https://", "mqtt://", "mqtts://")
LINK_REL = "http://www.w3.org/ns/json-ld#context"
_MEMBERS = {
    "id",
    "type",
    "subscriptionName",
    "description",
    "entities",
    "watchedAttributes",
    "notificationTrigger",
    "timeInterval",
    "q",
    "geoQ",
    "csf",
    "scopeQ",
    "lang",
    "isActive",
    "notification",
    "expiresAt",
    "throttling",
    "jsonldContext",
    "temporalQ",
    "createdAt",
    "modifiedAt",
    "status",
    "@context",
    "datasetId",
}
PREVIOUS = {
    "value": "previousValue",
    "object": "previousObject",
    "languageMap": "previousLanguageMap",
    "json": "previousJson",
    "vocab": "previousVocab",
    "valueList": "previousValueList",
    "objectList": "previousObjectList",
}
_STATUS_MEMBERS = (
    "timesSent",
    "timesFailed",
    "lastNotification",
    "lastSuccess",
    "lastFailure",
    "status",
)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def _pairs(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(i, dict) and isinstance(i.get("key"), str) and isinstance(i.get("value"), str)
        for i in value
    ):
        raise BadRequestData(f"{what} must be an array of {{key, value}} strings")
    return tuple((i["key"], i["value"]) for i in value)


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequestData(f"{what} must be a positive number of seconds")
    return float(value)


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequestData(f"{what} must be a non-empty array of attribute names")
    return [check_name(v, what) for v in value]


@dataclass
class Compiled:
    """A subscription ready for matching: terms expanded, queries parsed."""

    tenant: str
    id: str
    doc: dict[str, Any]
    tm: TermMap
    context_url: str
    selectors: list[Selector]
    watched: set[str] | None
    triggers: set[str]
    q: Node | None
    geo: GeoQuery | None
    scope: ScopeQuery | None
    attributes: set[str] | None
    endpoint: Endpoint
    format: str
    sys_attrs: bool
    show_changes: bool
    lang: str | None
    throttling: float | None
    time_interval: float | None
    expires_at: float | None
    is_active: bool
    #: Terms of notifications are compacted with this (``jsonldContext``, else the
    #: subscription's own context).
    render_tm: TermMap | None = None
    pick: Tree | None = None
    omit: Tree | None = None
    join: str | None = None
    join_level: int = 1
    dataset_ids: set[str | None] | None = None
    #: Who created or last changed the subscription (``Principal.as_record()``), when
    #: access control is on: notifications carry only what it may read.
    owner: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active" if self.is_active else "paused"

    def selects(self, ent: Entity) -> bool:
        if not self.selectors:
            return True
        types = set(ent.get("type", ()))
        for sel in self.selectors:
            if sel.ids and ent["id"] not in sel.ids:
                continue
            if sel.id_pattern and not search(sel.id_pattern, ent["id"]):
                continue
            if sel.types and not any(all(t in types for t in conj) for conj in sel.types):
                continue
            return True
        return False

    @property
    def rendering(self) -> tuple[Any, ...] | None:
        """What a notification's entity depends on besides the change itself:
        subscriptions with equal keys render a change identically (None: not shared,
        linked entities are joined per subscription)."""
        if self.join is not None:
            return None
        return (
            id(self.render_tm or self.tm),
            self.format,
            self.sys_attrs,
            frozenset(self.attributes) if self.attributes is not None else None,
            self.lang,
            repr(self.pick),
            repr(self.omit),
            frozenset(self.dataset_ids) if self.dataset_ids is not None else None,
            frozenset(self.watched) if self.watched is not None else None,
            self.show_changes,
        )

    def view(self) -> View:
        return View(
            self.render_tm or self.tm,
            format=self.format,  # type: ignore[arg-type]
            sys_attrs=self.sys_attrs,
            attrs=self.attributes,
            lang=self.lang,
            pick=self.pick,
            omit=self.omit,
            join=self.join,
            join_level=self.join_level,
            dataset_ids=self.dataset_ids,
        )


def _attr_events(before: Entity | None, after: Entity | None, watched: set[str] | None) -> set[str]:
    """The NGSI-LD change events of one write, limited to watched attributes if any."""
    if before is None and after is None:
        return set()
    if after is None:
        assert before is not None
        had = {k for k in before if k not in ENTITY_KEYS}
        # deleting an entity deletes its (watched) attributes too
        return {"entityDeleted"} | (
            {"attributeDeleted"} if (had & watched if watched is not None else had) else set()
        )
    events = {"entityCreated"} if before is None else set()
    old = before or {}
    names = {k for k in (*old, *after) if k not in ENTITY_KEYS}
    if watched is not None:
        names &= watched
    for name in names:
        # compared per instance (datasetId): an instance can appear, change or go
        olds = {i.get("datasetId"): i for i in old.get(name, ())}
        news = {i.get("datasetId"): i for i in after.get(name, ())}
        if news.keys() - olds.keys():
            events.add("attributeCreated")
        if olds.keys() - news.keys():
            events.add("attributeDeleted")
        if any(olds[d] != news[d] for d in olds.keys() & news.keys()):
            events.add("attributeUpdated")
    if before is not None and (events or before.get("type") != after.get("type")):
        events.add("entityUpdated")
    return events


@dataclass
class _Delivery:
    sub: Compiled
    body: bytes
    headers: dict[str, str]


#: Notifications of one subscription on their way at once; changes made meanwhile queue
#: up and go out together, in one notification (``data`` holds them all), keeping order.
PER_SUBSCRIPTION_IN_FLIGHT = 1
#: Entities in one notification built from queued changes, at most.
MAX_COALESCED = 500


class SubscriptionService:
    def __init__(
        self,
        store: Store,
        senders: Senders,
        *,
        resolve: Any,
        implicit_url: Any,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        cache_ttl: float = 1.0,
        concurrency: int = 64,
        linked: Any = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.store = store
        self.senders = senders
        #: endpoints it refuses are refused when a subscription is created or updated
        self.outbound = outbound or OutboundPolicy()
        #: ``async (tenant, roots, levels) -> {id: entity}`` for notifications with join
        self._linked = linked
        #: ``async (ContextValue | None) -> TermMap`` and ``async (TermMap, tenant) -> str``
        self._resolve = resolve
        self._implicit_url = implicit_url
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, list[Compiled]]] = {}
        #: per tenant: how often its subscriptions changed here (see ``_active``)
        self._generation: dict[str, int] = {}
        #: per tenant: the reload of its active subscriptions under way, and its generation
        self._loading: dict[str, tuple[int, asyncio.Task[list[Compiled]]]] = {}
        self._compiled: dict[tuple[str, str, str], Compiled] = {}
        #: background work (deliveries, reloads) that ``aclose`` cancels and waits for
        self._tasks: set[asyncio.Task[Any]] = set()
        #: per subscription: deliveries on their way, and changes waiting for one to end
        self._in_flight: dict[tuple[str, str], int] = {}
        self._queued: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._scheduler: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, str], NotificationRecord] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.status_interval = 0.2
        #: ``(owner record, tenant, entity types) -> bool`` when access control is on
        self.may_read: Callable[[dict[str, Any], str, list[str]], bool] | None = None

    # -- validation and compilation -----------------------------------------------------------

    async def compile(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        """Validate a subscription document and compile it; raise BadRequestData if invalid."""
        unknown = set(doc) - _MEMBERS - {"notificationStatus", OWNER_KEY}
        if unknown:
            raise BadRequestData(f"unknown subscription member(s): {', '.join(sorted(unknown))}")
        if doc.get("type") != "Subscription":
            raise BadRequestData('a subscription needs "type": "Subscription"')
        sub_id = check_entity_id(doc.get("id"))
        tm: TermMap = await self._resolve(doc.get("@context"))
        render_tm = tm
        if "jsonldContext" in doc:
            url = doc["jsonldContext"]
            if not isinstance(url, str) or ":" not in url:
                raise BadRequestData("jsonldContext must be a URI")
            render_tm = await self._resolve(url)
        context_url = single_url(render_tm.context) or (await self._implicit_url(render_tm, tenant))
        if "csf" in doc:
            raise NotImplementedYet(
                "context source filters (csf) are not available in this version"
            )
        if "temporalQ" in doc:
            raise NotImplementedYet("temporalQ in subscriptions is not available in this version")
        selectors = [self._selector(e, tm) for e in self._list(doc.get("entities"), "entities")]
        watched = None
        if "watchedAttributes" in doc:
            watched = {tm.expand(n) for n in _names(doc["watchedAttributes"], "watchedAttributes")}
        if not selectors and watched is None:
            raise BadRequestData("a subscription needs entities or watchedAttributes")
        time_interval = (
            _positive(doc["timeInterval"], "timeInterval") if "timeInterval" in doc else None
        )
        throttling = _positive(doc["throttling"], "throttling") if "throttling" in doc else None
        if time_interval is not None and (watched is not None or throttling is not None):
            raise BadRequestData(
                "timeInterval cannot be combined with watchedAttributes or throttling"
            )
        triggers = doc.get("notificationTrigger", list(DEFAULT_TRIGGERS))
        if (
            not isinstance(triggers, list)
            or not triggers
            or any(t not in TRIGGERS for t in triggers)
        ):
            raise BadRequestData(
                f"notificationTrigger must be a non-empty array of {', '.join(TRIGGERS)}"
            )
        q = None
        if "q" in doc:
            if not isinstance(doc["q"], str):
                raise BadRequestData("q must be a string")
            # clients often percent-encode q inside JSON bodies as they would in a URL
            q = resolve_q(parse_q(unquote(doc["q"])), tm.expand)
        geo = None
        if doc.get("geoQ") is not None:
            parsed = geo_query_from_json(doc["geoQ"])
            geo = resolve_geo(parsed, tm.expand) if parsed else None
        scope = None
        if "scopeQ" in doc:
            if not isinstance(doc["scopeQ"], str):
                raise BadRequestData("scopeQ must be a string")
            scope = parse_scope_q(doc["scopeQ"])
        is_active = doc.get("isActive", True)
        if not isinstance(is_active, bool):
            raise BadRequestData("isActive must be true or false")
        expires_at = None
        if "expiresAt" in doc:
            expires_at = _epoch(check_datetime(doc["expiresAt"], "expiresAt"))
        lang = doc.get("lang")
        if lang is not None and not isinstance(lang, str):
            raise BadRequestData("lang must be a string")
        notification = doc.get("notification")
        if not isinstance(notification, dict):
            raise BadRequestData("a subscription needs a notification object")
        endpoint, fmt, attributes, sys_attrs, show_changes = self._notification(notification, tm)
        pick = self._projection(notification.get("pick"), "pick", tm)
        omit = self._projection(notification.get("omit"), "omit", tm)
        if pick is not None and omit is not None and set(pick) & set(omit):
            raise BadRequestData("the same member is both picked and omitted")
        if attributes is not None and (pick is not None or omit is not None):
            raise BadRequestData("notification.attributes cannot be combined with pick or omit")
        join = notification.get("join")
        if join is not None and join not in ("inline", "flat", "@none"):
            raise BadRequestData("notification.join must be inline, flat or @none")
        join_level = notification.get("joinLevel", 1)
        if isinstance(join_level, bool) or not isinstance(join_level, int) or join_level < 1:
            raise BadRequestData("notification.joinLevel must be a positive integer")
        dataset_ids = None
        if "datasetId" in doc:
            ds = doc["datasetId"]
            if not isinstance(ds, list) or not all(isinstance(d, str) for d in ds):
                raise BadRequestData("datasetId must be an array of dataset URIs (or @none)")
            dataset_ids = {None if d == "@none" else d for d in ds}
        return Compiled(
            tenant=tenant,
            id=sub_id,
            doc=doc,
            tm=tm,
            context_url=context_url,
            selectors=selectors,
            watched=watched,
            triggers=set(triggers),
            q=q,
            geo=geo,
            scope=scope,
            attributes=attributes,
            endpoint=endpoint,
            format=fmt,
            sys_attrs=sys_attrs,
            show_changes=show_changes,
            lang=lang,
            throttling=throttling,
            time_interval=time_interval,
            expires_at=expires_at,
            is_active=is_active,
            owner=doc.get(OWNER_KEY) if isinstance(doc.get(OWNER_KEY), dict) else None,
            render_tm=render_tm,
            pick=pick,
            omit=omit,
            join=None if join == "@none" else join,
            join_level=join_level,
            dataset_ids=dataset_ids,
        )

    @staticmethod
    def _projection(value: Any, what: str, tm: TermMap) -> Tree | None:
        if value is None:
            return None
        names = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise BadRequestData(f"notification.{what} must be an array of member names")
        return {
            n if n in ("id", "type", "scope") else tm.expand(check_name(n)): None for n in names
        }

    @staticmethod
    def _list(value: Any, what: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            raise BadRequestData(f"{what} must be a non-empty array")
        return value

    @staticmethod
    def _selector(item: Any, tm: TermMap) -> Selector:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise BadRequestData("each element of entities needs a type")
        ids = [check_entity_id(item["id"])] if "id" in item else None
        pattern = (
            check_pattern(item["idPattern"]) if isinstance(item.get("idPattern"), str) else None
        )
        types = [
            [tm.expand(check_name(t, "entity type")) for t in alt]
            for alt in type_alternatives(item["type"])
        ]
        return Selector(ids=ids, id_pattern=pattern, types=types)

    @staticmethod
    def _notification(
        n: dict[str, Any], tm: TermMap
    ) -> tuple[Endpoint, str, set[str] | None, bool, bool]:
        endpoint = n.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("uri"), str):
            raise BadRequestData("notification.endpoint.uri is required")
        uri = endpoint["uri"]
        if not uri.startswith(SCHEMES):
            raise BadRequestData(
                f"notification endpoint {uri!r} must be an http(s):// or mqtt(s):// URI"
            )
        accept = endpoint.get("accept", "application/json")
        if accept == "application/geo+json":
            raise NotImplementedYet("GeoJSON notifications are not available in this version")
        if accept not in ACCEPTS:
            raise BadRequestData(f"endpoint accept must be one of {', '.join(ACCEPTS)}")
        notifier_info = _pairs(endpoint.get("notifierInfo"), "notifierInfo")
        for key, value in notifier_info:
            if key == "MQTT-QoS" and value not in ("0", "1", "2"):
                raise BadRequestData("MQTT-QoS must be 0, 1 or 2")
            if key == "MQTT-Version" and value not in ("mqtt3.1.1", "mqtt5.0"):
                raise BadRequestData("MQTT-Version must be mqtt3.1.1 or mqtt5.0")
        fmt = n.get("format", "normalized")
        if fmt not in FORMATS:
            raise BadRequestData(f"notification format must be one of {', '.join(FORMATS)}")
        attributes = None
        if "attributes" in n:
            attributes = {tm.expand(a) for a in _names(n["attributes"], "notification.attributes")}
        for flag in ("sysAttrs", "showChanges"):
            if flag in n and not isinstance(n[flag], bool):
                raise BadRequestData(f"notification.{flag} must be true or false")
        ep = Endpoint(
            uri=uri,
            accept=accept,
            receiver_info=_pairs(endpoint.get("receiverInfo"), "receiverInfo"),
            notifier_info=notifier_info,
        )
        return ep, FORMATS[fmt], attributes, bool(n.get("sysAttrs")), bool(n.get("showChanges"))

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
        self, tenant: str, doc: dict[str, Any], tm: TermMap, *, sys_attrs: bool = False
    ) -> dict[str, Any]:
        """The subscription as a client sees it: status filled in, terms in the request's context."""
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
        status = self._with_pending(tenant, doc.get("id", ""), doc.get("notificationStatus", {}))
        notification.update(status)
        if status.get("timesSent"):  # "ok"/"failed" describe the last delivery, once there was one
            failed = "lastFailure" in status and status["lastFailure"] >= status.get(
                "lastSuccess", ""
            )
            notification["status"] = "failed" if failed else "ok"
        notification.setdefault("format", "normalized")
        out["notification"] = notification
        out["status"] = compiled.status
        out["jsonldContext"] = compiled.context_url
        return mask_subscription(out)

    # -- matching -----------------------------------------------------------------------------

    async def _active(self, tenant: str) -> list[Compiled]:
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

    async def on_change(self, tenant: str, results: Sequence[WriteResult]) -> None:
        """Entity listener: match each committed change and queue notifications."""
        subs = [
            s
            for s in await self._active(tenant)
            if s.time_interval is None and s.status == "active"
        ]
        if not subs:
            return
        for r in results:
            current = r.after if r.after is not None else r.before
            if current is None:
                continue
            # many subscriptions often render a change the same way: render it once each
            rendered: dict[tuple[Any, ...], dict[str, Any]] = {}
            for sub in subs:
                if not sub.selects(current):
                    continue
                if not self._owner_reads(sub, tenant, current):
                    continue
                events = _attr_events(r.before, r.after, sub.watched)
                if not events & sub.triggers:
                    continue
                if r.after is not None and not self._filters(sub, r.after):
                    continue
                key = sub.rendering
                if key is not None and key in rendered:
                    self.submit(sub, [rendered[key]])
                    continue
                linked = None
                flat: list[dict[str, Any]] = []
                if sub.join is not None and r.after is not None and self._linked is not None:
                    linked = await self._linked(tenant, [r.after], sub.join_level)
                data = [self._render_change(sub, r.before, r.after, linked, flat)]
                if key is not None:
                    rendered[key] = data[0]
                self.submit(sub, [*data, *(f for f in flat if f.get("id") != current["id"])])

    def _owner_reads(self, sub: Compiled, tenant: str, ent: Entity) -> bool:
        """Whether the subscription's owner may read ``ent`` (always, without access
        control or for a subscription stored before it was on)."""
        if self.may_read is None or sub.owner is None:
            return True
        return self.may_read(sub.owner, tenant, list(ent.get("type", ())))

    @staticmethod
    def _filters(sub: Compiled, ent: Entity) -> bool:
        return (
            (sub.q is None or matches_q(sub.q, ent))
            and (sub.geo is None or matches_geo(sub.geo, ent))
            and (sub.scope is None or matches_scope(sub.scope, ent))
        )

    def _render_change(
        self,
        sub: Compiled,
        before: Entity | None,
        after: Entity | None,
        linked: dict[str, Entity] | None = None,
        flat: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One entity of a notification: the entity now, deleted attributes as NGSI-LD
        Null, and with ``showChanges`` the previous value members (previousValue ...)."""
        view = sub.view()
        tm = view.tm
        if after is None:
            assert before is not None
            types = [tm.compact(t) for t in before["type"]]
            body: dict[str, Any] = {
                "id": before["id"],
                "type": types[0] if len(types) == 1 else types,
                "deletedAt": now_iso(),
            }
            if view.sys_attrs:
                body.update({k: before[k] for k in ("createdAt", "modifiedAt") if k in before})
            named = sub.attributes if sub.attributes is not None else sub.watched
            if named is None and sub.show_changes:
                named = {k for k in before if k not in ENTITY_KEYS}  # showChanges: all it had
            gone = [k for k in before if k not in ENTITY_KEYS and named is not None and k in named]
        else:
            body = view.entity(after, linked, flat)
            gone = [
                k
                for k in (before or {})
                if k not in ENTITY_KEYS and k not in after and view.keeps(k)
            ]
            if sub.watched is not None:
                gone = [k for k in gone if k in sub.watched]
        assert before is not None or not gone
        for iri in gone:
            old = before[iri][0] if before else {}
            kind = old.get("type", "Property")
            member = ATTRIBUTE_TYPES.get(kind, "value")
            if view.format == "keyValues":
                body[tm.compact(iri)] = NULL
                continue
            item: dict[str, Any] = {
                "type": kind,
                member: {"@none": NULL} if member == "languageMap" else NULL,
            }
            if view.sys_attrs:
                item.update({k: old[k] for k in ("createdAt", "modifiedAt") if k in old})
                item["deletedAt"] = now_iso()
            if sub.show_changes and member in old:
                item[PREVIOUS[member]] = self._member_value(view, member, old[member])
            body[tm.compact(iri)] = item
        if before is not None and after is not None and view.format != "keyValues":
            self._removed_instances(sub, view, before, after, body)
        if (
            sub.show_changes
            and before is not None
            and after is not None
            and view.format != "keyValues"
        ):
            for iri, instances in after.items():
                old_instances = before.get(iri)
                name = tm.compact(iri)
                if iri in ENTITY_KEYS or not old_instances or old_instances == instances:
                    continue
                if not isinstance(body.get(name), dict) or len(instances) != 1:
                    continue
                old, new = old_instances[0], instances[0]
                member = ATTRIBUTE_TYPES.get(new.get("type", "Property"), "value")
                if member in old and old.get(member) != new.get(member):
                    body[name][PREVIOUS[member]] = self._member_value(view, member, old[member])
        return body

    @staticmethod
    def _removed_instances(
        sub: Compiled, view: View, before: Entity, after: Entity, body: dict[str, Any]
    ) -> None:
        """Instances (datasetIds) that went away while the attribute stays: NGSI-LD Null."""
        for iri, instances in after.items():
            if iri in ENTITY_KEYS or iri not in before or not view.keeps(iri):
                continue
            if sub.watched is not None and iri not in sub.watched:
                continue
            kept = {i.get("datasetId") for i in instances}
            removed = [i for i in before[iri] if i.get("datasetId") not in kept]
            name = view.tm.compact(iri)
            if not removed or name not in body:
                continue
            current = body[name] if isinstance(body[name], list) else [body[name]]
            for old in removed:
                kind = old.get("type", "Property")
                member = ATTRIBUTE_TYPES.get(kind, "value")
                current.append(
                    {
                        "type": kind,
                        "datasetId": old.get("datasetId"),
                        member: {"@none": NULL} if member == "languageMap" else NULL,
                    }
                )
            body[name] = current

    @staticmethod
    def _member_value(view: View, member: str, value: Any) -> Any:
        if member == "vocab":
            return view.compact_vocab(value)
        return value

    # -- delivery -----------------------------------------------------------------------------

    def submit(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        """Send a notification of ``data``; when the subscription already has
        ``PER_SUBSCRIPTION_IN_FLIGHT`` on their way, ``data`` waits and goes out with the
        other waiting changes in one notification as soon as one of them is done (or in
        the one on its way, if that is still waiting for a connection). A
        slow or busy endpoint thus gets fewer, fuller notifications instead of an
        ever-growing queue, and no change is dropped or reordered within a batch."""
        key = (sub.tenant, sub.id)
        if self._in_flight.get(key, 0) >= PER_SUBSCRIPTION_IN_FLIGHT:
            self._queued.setdefault(key, []).extend(data)
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.create_task(self._deliver_then_queued(sub, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _job(self, sub: Compiled, data: list[dict[str, Any]]) -> _Delivery:
        notification: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "Notification",
            "subscriptionId": sub.id,
            "notifiedAt": now_iso(),
            "data": data,
        }
        headers = {"Content-Type": sub.endpoint.accept}
        if sub.endpoint.accept == "application/ld+json":
            tm = sub.render_tm or sub.tm
            ctx = tm.context if tm.context is not None else CORE_CONTEXT_URL
            notification["@context"] = ctx
            notification["data"] = [{**item, "@context": ctx} for item in data]
        else:
            headers["Link"] = f'<{sub.context_url}>; rel="{LINK_REL}"; type="application/ld+json"'
        if sub.tenant:
            headers["NGSILD-Tenant"] = sub.tenant
        return _Delivery(sub, orjson.dumps(notification), headers)

    async def _deliver_then_queued(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        key = (sub.tenant, sub.id)
        try:
            while True:
                await self._deliver(sub, data)
                data = self._take_queued(key, MAX_COALESCED)
                if not data:
                    return
        finally:
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def _take_queued(self, key: tuple[str, str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` of the changes waiting for this subscription, oldest first."""
        queued = self._queued.get(key)
        if not queued or limit <= 0:
            return []
        taken, rest = queued[:limit], queued[limit:]
        if rest:
            self._queued[key] = rest
        else:
            del self._queued[key]
        return taken

    async def _deliver(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        key = (sub.tenant, sub.id)
        job: _Delivery | None = None

        def build() -> tuple[bytes, dict[str, str]]:
            # Built when a connection is free: changes queued while this notification
            # waited for one go with it (a retry sends the same notification again).
            nonlocal job
            if job is None:
                job = self._job(sub, [*data, *self._take_queued(key, MAX_COALESCED - len(data))])
            return job.body, job.headers

        async with self._slots:
            if sub.throttling is not None and not await self.store.claim_notification(
                sub.tenant, sub.id, now=time.time(), min_gap=sub.throttling
            ):
                return  # throttled: another notification went out less than `throttling` ago
            delay = self.backoff
            for attempt in range(1, self.max_attempts + 1):
                try:
                    await self.senders.send_built(sub.endpoint, build)
                except DeliveryError as exc:
                    await self._record(sub, success=False)
                    if not exc.retryable or attempt == self.max_attempts:
                        log.warning(
                            "notification for %s failed after %d attempt(s): %s",
                            sub.id,
                            attempt,
                            exc,
                        )
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_cap)
                else:
                    await self._record(sub, success=True)
                    return

    async def _record(self, sub: Compiled, *, success: bool) -> None:
        """Note a delivery outcome; outcomes reach the store together, every 200 ms."""
        key = (sub.tenant, sub.id)
        rec = self._pending.get(key)
        if rec is None:
            rec = self._pending[key] = NotificationRecord(sub.tenant, sub.id)
        at = now_iso()
        rec.sent += 1
        rec.last_notification = at
        if success:
            rec.last_success = at
        else:
            rec.failed += 1
            rec.last_failure = at
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    def _with_pending(self, tenant: str, sub_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        """Stored status plus the outcomes not yet written, so this process reads its own."""
        rec = self._pending.get((tenant, sub_id))
        if rec is None:
            return dict(stored)
        status = dict(stored)
        status["timesSent"] = status.get("timesSent", 0) + rec.sent
        status["timesFailed"] = status.get("timesFailed", 0) + rec.failed
        for key, value in (
            ("lastNotification", rec.last_notification),
            ("lastSuccess", rec.last_success),
            ("lastFailure", rec.last_failure),
        ):
            if value is not None:
                status[key] = value
        return status

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.status_interval)
        await self.flush()

    async def flush(self) -> None:
        """Write the pending delivery outcomes to the store."""
        if not self._pending:
            return
        records, self._pending = list(self._pending.values()), {}
        try:
            await self.store.record_notifications(records)
        except NgsiLdError as exc:
            log.warning("cannot record notification status: %s", exc.detail)

    # -- periodic (timeInterval) --------------------------------------------------------------

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(
                self._periodic(), name="renkei-subscriptions-periodic"
            )

    async def _periodic(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # keep the scheduler alive whatever one round met
                log.exception("periodic notifications failed")
            await asyncio.sleep(1.0)

    async def tick(self) -> None:
        """Send the timeInterval notifications that are due (claimed through the store)."""
        for tenant in dict.fromkeys(["", *await self.store.tenants()]):
            for sub in await self._active(tenant):
                if sub.time_interval is None or sub.status != "active":
                    continue
                if not await self.store.claim_notification(
                    tenant, sub.id, now=time.time(), min_gap=sub.time_interval
                ):
                    continue
                query = EntityQuery(
                    selectors=sub.selectors or None,
                    q=sub.q,
                    geo=sub.geo,
                    scope_q=sub.scope,
                    limit=1000,
                )
                entities, _ = await self.store.query(tenant, query)
                entities = [e for e in entities if self._owner_reads(sub, tenant, e)]
                if entities:
                    view = sub.view()
                    self.submit(sub, [view.entity(e) for e in entities])

    async def aclose(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
