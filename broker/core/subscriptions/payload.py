"""Subscription documents (clause 5.8.1 and 5.2.12): validated and compiled for matching.

A subscription is stored as the client wrote it (terms as given) with the context it was
written under. Its members are declared as pydantic models (:class:`SubscriptionDoc`,
:class:`NotificationParams`, :class:`EndpointParams`); their errors become one 400
``BadRequestData`` naming the member's path (``notification.endpoint.uri: ...``), 501 for
what this version does not do. :class:`Compiler` then compiles a valid document once
(terms expanded, q/geoQ/scopeQ parsed) into a :class:`Compiled`, so that matching a
change is in-memory work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from broker.core.model import View
from broker.core.projection import Tree
from broker.core.subscriptions.v2 import V2_KEY, V2Spec, endpoint_of, expires_at, spec_of
from broker.core.subscriptions.v2 import throttling_of as v2_throttling
from broker.core.v2map import V2Mapper
from broker.errors import BadRequestData, NgsiLdError, NotImplementedYet
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
#: Entities in one notification built from queued changes, at most.
MAX_COALESCED = 500
GEOJSON = "application/geo+json"
SCHEMES = ("http://", "https://", "mqtt://", "mqtts://")
_ERROR = "subscription"


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


# -- value checks: each raises the message its member gets -----------------------------------


def _wrong(message: str) -> PydanticCustomError:
    return PydanticCustomError(_ERROR, "{message}", {"message": message})


def _checked(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A check of the entity model (``check_name`` ...) as a pydantic validator."""

    def validator(value: Any) -> Any:
        try:
            return check(value)
        except BadRequestData as exc:
            raise _wrong(exc.detail) from None

    return validator


