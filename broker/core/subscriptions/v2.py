"""NGSI v2 subscriptions (Orion's ``/v2/subscriptions``) on the subscription engine.

A v2 subscription is stored beside the NGSI-LD ones, in the same store, as
``{"id": <24 hex digits>, "ngsiV2": <the v2 document>, "servicePath": ...}``, so both
kinds share matching, delivery, retries, throttling through the store and the delivery
status. What differs is here (``orion-api.md``, "Subscriptions Operations",
"Notification Messages", "Custom Notifications"):

* :func:`checked` validates a v2 document (Orion's members and rules) and normalises it;
* :func:`compile_v2` turns a stored one into a :class:`~.payload.Compiled` carrying a
  :class:`V2Spec`: entity selection with ``idPattern``/``typePattern``, the service path
  the subscription was created under, ``expression`` (q, mq, geo-query);
* :meth:`V2Spec.change` decides whether a committed change triggers the subscription
  (``alterationTypes``: ``entityCreate``, ``entityUpdate``, ``entityChange``,
  ``entityDelete``; ``condition.attrs``; ``notifyOnMetadataChange``) and renders the
  entity (``attrs``/``exceptAttrs``, ``onlyChangedAttrs``, ``covered``, ``metadata``
  with ``previousValue``/``actionType``, the builtins ``alterationType``,
  ``servicePath``, ``dateCreated``, ``dateModified``);
* :meth:`V2Spec.message` builds what is sent: the formats ``normalized``,
  ``keyValues``, ``values``, ``simplifiedNormalized``, ``simplifiedKeyValues`` and
  ``legacy`` (NGSIv1), the headers ``Ngsiv2-AttrsFormat``, ``Fiware-Service`` and
  ``Fiware-ServicePath``, and ``httpCustom``/``mqttCustom`` (url, headers, qs, method,
  topic, ``payload``/``json``/``ngsi`` with ``${...}`` macros);
* :func:`shown` is the subscription as ``GET /v2/subscriptions`` answers it.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import orjson

from broker.core.v2map import (
    ATTR_TYPE,
    V2Mapper,
    check_attr_name,
    check_id,
    check_meta_name,
    in_paths,
    infer_type,
    query_paths,
)
from broker.errors import BadRequestData, NotImplementedYet
from broker.model.entity import ENTITY_KEYS, Entity
from broker.notify.senders import Endpoint
from broker.query.evaluate import matches_geo, matches_q
from broker.query.patterns import check_pattern, search
from broker.query.v2q import iso_datetime, parse_v2_geo, parse_v2_q

#: Member of a stored subscription holding its v2 document (and marking it as v2).
V2_KEY: Final = "ngsiV2"
FORMATS: Final = (
    "normalized",
    "keyValues",
    "values",
    "simplifiedNormalized",
    "simplifiedKeyValues",
    "legacy",
)
ALTERATIONS: Final = ("entityCreate", "entityUpdate", "entityChange", "entityDelete")
DEFAULT_ALTERATIONS: Final = ("entityCreate", "entityChange")
STATUSES: Final = ("active", "inactive", "oneshot")
METHODS: Final = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
#: Builtin attributes a notification shows when ``notification.attrs`` names them.
BUILTIN_ATTRS: Final = ("alterationType", "servicePath", "dateCreated", "dateModified")
MAX_DESCRIPTION: Final = 1024
MAX_TIMEOUT_MS: Final = 1_800_000
#: Read-only members a client may send back (they are ignored).
_STATUS_MEMBERS: Final = frozenset(
    {
        "timesSent",
        "lastNotification",
        "lastSuccess",
        "lastFailure",
        "lastFailureReason",
        "lastSuccessCode",
        "failsCounter",
        "status",
    }
)
_TRANSPORTS: Final = ("http", "httpCustom", "mqtt", "mqttCustom")
_FORBIDDEN_TEXT = re.compile(r"[<>\"'=;()]")
_HEX_ID = re.compile(r"^[0-9a-f]{24}$")
_MACRO = re.compile(r"\$\{([^}]*)\}")


def new_id() -> str:
    """A subscription id in Orion's form: 24 hexadecimal digits."""
    return uuid.uuid4().hex[:24]


def is_v2(doc: dict[str, Any]) -> bool:
    return isinstance(doc.get(V2_KEY), dict)


def check_sub_id(sub_id: str) -> bool:
    """Whether ``sub_id`` can name a v2 subscription."""
    return bool(_HEX_ID.match(sub_id))


# -- the document ----------------------------------------------------------------------------


