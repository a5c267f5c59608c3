"""Subscription documents (clause 5.8.1 and 5.2.12): validated and compiled for matching.

A subscription is stored as the client wrote it (terms as given) with the context it was
written under; :class:`Compiler` validates it and compiles it once (terms expanded,
q/geoQ/scopeQ parsed) into a :class:`Compiled`, so that matching a change is in-memory
work. Every problem is a 400 ``BadRequestData`` (501 for what this version does not do).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from broker.core.model import View
from broker.core.projection import Tree
from broker.errors import BadRequestData, NotImplementedYet
from broker.jsonld.context import ContextValue, TermMap, single_url
from broker.model.entity import Entity, check_datetime, check_entity_id, check_name
from broker.model.query import GeoQuery, Node, ScopeQuery
from broker.model.store import Selector
from broker.notify.senders import Endpoint
from broker.query import geo_query_from_json, parse_q, parse_scope_q, resolve_geo, resolve_q
from broker.query.patterns import check_pattern, search
from broker.query.types import type_alternatives


class ResolveContext(Protocol):
    """The term map of a request's ``@context`` (None: the core context)."""

    async def __call__(self, context: ContextValue | None, /) -> TermMap: ...


class ImplicitUrl(Protocol):
    """The URL a context without one of its own is served under, for ``tenant``."""

    async def __call__(self, tm: TermMap, tenant: str, /) -> str: ...


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


class Compiler:
    """Validates subscription documents and compiles them; terms are expanded with the
    document's own ``@context`` (``resolve``), notifications are compacted with
    ``jsonldContext`` if given."""

    def __init__(self, resolve: ResolveContext, implicit_url: ImplicitUrl) -> None:
        self._resolve = resolve
        self._implicit_url = implicit_url

    async def compile(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        """Validate a subscription document and compile it; raise BadRequestData if invalid."""
        unknown = set(doc) - _MEMBERS - {"notificationStatus"}
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