def _rule(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    def validator(value: Any) -> Any:
        if not ok(value):
            raise _wrong(message)
        return value

    return AfterValidator(validator)


def _names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def _pairs(value: Any) -> bool:
    return value is None or (
        isinstance(value, list)
        and all(
            isinstance(i, dict)
            and isinstance(i.get("key"), str)
            and isinstance(i.get("value"), str)
            for i in value
        )
    )


def _each(check: Callable[[Any], Any]) -> AfterValidator:
    return AfterValidator(lambda values: [_checked(check)(v) for v in values])


Names = Annotated[
    Any,
    _rule(_names, "must be a non-empty array of attribute names"),
    _each(lambda v: check_name(v, "attribute name")),
]
Seconds = Annotated[Any, _rule(_positive, "must be a positive number of seconds")]
Pairs = Annotated[Any, _rule(_pairs, "must be an array of {key, value} strings")]
Flag = Annotated[Any, _rule(lambda v: isinstance(v, bool), "must be true or false")]
Text = Annotated[Any, _rule(lambda v: isinstance(v, str), "must be a string")]
MemberNames = Annotated[
    Any,
    AfterValidator(lambda v: [v] if isinstance(v, str) else v),
    _rule(_names, "must be an array of member names"),
]


def _nonempty_list(value: Any) -> Any:
    if value is not None and (not isinstance(value, list) or not value):
        raise _wrong("must be a non-empty array")
    return value


class EntitySelector(BaseModel):
    """One element of ``entities``: a type (with ``,``/``;`` alternatives), an id or an
    idPattern. Other members are kept as written and not used."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[Any, _rule(lambda v: isinstance(v, str), "each element needs a type")]
    id: Annotated[Any, AfterValidator(_checked(check_entity_id))] = None
    idPattern: Any = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_with_a_type(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "type" not in value:
            raise _wrong("each element of entities needs a type")
        return value

    @property
    def pattern(self) -> str | None:
        """idPattern, checked; a pattern that is not a string is ignored."""
        return check_pattern(self.idPattern) if isinstance(self.idPattern, str) else None


class EndpointParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    uri: Annotated[
        Any,
        _rule(lambda v: isinstance(v, str), "is required"),
        _rule(lambda v: v.startswith(SCHEMES), "must be an http(s):// or mqtt(s):// URI"),
    ]
    accept: Annotated[
        Any,
        _rule(lambda v: v in (*ACCEPTS, GEOJSON), f"must be one of {', '.join(ACCEPTS)}"),
    ] = "application/json"
    receiverInfo: Pairs = None
    notifierInfo: Pairs = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_with_a_uri(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "uri" not in value:
            raise _wrong("notification.endpoint.uri is required")
        return value

    @model_validator(mode="after")
    def _mqtt_options(self) -> EndpointParams:
        for key, value in self.pairs(self.notifierInfo):
            if key == "MQTT-QoS" and value not in ("0", "1", "2"):
                raise _wrong("MQTT-QoS must be 0, 1 or 2")
            if key == "MQTT-Version" and value not in ("mqtt3.1.1", "mqtt5.0"):
                raise _wrong("MQTT-Version must be mqtt3.1.1 or mqtt5.0")
        return self

    @staticmethod
    def pairs(value: list[dict[str, str]] | None) -> tuple[tuple[str, str], ...]:
        return tuple((i["key"], i["value"]) for i in value or ())


class NotificationParams(BaseModel):
    """``notification``; the status members (timesSent ...) a client may send back are
    kept as written and not used."""

    model_config = ConfigDict(extra="allow")

    endpoint: EndpointParams
    format: Annotated[
        Any, _rule(lambda v: v in FORMATS, f"must be one of {', '.join(FORMATS)}")
    ] = "normalized"
    attributes: Names = None
    sysAttrs: Flag = False
    showChanges: Flag = False
    pick: MemberNames = None
    omit: MemberNames = None
    join: Annotated[
        Any,
        _rule(lambda v: v in (None, "inline", "flat", "@none"), "must be inline, flat or @none"),
    ] = None
    joinLevel: Annotated[
        Any,
        _rule(
            lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= 1,
            "must be a positive integer",
        ),
    ] = 1

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _wrong("a subscription needs a notification object")
        if not isinstance(value.get("endpoint"), dict):
            raise _wrong("notification.endpoint.uri is required")
        return value

    @model_validator(mode="after")
    def _attributes_or_projection(self) -> NotificationParams:
        if self.attributes is not None and (self.pick is not None or self.omit is not None):
            raise _wrong("notification.attributes cannot be combined with pick or omit")
        # clause 5.2.14: "showChanges cannot be true in case format is keyValues"
        if self.showChanges and FORMATS.get(self.format) == "keyValues":
            raise _wrong("notification.showChanges cannot be true with format keyValues")
        return self


class SubscriptionDoc(BaseModel):
    """The members of a subscription (clause 5.2.12) and what each may hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: Annotated[Any, AfterValidator(_checked(check_entity_id))] = Field(
        None, validate_default=True
    )
    type: Annotated[
        Any, _rule(lambda v: v == "Subscription", 'a subscription needs "type": "Subscription"')
    ] = Field(None, validate_default=True)
    context: Any = Field(None, alias="@context")
    jsonldContext: Annotated[
        Any, _rule(lambda v: isinstance(v, str) and ":" in v, "must be a URI")
    ] = None
    csf: Any = None
    temporalQ: Any = None
    entities: Annotated[
        list[EntitySelector] | None,
        BeforeValidator(_nonempty_list),
    ] = None
    watchedAttributes: Names = None
    timeInterval: Seconds = None
    throttling: Seconds = None
    notificationTrigger: Annotated[
        Any,
        _rule(
            lambda v: isinstance(v, list) and bool(v) and all(t in TRIGGERS for t in v),
            f"must be a non-empty array of {', '.join(TRIGGERS)}",
        ),
    ] = list(DEFAULT_TRIGGERS)
    q: Text = None
    geoQ: Any = None
    scopeQ: Text = None
    isActive: Flag = True
    expiresAt: Annotated[
        Any, AfterValidator(_checked(lambda v: check_datetime(v, "expiresAt")))
    ] = None
    lang: Annotated[Any, _rule(lambda v: v is None or isinstance(v, str), "must be a string")] = (
        None
    )
    notification: NotificationParams | None = None
    datasetId: Annotated[
        Any,
        _rule(
            lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v),
            "must be an array of dataset URIs (or @none)",
        ),
    ] = None
    # kept as written, not used for matching
    subscriptionName: Any = None
    description: Any = None
    createdAt: Any = None
    modifiedAt: Any = None
    status: Any = None
    notificationStatus: Any = None
    #: who created or last changed it (access control on): kept, never shown
    renkeiOwner: Any = None

    @model_validator(mode="after")
    def _what_is_watched(self) -> SubscriptionDoc:
        if self.notification is None:
            raise _wrong("a subscription needs a notification object")
        if not self.entities and self.watchedAttributes is None:
            raise _wrong("a subscription needs entities or watchedAttributes")
        if self.timeInterval is not None and (
            self.watchedAttributes is not None or self.throttling is not None
        ):
            raise _wrong("timeInterval cannot be combined with watchedAttributes or throttling")
        return self