def _object(value: Any, what: str, *, empty: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData(f"{what} is not an object")
    if not value and not empty:
        raise BadRequestData(f"{what} is empty")
    return value


def _unknown(doc: dict[str, Any], allowed: set[str] | frozenset[str], what: str) -> None:
    extra = sorted(set(doc) - set(allowed))
    if extra:
        raise BadRequestData(f"unrecognized field in {what}: {', '.join(extra)}")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequestData(f"{what} is not a string")
    if not value:
        raise BadRequestData(f"{what} is empty")
    return value


def _names(value: Any, what: str, check: Callable[[Any], str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequestData(f"{what} is not an array of strings")
    for v in value:
        check(v)
    return list(dict.fromkeys(value))


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestData(f"{what} is not a boolean")
    return value


def _text_ok(value: str, what: str) -> None:
    if _FORBIDDEN_TEXT.search(value):
        raise BadRequestData(f"forbidden characters in {what}")


def _entities(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadRequestData("subject entities is not an array")
    if not value:
        raise BadRequestData("subject entities is empty")
    out = []
    for item in value:
        item = _object(item, "an element of subject entities")
        _unknown(item, {"id", "idPattern", "type", "typePattern"}, "subject entities")
        if ("id" in item) == ("idPattern" in item):
            if "id" in item:
                raise BadRequestData("id and idPattern cannot be used at the same time")
            raise BadRequestData("an element of subject entities has no id nor idPattern")
        if "type" in item and "typePattern" in item:
            raise BadRequestData("type and typePattern cannot be used at the same time")
        sel: dict[str, str] = {}
        if "id" in item:
            sel["id"] = check_id(item["id"])
        else:
            sel["idPattern"] = check_pattern(_string(item["idPattern"], "idPattern"))
        if "type" in item:
            sel["type"] = check_id(item["type"], "entity type")
        elif "typePattern" in item:
            sel["typePattern"] = check_pattern(_string(item["typePattern"], "typePattern"))
        out.append(sel)
    return out


def _expression(value: Any) -> dict[str, str]:
    expr = _object(value, "expression")
    _unknown(expr, {"q", "mq", "georel", "geometry", "coords"}, "expression")
    out = {k: _string(v, f"expression {k}") for k, v in expr.items()}
    # parsed once here so that a bad one is refused at creation (400), not when matching
    parse_v2_q(out.get("q"), out.get("mq"), lambda name: name)
    parse_v2_geo(out.get("georel"), out.get("geometry"), out.get("coords"), "location")
    return out


def _condition(value: Any) -> dict[str, Any]:
    cond = _object(value, "condition")
    if "jexlExpression" in cond:
        raise NotImplementedYet("jexlExpression in subscription conditions is not supported")
    _unknown(
        cond, {"attrs", "expression", "alterationTypes", "notifyOnMetadataChange"}, "condition"
    )
    out: dict[str, Any] = {}
    if "attrs" in cond:
        out["attrs"] = _names(cond["attrs"], "condition attrs", check_attr_name)
    if "expression" in cond:
        out["expression"] = _expression(cond["expression"])
    if "alterationTypes" in cond:
        kinds = cond["alterationTypes"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise BadRequestData("alterationTypes is not an array of strings")
        for kind in kinds:
            if kind not in ALTERATIONS:
                raise BadRequestData(
                    f"unknown subscription alterationType: {kind} (use {', '.join(ALTERATIONS)})"
                )
        out["alterationTypes"] = list(dict.fromkeys(kinds))
    if "notifyOnMetadataChange" in cond:
        out["notifyOnMetadataChange"] = _flag(
            cond["notifyOnMetadataChange"], "notifyOnMetadataChange"
        )
    return out


def _subject(value: Any) -> dict[str, Any]:
    subject = _object(value, "subject")
    _unknown(subject, {"entities", "condition"}, "subject")
    if "entities" not in subject:
        raise BadRequestData("no subject entities specified")
    out: dict[str, Any] = {"entities": _entities(subject["entities"])}
    if "condition" in subject:
        out["condition"] = _condition(subject["condition"])
    return out


def _http_url(value: Any, what: str) -> str:
    url = _string(value, what)
    if "${" in url:  # a template: checked once its macros are replaced, when sending
        head = url.split("${", 1)[0]
        if not head.lower().startswith(("http://", "https://")):
            raise BadRequestData(f"invalid {what}: an http:// or https:// URL is needed")
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadRequestData(f"invalid {what}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadRequestData(f"invalid {what}: an http:// or https:// URL is needed")
    return url


def _mqtt_url(value: Any, what: str) -> str:
    url = _string(value, what)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise BadRequestData(f"invalid {what}") from None
    if parts.scheme.lower() not in ("mqtt", "mqtts"):
        raise BadRequestData(f"{what}: an mqtt:// (or mqtts://) URL is needed")
    if not parts.hostname or "@" in parts.netloc:
        raise BadRequestData(f"invalid {what}: give host and port (credentials in user, passwd)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadRequestData(f"path cannot be used in {what}, use topic instead")
    return url


def _headers(value: Any, what: str) -> dict[str, str]:
    mapping = _object(value, what)
    for k, v in mapping.items():
        if not isinstance(v, str):
            raise BadRequestData(f"{what} values must be strings ({k})")
    return dict(mapping)


def _timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT_MS:
        raise BadRequestData(f"timeout must be a number of milliseconds, 0 to {MAX_TIMEOUT_MS}")
    return value


def _payloads(part: dict[str, Any], what: str, out: dict[str, Any]) -> None:
    given = [k for k in ("payload", "json", "ngsi") if k in part]
    if len(given) > 1:
        raise BadRequestData(
            f"only one of payload, json or ngsi fields accepted at the same time in {what}"
        )
    if "payload" in part:
        payload = part["payload"]
        if payload is not None and not isinstance(payload, str):
            raise BadRequestData(f"payload in {what} is not a string")
        if isinstance(payload, str):
            _text_ok(payload, f"{what} payload (URL-encode such characters)")
        out["payload"] = payload
    elif "json" in part:
        if not isinstance(part["json"], dict | list):
            raise BadRequestData(f"json fields in {what} must be object or array")
        out["json"] = part["json"]
    elif "ngsi" in part:
        ngsi = _object(part["ngsi"], f"ngsi in {what}", empty=True)
        for key, value in ngsi.items():
            if key in ("id", "type"):
                if not isinstance(value, str):
                    raise BadRequestData(f"ngsi {key} in {what} is not a string")
                continue
            check_attr_name(key)
            if isinstance(value, dict):
                _unknown(value, {"value", "type"}, f"ngsi attribute {key}")
                if "type" in value:
                    check_id(value["type"], "attribute type")
        out["ngsi"] = ngsi


def _transport(name: str, value: Any) -> dict[str, Any]:
    part = _object(value, name)
    out: dict[str, Any] = {}
    if name in ("http", "httpCustom"):
        allowed = {"url", "timeout"}
        if name == "httpCustom":
            allowed |= {"headers", "qs", "method", "payload", "json", "ngsi"}
        _unknown(part, allowed, name)
        if "url" not in part:
            raise BadRequestData(f"mandatory {name} field /url/")
        out["url"] = _http_url(part["url"], f"{name} url")
        if "timeout" in part:
            out["timeout"] = _timeout(part["timeout"])
        if name == "httpCustom":
            for mapping in ("headers", "qs"):
                if mapping in part:
                    out[mapping] = _headers(part[mapping], f"{name} {mapping}")
            if "method" in part:
                method = _string(part["method"], f"{name} method")
                if method.upper() not in METHODS:
                    raise BadRequestData(f"unknown method {method!r} in {name}")
                out["method"] = method.upper()
            _payloads(part, name, out)
        return out
    allowed = {"url", "topic", "qos", "retain", "user", "passwd"}
    if name == "mqttCustom":
        allowed |= {"payload", "json", "ngsi"}
    _unknown(part, allowed, name)
    if "url" not in part:
        raise BadRequestData(f"mandatory {name} field /url/")
    out["url"] = _mqtt_url(part["url"], f"{name} url")
    if "topic" not in part:
        raise BadRequestData(f"mandatory {name} field /topic/")
    topic = _string(part["topic"], f"{name} topic")
    if "+" in topic or "#" in topic.replace("${", ""):
        raise BadRequestData(f"+ and # are not allowed in {name} topic")
    out["topic"] = topic
    if "qos" in part:
        qos = part["qos"]
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise BadRequestData(f"{name} qos field must be an integer in the 0 to 2 range")
        out["qos"] = qos
    if "retain" in part:
        out["retain"] = _flag(part["retain"], f"{name} retain")
    if ("user" in part) != ("passwd" in part):
        raise BadRequestData(f"{name}: user and passwd go together")
    if "user" in part:
        out["user"] = _string(part["user"], f"{name} user")
        out["passwd"] = _string(part["passwd"], f"{name} passwd")
    if name == "mqttCustom":
        _payloads(part, name, out)
    return out


def _notification(value: Any) -> dict[str, Any]:
    n = _object(value, "notification")
    if "kafka" in n or "kafkaCustom" in n:
        raise NotImplementedYet("Kafka notifications are not supported: use http or mqtt")
    _unknown(
        n,
        {
            *_TRANSPORTS,
            "attrs",
            "exceptAttrs",
            "attrsFormat",
            "metadata",
            "onlyChangedAttrs",
            "covered",
            "maxFailsLimit",
            *_STATUS_MEMBERS,
        },
        "notification",
    )
    transports = [t for t in _TRANSPORTS if t in n]
    if not transports:
        raise BadRequestData("http, httpCustom, mqtt or mqttCustom is missing in notification")
    if len(transports) > 1:
        raise BadRequestData("only one of http, httpCustom, mqtt or mqttCustom in notification")
    out: dict[str, Any] = {transports[0]: _transport(transports[0], n[transports[0]])}
    if "attrs" in n and "exceptAttrs" in n:
        raise BadRequestData("http notification has attrs and exceptAttrs at the same time")
    if "attrs" in n:
        out["attrs"] = _names(n["attrs"], "notification attrs", _attr_or_builtin)
    if "exceptAttrs" in n:
        out["exceptAttrs"] = _names(n["exceptAttrs"], "exceptAttrs", check_attr_name)
        if not out["exceptAttrs"]:
            raise BadRequestData("exceptAttrs is empty")
    if "attrsFormat" in n:
        if n["attrsFormat"] not in FORMATS:
            raise BadRequestData(
                f"invalid attrsFormat {n['attrsFormat']!r}: use {', '.join(FORMATS)}"
            )
        out["attrsFormat"] = n["attrsFormat"]
    if "metadata" in n:
        out["metadata"] = _names(n["metadata"], "notification metadata", _meta_or_builtin)
    for flag in ("onlyChangedAttrs", "covered"):
        if flag in n:
            out[flag] = _flag(n[flag], flag)
    if out.get("covered") and not out.get("attrs"):
        raise BadRequestData("covered true cannot be used if notification attributes list is empty")
    if "maxFailsLimit" in n:
        limit = n["maxFailsLimit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequestData("maxFailsLimit must be a positive integer")
        out["maxFailsLimit"] = limit
    return out


def _attr_or_builtin(name: Any) -> str:
    if name in BUILTIN_ATTRS or name == "*":
        return str(name)
    return check_attr_name(name)


def _meta_or_builtin(name: Any) -> str:
    if name in ("previousValue", "actionType", "dateCreated", "dateModified", "*"):
        return str(name)
    return check_meta_name(name)


def _expires(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequestData("expires is not a string")
    try:
        return iso_datetime(value, "expires")
    except BadRequestData:
        raise BadRequestData("expires has an invalid format") from None


def checked(body: Any, *, partial: bool = False) -> dict[str, Any]:
    """A v2 subscription document, checked and normalised; BadRequestData (400) naming
    what is wrong, NotImplementedYet (501) for what is not offered (Kafka, JEXL).
    ``partial``: a PATCH body, whose members replace the stored ones."""
    doc = _object(body, "the subscription", empty=False)
    _unknown(
        doc,
        {"id", "description", "subject", "notification", "expires", "status", "throttling"},
        "JSON payload",
    )
    out: dict[str, Any] = {}
    if "description" in doc:
        desc = doc["description"]
        if not isinstance(desc, str):
            raise BadRequestData("description is not a string")
        if len(desc) > MAX_DESCRIPTION:
            raise BadRequestData("max description length exceeded")
        _text_ok(desc, "description")
        out["description"] = desc
    if "subject" in doc:
        out["subject"] = _subject(doc["subject"])
    elif not partial:
        raise BadRequestData("no subject for subscription specified")
    if "notification" in doc:
        out["notification"] = _notification(doc["notification"])
    elif not partial:
        raise BadRequestData("no notification for subscription specified")
    if "expires" in doc:
        out["expires"] = None if doc["expires"] in (None, "") else _expires(doc["expires"])
    if "status" in doc:
        if doc["status"] not in STATUSES:
            raise BadRequestData("status is not valid: it has to be active, inactive or oneshot")
        out["status"] = doc["status"]
    if "throttling" in doc:
        t = doc["throttling"]
        if isinstance(t, bool) or not isinstance(t, int | float) or t < 0 or not math.isfinite(t):
            raise BadRequestData("throttling must be a number of seconds, 0 or more")
        out["throttling"] = int(t) if float(t).is_integer() else t
    return out


def stored_paths(header: str | None) -> str:
    """The service path(s) a subscription is created under (``/#``, every entity, when
    none is given), checked as a query's ``Fiware-ServicePath``."""
    text = (header or "").strip() or "/#"
    query_paths(text)
    return ",".join(p.strip() for p in text.split(","))


# -- compiled --------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2Selector:
    ids: frozenset[str] | None = None
    id_pattern: str | None = None
    type_iri: str | None = None
    type_pattern: str | None = None


@dataclass
class V2Spec:
    """What a v2 subscription needs beyond the shared :class:`~.payload.Compiled`."""

    mapper: V2Mapper
    selectors: list[V2Selector]
    #: the service paths (query form); None: every entity
    paths: list[str] | None
    #: condition attrs (IRIs); None: any attribute
    watched: set[str] | None
    alterations: frozenset[str]
    metadata_change: bool
    format: str
    attrs: list[str] | None
    except_attrs: set[str] | None
    metadata: list[str] | None
    only_changed: bool
    covered: bool
    transport: str
    part: dict[str, Any]
    status: str
    #: when the subscription was last set ``oneshot`` (epoch seconds)
    armed_at: float | None
    max_fails: int | None
    tenant: str = ""
    sub_id: str = ""
    #: the q/mq and geo-query of ``expression`` (evaluated as queries are)
    q: Any = None
    geo: Any = None

    @property
    def custom(self) -> bool:
        return self.transport in ("httpCustom", "mqttCustom")

    @property
    def single(self) -> bool:
        """Whether every notification carries one entity: simplified formats and custom
        messages do; the others gather the changes waiting for the endpoint in ``data``."""
        return self.format.startswith("simplified") or self.custom

    # -- selection and triggers -----------------------------------------------------------

    def selects(self, ent: Entity) -> bool:
        types = list(ent.get("type", ()))
        for sel in self.selectors:
            if sel.ids is not None and ent["id"] not in sel.ids:
                continue
            if sel.id_pattern is not None and not search(sel.id_pattern, ent["id"]):
                continue
            if sel.type_iri is not None and sel.type_iri not in types:
                continue
            if sel.type_pattern is not None and not any(
                search(sel.type_pattern, self.mapper.compact(t)) for t in types
            ):
                continue
            return True
        return False

    def _content(self, inst: Any) -> Any:
        """An attribute as far as ``entityChange`` cares: without the times, and without
        the metadata unless ``notifyOnMetadataChange``."""
        if isinstance(inst, list):
            return [self._content(i) for i in inst]
        if not isinstance(inst, dict):
            return inst
        if not self.metadata_change:
            inst = {k: v for k, v in inst.items() if k in ("type", "value", "object", ATTR_TYPE)}
        return _timeless(inst)

    def alteration(
        self, before: Entity | None, after: Entity | None
    ) -> tuple[str, set[str]] | None:
        """The alteration type of a committed change, if the subscription is triggered
        by it, and the attributes (IRIs) the change touched."""
        if after is None:
            if before is None or "entityDelete" not in self.alterations:
                return None
            return "entityDelete", {k for k in before if k not in ENTITY_KEYS}
        names = [k for k in after if k not in ENTITY_KEYS]
        if before is None:
            if "entityCreate" not in self.alterations:
                return None
            if self.watched is not None and not self.watched & set(names):
                return None
            return "entityCreate", set(names)
        keys = {k for k in (*before, *after) if k not in ENTITY_KEYS}
        touched = {k for k in keys if before.get(k) != after.get(k)}
        changed = {
            k for k in touched if self._content(before.get(k)) != self._content(after.get(k))
        }
        if self.watched is not None:
            touched &= self.watched
            changed &= self.watched
        if changed and ("entityChange" in self.alterations or "entityUpdate" in self.alterations):
            return "entityChange", touched
        if touched and "entityUpdate" in self.alterations:
            return "entityUpdate", touched
        return None

    def passes(self, ent: Entity) -> bool:
        """The expression and the service paths."""
        return (
            in_paths(ent, self.paths)
            and (self.q is None or matches_q(self.q, ent))
            and (self.geo is None or matches_geo(self.geo, ent))
        )

    # -- rendering ------------------------------------------------------------------------

    def change(self, before: Entity | None, after: Entity | None) -> dict[str, Any] | None:
        """The notification item of a change (None: not triggered). The item keeps what
        the message needs: the rendered entity, its service path and macro values."""
        found = self.alteration(before, after)
        if found is None:
            return None
        kind, touched = found
        ent = after if after is not None else before
        assert ent is not None
        if not self.passes(ent):
            return None
        return self.render(ent, before, kind, touched)

    def _names(self, ent: Entity, kind: str, touched: set[str]) -> list[str]:
        present = list(self.mapper.attribute_map(ent))
        if self.attrs:
            names = [a for a in self.attrs if a != "*"]
            if "*" in self.attrs:
                names = [*present, *[n for n in names if n not in present]]
        else:
            names = list(present)
        if self.except_attrs is not None:
            names = [n for n in names if n not in self.except_attrs]
        if self.only_changed and kind != "entityDelete":
            changed = {self.mapper.compact(i) for i in touched}
            names = [n for n in names if n in changed or n in BUILTIN_ATTRS]
        return names

    def render(
        self, ent: Entity, before: Entity | None, kind: str, touched: set[str]
    ) -> dict[str, Any]:
        mapper = self.mapper
        path = (ent.get("scope") or ["/"])[0]
        names = self._names(ent, kind, touched)
        body = mapper.entity_out(
            ent,
            attrs=[n for n in names if n not in ("alterationType", "servicePath")],
            metadata=self._user_metadata(),
        )
        assert isinstance(body, dict)
        out: dict[str, Any] = {"id": body["id"], "type": body["type"]}
        present = mapper.attribute_map(ent)
        old = mapper.attribute_map(before) if before is not None else {}
        for name in names:
            if name == "alterationType":
                out[name] = {"type": "Text", "value": kind, "metadata": {}}
            elif name == "servicePath":
                out[name] = {"type": "Text", "value": path, "metadata": {}}
            elif name in body:
                attr = body[name]
                self._builtin_metadata(attr, name, present.get(name), old.get(name), touched)
                out[name] = attr
            elif self.covered:
                out[name] = {"type": "None", "value": None, "metadata": {}}
        item: dict[str, Any] = {"entity": out, "path": path}
        if self.custom:
            item["macros"] = self._macros(ent, path)
            if "ngsi" in self.part:
                item["full"] = mapper.entity_out(ent, metadata=self._user_metadata())
        return item

    def _user_metadata(self) -> list[str] | None:
        if self.metadata is None:
            return None
        return [m for m in self.metadata if m not in ("previousValue", "actionType")]

    def _builtin_metadata(
        self,
        attr: dict[str, Any],
        name: str,
        now: Any,
        old: Any,
        touched: set[str],
    ) -> None:
        if not self.metadata:
            return
        metas = attr.setdefault("metadata", {})
        if "previousValue" in self.metadata and old is not None:
            kind, value = self.mapper.value_out(old)
            metas["previousValue"] = {"type": kind, "value": value}
        if (
            "actionType" in self.metadata
            and now is not None
            and self.mapper.expand(name) in touched
        ):
            action = "update" if old is not None else "append"
            metas["actionType"] = {"type": "Text", "value": action}

    def _macros(self, ent: Entity, path: str) -> dict[str, Any]:
        values = self.mapper.entity_out(ent, mode="keyValues")
        assert isinstance(values, dict)
        context: dict[str, Any] = {
            "service": self.tenant,
            "servicePath": path,
            "authToken": None,
        }
        context.update(values)
        return context

    # -- messages -------------------------------------------------------------------------

    def message(
        self, endpoint: Endpoint, items: list[dict[str, Any]]
    ) -> tuple[Endpoint, bytes, dict[str, str]]:
        """The endpoint, body and headers of the notification of ``items``."""
        paths = list(dict.fromkeys(i["path"] for i in items))
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Fiware-ServicePath": ", ".join(paths),
            "Fiware-Correlator": f"{uuid.uuid4()}; cbnotif=1",
        }
        if self.tenant:
            headers["Fiware-Service"] = self.tenant
        fmt = self.format
        if not self.custom:
            headers["Ngsiv2-AttrsFormat"] = fmt
            return endpoint, self._body(fmt, items), headers
        (item,) = items
        macros = item["macros"]
        part = self.part
        body: bytes
        if "payload" in part and part["payload"] is None:
            body = b""
            headers["Content-Type"] = ""
            headers["Ngsiv2-AttrsFormat"] = "custom"
        elif "payload" in part and part["payload"] != "":
            body = substitute_text(unquote(part["payload"]), macros).encode("utf-8")
            headers["Content-Type"] = "text/plain; charset=utf-8"
            headers["Ngsiv2-AttrsFormat"] = "custom"
        elif "json" in part:
            body = orjson.dumps(substitute_json(part["json"], macros))
            headers["Ngsiv2-AttrsFormat"] = "custom"
        elif "ngsi" in part:
            patched = self._patched(item, part["ngsi"])
            body = self._body("normalized", [patched])
            headers["Ngsiv2-AttrsFormat"] = "normalized"
        else:
            headers["Ngsiv2-AttrsFormat"] = fmt
            body = self._body(fmt, items)
        if self.transport == "mqttCustom":
            topic = substitute_text(part["topic"], macros)
            return _replace(endpoint, topic=topic), body, headers
        url = substitute_text(part["url"], macros)
        qs = {
            substitute_text(k, macros): substitute_text(v, macros)
            for k, v in part.get("qs", {}).items()
        }
        if qs:
            url = _with_query(url, qs)
        for name, value in part.get("headers", {}).items():
            key = unquote(substitute_text(name, macros))
            if key.lower() in ("fiware-correlator", "ngsiv2-attrsformat"):
                continue
            for existing in [h for h in headers if h.lower() == key.lower()]:
                del headers[existing]
            headers[key] = unquote(substitute_text(value, macros))
        return _replace(endpoint, uri=url), body, headers

    def _patched(self, item: dict[str, Any], ngsi: dict[str, Any]) -> dict[str, Any]:
        """``ngsi``: the full entity patched (update or append), then ``attrs`` applied."""
        macros = item["macros"]
        entity = dict(item["full"])
        for key, value in ngsi.items():
            if key in ("id", "type"):
                entity[key] = substitute_text(value, macros)
                continue
            raw = value.get("value") if isinstance(value, dict) else value
            resolved = substitute_json(raw, macros)
            kind = value.get("type") if isinstance(value, dict) else None
            entity[key] = {
                "type": kind or infer_type(resolved),
                "value": resolved,
                "metadata": {},
            }
        names = [k for k in entity if k not in ("id", "type")]
        if self.attrs:
            names = [n for n in self.attrs if n in entity]
        if self.except_attrs:
            names = [n for n in names if n not in self.except_attrs]
        out = {"id": entity["id"], "type": entity["type"]}
        out.update({n: entity[n] for n in names})
        return {**item, "entity": out}

    def _body(self, fmt: str, items: list[dict[str, Any]]) -> bytes:
        if fmt.startswith("simplified"):
            return orjson.dumps(_formatted(items[0]["entity"], fmt))
        if fmt == "legacy":
            return orjson.dumps(
                {
                    "subscriptionId": self.sub_id,
                    "originator": "localhost",
                    "contextResponses": [_legacy(i["entity"]) for i in items],
                }
            )
        return orjson.dumps(
            {
                "subscriptionId": self.sub_id,
                "data": [_formatted(i["entity"], fmt) for i in items],
            }
        )


def _timeless(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in ("createdAt", "modifiedAt")}
    return value


def _replace(endpoint: Endpoint, **changes: Any) -> Endpoint:
    return replace(endpoint, **changes)


def _with_query(url: str, qs: dict[str, str]) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    query = "&".join(q for q in (parts.query, urlencode(qs)) if q)
    return urlunsplit(parts._replace(query=query))


def _formatted(entity: dict[str, Any], fmt: str) -> Any:
    if fmt in ("normalized", "simplifiedNormalized", "legacy"):
        return entity
    if fmt == "values":
        return [a["value"] for k, a in entity.items() if k not in ("id", "type")]
    return {k: (a if k in ("id", "type") else a["value"]) for k, a in entity.items()}


def _legacy(entity: dict[str, Any]) -> dict[str, Any]:
    """One NGSIv1 ``contextResponses`` element (``attrsFormat: legacy``)."""
    attributes = []
    for name, attr in entity.items():
        if name in ("id", "type"):
            continue
        item: dict[str, Any] = {"name": name, "type": attr["type"], "value": attr["value"]}
        metas = attr.get("metadata") or {}
        if metas:
            item["metadatas"] = [
                {"name": m, "type": v.get("type"), "value": v.get("value")}
                for m, v in metas.items()
            ]
        attributes.append(item)
    return {
        "contextElement": {
            "attributes": attributes,
            "id": entity["id"],
            "isPattern": "false",
            "type": entity["type"],
        },
        "statusCode": {"code": "200", "reasonPhrase": "OK"},
    }


# -- macros ----------------------------------------------------------------------------------


def _lookup(context: dict[str, Any], expr: str) -> Any:
    """``${name}`` or ``${name.key}``: a value of the macro context, None if absent."""
    expr = expr.strip()
    if expr in context:
        return context[expr]
    head, *rest = expr.split(".")
    value = context.get(head)
    for key in rest:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode("utf-8")


def substitute_text(text: str, context: dict[str, Any]) -> str:
    """``text`` with every ``${...}`` replaced by its value as text (absent: empty)."""
    return _MACRO.sub(lambda m: _as_text(_lookup(context, m.group(1))), text)


def substitute_json(value: Any, context: dict[str, Any]) -> Any:
    """A JSON template: a string that is one whole macro takes the value with its JSON
    type (absent: null); macros inside longer strings become text."""
    if isinstance(value, str):
        whole = _MACRO.fullmatch(value)
        if whole is not None:
            return _lookup(context, whole.group(1))
        return substitute_text(value, context)
    if isinstance(value, list):
        return [substitute_json(v, context) for v in value]
    if isinstance(value, dict):
        return {k: substitute_json(v, context) for k, v in value.items()}
    return value


# -- compiling a stored document -------------------------------------------------------------


def endpoint_of(v2: dict[str, Any]) -> tuple[str, dict[str, Any], Endpoint]:
    """The transport, its part of the document and the endpoint notifications go to."""
    n = v2["notification"]
    transport = next(t for t in _TRANSPORTS if t in n)
    part = n[transport]
    if transport.startswith("http"):
        timeout = part.get("timeout") or None
        return (
            transport,
            part,
            Endpoint(
                uri=part["url"],
                method=part.get("method", "POST"),
                timeout=timeout / 1000 if timeout else None,
            ),
        )
    parts = urlsplit(part["url"])
    netloc = parts.netloc
    if "user" in part:
        netloc = f"{quote(part['user'], safe='')}:{quote(part['passwd'], safe='')}@{netloc}"
    return (
        transport,
        part,
        Endpoint(
            uri=urlunsplit((parts.scheme, netloc, "", "", "")),
            notifier_info=(("MQTT-QoS", str(part.get("qos", 0))),),
            raw=True,
            topic=part["topic"],
            retain=bool(part.get("retain", False)),
        ),
    )


def spec_of(tenant: str, doc: dict[str, Any], mapper: V2Mapper) -> V2Spec:
    """The compiled v2 part of a stored subscription."""
    v2 = doc[V2_KEY]
    subject = v2["subject"]
    cond = subject.get("condition", {})
    expr = cond.get("expression", {})
    n = v2["notification"]
    transport, part, _ = endpoint_of(v2)
    selectors = [
        V2Selector(
            ids=frozenset([e["id"]]) if "id" in e else None,
            id_pattern=e.get("idPattern"),
            type_iri=mapper.expand(e["type"]) if "type" in e else None,
            type_pattern=e.get("typePattern"),
        )
        for e in subject["entities"]
    ]
    watched = cond.get("attrs") or None
    return V2Spec(
        mapper=mapper,
        selectors=selectors,
        paths=query_paths(doc.get("servicePath")),
        watched={mapper.expand(a) for a in watched} if watched else None,
        alterations=frozenset(cond.get("alterationTypes") or DEFAULT_ALTERATIONS),
        metadata_change=cond.get("notifyOnMetadataChange", True),
        format=n.get("attrsFormat", "normalized"),
        attrs=n.get("attrs") or None,
        except_attrs=set(n["exceptAttrs"]) if "exceptAttrs" in n else None,
        metadata=n.get("metadata"),
        only_changed=n.get("onlyChangedAttrs", False),
        covered=n.get("covered", False),
        transport=transport,
        part=part,
        status=v2.get("status", "active"),
        armed_at=doc.get("oneshotSince"),
        max_fails=n.get("maxFailsLimit"),
        tenant=tenant,
        sub_id=str(doc["id"]),
        q=parse_v2_q(expr.get("q"), expr.get("mq"), mapper.expand),
        geo=parse_v2_geo(
            expr.get("georel"), expr.get("geometry"), expr.get("coords"), mapper.expand("location")
        ),
    )


def expires_at(v2: dict[str, Any]) -> float | None:
    text = v2.get("expires")
    if not isinstance(text, str):
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def throttling_of(v2: dict[str, Any]) -> float | None:
    t = v2.get("throttling")
    return float(t) if isinstance(t, int | float) and t > 0 else None


# -- showing ---------------------------------------------------------------------------------


def _orion_time(text: Any) -> Any:
    try:
        return iso_datetime(text, "time")
    except BadRequestData:
        return text


def shown(doc: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The subscription as ``GET /v2/subscriptions`` shows it: Orion's defaults filled
    in, the delivery status in ``notification``, the effective ``status``."""
    v2 = doc[V2_KEY]
    out: dict[str, Any] = {"id": doc["id"]}
    if "description" in v2:
        out["description"] = v2["description"]
    subject = v2["subject"]
    cond = dict(subject.get("condition", {}))
    cond.setdefault("attrs", [])
    cond.setdefault("notifyOnMetadataChange", True)
    out["subject"] = {"entities": subject["entities"], "condition": cond}
    n = dict(v2["notification"])
    if "exceptAttrs" not in n:
        n.setdefault("attrs", [])
    n.setdefault("attrsFormat", "normalized")
    n.setdefault("onlyChangedAttrs", False)
    n.setdefault("covered", False)
    for key in ("timesSent", "lastNotification", "lastSuccess", "lastFailure"):
        if status.get(key):
            n[key] = _orion_time(status[key]) if key != "timesSent" else status[key]
    http = any(t.startswith("http") for t in n if t in _TRANSPORTS)
    if http and status.get("lastSuccessCode") is not None:
        n["lastSuccessCode"] = status["lastSuccessCode"]
    if status.get("lastFailureReason") and http:
        n["lastFailureReason"] = status["lastFailureReason"]
    if status.get("failsCounter"):
        n["failsCounter"] = status["failsCounter"]
    out["notification"] = n
    if v2.get("expires"):
        out["expires"] = v2["expires"]
    state = v2.get("status", "active")
    expiry = expires_at(v2)
    out["status"] = "expired" if expiry is not None and expiry <= time.time() else state
    if v2.get("throttling"):
        out["throttling"] = v2["throttling"]
    return out