#: Members whose errors come first, before the ones this version does not implement (501).
_FIRST = {"id", "type", "jsonldContext", "@context"}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _message(e: ErrorDetails) -> str:
    """``<member path>: <what is wrong>``; a rule of the whole document alone."""
    path = _path(tuple(e["loc"]))
    if e["type"] == _ERROR:
        text = str((e.get("ctx") or {})["message"])
        return f"{path}: {text}" if path and not text.startswith(path.split(".")[0]) else text
    if e["type"] == "missing":
        return f"{path} is required"
    return f"{path}: {e['msg']}"


def parse(doc: dict[str, Any]) -> SubscriptionDoc:
    """The document's members, checked; BadRequestData (400) naming the member otherwise,
    NotImplementedYet (501) for the members this version does not do."""
    unknown = sorted(set(doc) - set(SubscriptionDoc.model_fields) - {"@context"})
    if unknown:
        raise BadRequestData(f"unknown subscription member(s): {', '.join(unknown)}")
    try:
        return SubscriptionDoc.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
    first = [e for e in errors if e["loc"] and e["loc"][0] in _FIRST] or errors
    if first is errors:
        _not_implemented(doc)
    raise BadRequestData(_message(first[0]))


def _not_implemented(doc: dict[str, Any]) -> None:
    if "csf" in doc:
        if not isinstance(doc["csf"], str):
            raise BadRequestData("csf must be a q-language expression")
        try:
            parse_q(doc["csf"])
        except NgsiLdError as exc:
            raise BadRequestData(f"csf: {exc.detail}") from None
    if "temporalQ" in doc:
        raise NotImplementedYet("temporalQ in subscriptions is not available in this version")
    notification = doc.get("notification")
    endpoint = notification.get("endpoint") if isinstance(notification, dict) else None
    if isinstance(endpoint, dict) and endpoint.get("accept") == GEOJSON:
        raise NotImplementedYet("GeoJSON notifications are not available in this version")


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
    #: An NGSI v2 subscription (``/v2/subscriptions``): its own triggers and messages.
    v2: V2Spec | None = None

    @property
    def coalesce(self) -> int:
        """Entities one notification may carry when changes wait for the endpoint."""
        return 1 if self.v2 is not None and self.v2.single else MAX_COALESCED

    @property
    def status(self) -> str:
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active" if self.is_active else "paused"

    def selects(self, ent: Entity) -> bool:
        if self.v2 is not None:
            return self.v2.selects(ent)
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
        if self.join is not None or self.v2 is not None:
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
        self._mapper: V2Mapper | None = None

    async def compile(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        """Validate a subscription document and compile it; raise BadRequestData if invalid."""
        if isinstance(doc.get(V2_KEY), dict):
            return await self._compile_v2(tenant, doc)
        sub = parse(doc)
        tm = await self._resolve(sub.context)
        render_tm = await self._resolve(sub.jsonldContext) if sub.jsonldContext else tm
        _not_implemented(doc)
        context_url = single_url(render_tm.context) or (await self._implicit_url(render_tm, tenant))
        n = sub.notification
        assert n is not None  # checked by the model
        selectors = [
            Selector(
                ids=[e.id] if e.id is not None else None,
                id_pattern=e.pattern,
                types=[
                    [tm.expand(check_name(t, "entity type")) for t in alt]
                    for alt in type_alternatives(e.type)
                ],
            )
            for e in sub.entities or ()
        ]
        watched = None
        if sub.watchedAttributes is not None:
            watched = {tm.expand(name) for name in sub.watchedAttributes}
        # clients often percent-encode q inside JSON bodies as they would in a URL
        q = resolve_q(parse_q(unquote(sub.q)), tm.expand) if sub.q is not None else None
        geo = None
        if sub.geoQ is not None:
            parsed = geo_query_from_json(sub.geoQ)
            geo = resolve_geo(parsed, tm.expand) if parsed else None
        scope = parse_scope_q(sub.scopeQ) if sub.scopeQ is not None else None
        pick = self._projection(n.pick, tm)
        omit = self._projection(n.omit, tm)
        if pick is not None and omit is not None and set(pick) & set(omit):
            raise BadRequestData("the same member is both picked and omitted")
        return Compiled(
            tenant=tenant,
            id=sub.id,
            doc=doc,
            tm=tm,
            context_url=context_url,
            selectors=selectors,
            watched=watched,
            triggers=set(sub.notificationTrigger),
            q=q,
            geo=geo,
            scope=scope,
            attributes={tm.expand(a) for a in n.attributes} if n.attributes is not None else None,
            endpoint=Endpoint(
                uri=n.endpoint.uri,
                accept=n.endpoint.accept,
                receiver_info=EndpointParams.pairs(n.endpoint.receiverInfo),
                notifier_info=EndpointParams.pairs(n.endpoint.notifierInfo),
            ),
            format=FORMATS[n.format],
            sys_attrs=n.sysAttrs,
            show_changes=n.showChanges,
            lang=sub.lang,
            throttling=float(sub.throttling) if sub.throttling is not None else None,
            time_interval=float(sub.timeInterval) if sub.timeInterval is not None else None,
            expires_at=_epoch(sub.expiresAt) if sub.expiresAt is not None else None,
            is_active=sub.isActive,
            owner=sub.renkeiOwner if isinstance(sub.renkeiOwner, dict) else None,
            render_tm=render_tm,
            pick=pick,
            omit=omit,
            join=None if n.join == "@none" else n.join,
            join_level=n.joinLevel,
            dataset_ids=(
                {None if d == "@none" else d for d in sub.datasetId}
                if sub.datasetId is not None
                else None
            ),
        )

    async def _compile_v2(self, tenant: str, doc: dict[str, Any]) -> Compiled:
        """An NGSI v2 subscription (stored checked by ``v2.checked``): v2 names are terms
        of the core context, as every v2 name is."""
        tm = await self._resolve(None)
        if self._mapper is None or self._mapper.tm is not tm:
            self._mapper = V2Mapper(tm)
        v2 = doc[V2_KEY]
        spec = spec_of(tenant, doc, self._mapper)
        _, _, endpoint = endpoint_of(v2)
        owner = doc.get("renkeiOwner")
        return Compiled(
            tenant=tenant,
            id=str(doc["id"]),
            doc=doc,
            tm=tm,
            context_url=single_url(tm.context) or "",
            selectors=[],
            watched=spec.watched,
            triggers=set(),
            q=None,
            geo=None,
            scope=None,
            attributes=None,
            endpoint=endpoint,
            format="normalized",
            sys_attrs=False,
            show_changes=False,
            lang=None,
            throttling=v2_throttling(v2),
            time_interval=None,
            expires_at=expires_at(v2),
            is_active=spec.status in ("active", "oneshot"),
            owner=owner if isinstance(owner, dict) else None,
            v2=spec,
        )

    @staticmethod
    def _projection(names: list[str] | None, tm: TermMap) -> Tree | None:
        if names is None:
            return None
        return {
            n if n in ("id", "type", "scope") else tm.expand(check_name(n)): None for n in names
        }


def compact_selection(out: dict[str, Any], written: TermMap, tm: TermMap) -> None:
    """The entity types and watched attributes of a subscription (of either kind) in
    ``out``, written in the terms of ``written`` (its own context), put in the terms of
    ``tm`` (the request's), in place."""
    for item in out.get("entities", []):
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            item["type"] = tm.compact(written.expand(item["type"]))
    if "watchedAttributes" in out:
        out["watchedAttributes"] = [tm.compact(written.expand(a)) for a in out["watchedAttributes"]]
