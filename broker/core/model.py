"""The way in and out of the internal entity form (``broker.model.entity``).

Parsing validates request payloads into the internal form, expanding terms with the
request's JSON-LD context; rendering compacts them back for one request's view.
Type names, ``vocab`` and ``objectType`` values are expanded and compacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from broker.core.projection import Tree
from broker.errors import BadRequestData
from broker.jsonld.context import TermMap
from broker.model.entity import (
    ATTRIBUTE_TYPES,
    ENTITY_KEYS,
    GEO_ATTRIBUTES,
    INSTANCE_KEYS,
    NGSI_LD,
    NULL,
    SYSTEM_KEYS,
    VALUE_KEYS,
    Entity,
    Instance,
    check_datetime,
    check_entity_id,
    check_name,
    check_scope,
    expires_us,
    infer_type,
    is_instance_list,
    is_uri,
    now_iso,
    now_us,
    pick_language,
)
from broker.model.geo import looks_like_geometry, validate_geometry


def _expand_iri(tm: TermMap, name: str, what: str) -> str:
    check_name(name, what)
    iri = tm.expand(name)
    if ":" not in iri or iri.startswith("@"):
        raise BadRequestData(f"{what} {name!r} does not expand to an IRI")
    return iri


def expand_types(raw: Any, tm: TermMap) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise BadRequestData("entity type must not be empty")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise BadRequestData(
                f"entity type must be a string or an array of strings, got {item!r}"
            )
        iri = _expand_iri(tm, item, "entity type")
        if iri not in out:
            out.append(iri)
    return out


# -- parsing ---------------------------------------------------------------------------------


@dataclass
class Parser:
    """Turns request payloads into the internal form, validating as it goes.

    ``partial`` parsing (PATCH fragments) keeps only the members given, so a service
    can merge them into what is stored; full parsing fills in the attribute type
    from the concise representation and requires a value.
    """

    tm: TermMap
    now: str = field(default_factory=now_iso)
    max_attributes: int = 1000
    #: temporal representation: an attribute may list many instances of one datasetId
    temporal: bool = False

    def entity(self, body: Any, *, require_id: bool = True) -> Entity:
        if not isinstance(body, dict):
            raise BadRequestData("an entity must be a JSON object")
        ent: Entity = {}
        raw_id = body.get("id", body.get("@id"))
        if raw_id is not None or require_id:
            if raw_id is None:
                raise BadRequestData("entity id is missing")
            ent["id"] = check_entity_id(raw_id)
        raw_type = body.get("type", body.get("@type"))
        if raw_type is None:
            raise BadRequestData("entity type is missing")
        ent["type"] = expand_types(raw_type, self.tm)
        if "scope" in body:
            ent["scope"] = check_scope(body["scope"])
        if "expiresAt" in body:  # a transient entity (clause 4.22 of v1.8.1)
            ent["expiresAt"] = check_expiry(body["expiresAt"])
        typed = self.for_types(raw_type)
        ent.update(typed.attributes(body) if typed is not self else self.attributes(body))
        return ent

    def for_types(self, raw_type: Any) -> Parser:
        """The parser for an entity's attributes: type-scoped contexts apply there."""
        tm = self.tm
        for term in raw_type if isinstance(raw_type, list) else [raw_type]:
            if isinstance(term, str):
                tm = tm.scoped(term)
        return self if tm is self.tm else replace(self, tm=tm)

    def attributes(
        self, body: dict[str, Any], *, partial: bool = False
    ) -> dict[str, list[Instance]]:
        """Parse the attribute members of an entity or fragment (other members are skipped)."""
        out: dict[str, list[Instance]] = {}
        count = 0
        for name, raw in body.items():
            if name in ENTITY_KEYS:
                continue
            count += self._weight(raw)
            if count > self.max_attributes:
                raise BadRequestData(
                    "too many attributes, attribute instances and sub-attributes "
                    f"(limit {self.max_attributes} in all)"
                )
            iri = _expand_iri(self.tm, name, "attribute name")
            out[iri] = self.attribute(iri, name, raw, partial=partial)
        return out

    def _weight(self, raw: Any) -> int:
        """What one attribute counts against ``max_attributes``: each of its instances
        (datasetIds; a temporal representation's many values of one instance count once)
        and each sub-attribute, at any depth. Counted on the raw JSON, before any work."""
        if isinstance(raw, list) and is_instance_list(raw):
            if self.temporal:
                return max((_members(item) for item in raw), default=1)
            return sum(_members(item) for item in raw)
        return _members(raw)

    def attribute(self, iri: str, name: str, raw: Any, *, partial: bool = False) -> list[Instance]:
        items = raw if isinstance(raw, list) and is_instance_list(raw) else [raw]
        instances = [self.instance(iri, name, item, partial=partial) for item in items]
        if self.temporal:
            return instances
        seen: set[str | None] = set()
        for inst in instances:
            ds = inst.get("datasetId")
            if ds in seen:
                which = f"datasetId {ds}" if ds else "the default instance (no datasetId)"
                raise BadRequestData(f"attribute {name!r} has {which} more than once")
            seen.add(ds)
        return instances

    def instance(
        self, iri: str, name: str, raw: Any, *, partial: bool = False, depth: int = 0
    ) -> Instance:
        if raw is None:
            raise BadRequestData(f"attribute {name!r} must not be null")
        if not isinstance(raw, dict) or (
            "type" not in raw and infer_type(raw) is None and not looks_like_geometry(raw)
        ):
            # Concise form: the value itself.
            if looks_like_geometry(raw):
                raw = {"type": "GeoProperty", "value": raw}
            else:
                raw = {"value": raw} if partial else {"type": "Property", "value": raw}
        elif looks_like_geometry(raw) and raw.get("type") not in ATTRIBUTE_TYPES:
            raw = {"type": "GeoProperty", "value": raw}
        kind = raw.get("type")
        if kind is None and not partial:
            kind = infer_type(raw) or "Property"
        elif kind is None:
            kind = infer_type(raw)
        if kind is not None and kind not in ATTRIBUTE_TYPES:
            raise BadRequestData(
                f"attribute {name!r} has type {kind!r}; expected one of {', '.join(ATTRIBUTE_TYPES)}"
            )
        inst: Instance = {}
        if kind is not None:
            inst["type"] = kind
        if iri in GEO_ATTRIBUTES and kind not in (None, "GeoProperty"):
            raise BadRequestData(f"{name!r} must be a GeoProperty")
        value_key = ATTRIBUTE_TYPES[kind] if kind else None
        if value_key is not None and value_key not in raw and not partial:
            raise BadRequestData(f"{kind} {name!r} needs a {value_key!r} member")
        scoped = self.tm.scoped(name) if depth == 0 else self.tm
        for key, value in raw.items():
            if key in ("type", "createdAt", "modifiedAt", "deletedAt", "instanceId", "@context"):
                continue
            if key in INSTANCE_KEYS:
                if value_key is not None and key in VALUE_KEYS and key != value_key:
                    raise BadRequestData(f"{kind} {name!r} must not have a {key!r} member")
                inst[key] = self._member(kind, name, key, value)
            else:
                sub_iri = _expand_iri(scoped, key, "sub-attribute name")
                inst[sub_iri] = self.instance(sub_iri, key, value, partial=partial, depth=depth + 1)
        if not partial:
            inst["createdAt"] = self.now
        inst["modifiedAt"] = self.now
        return inst

    def _member(self, kind: str | None, name: str, key: str, value: Any) -> Any:
        if value is None:
            raise BadRequestData(f"attribute {name!r}: {key!r} must not be null")
        if value == NULL and key in VALUE_KEYS:
            return NULL
        if key == "value":
            if kind == "GeoProperty":
                return validate_geometry(value, name)
            return value
        if key == "object":
            objs = value if isinstance(value, list) else [value]
            if not objs or not all(is_uri(o) for o in objs):
                raise BadRequestData(f"Relationship {name!r}: object must be a URI (or URIs)")
            return value
        if key == "objectList":
            if not isinstance(value, list):
                raise BadRequestData(f"ListRelationship {name!r}: objectList must be an array")
            for item in value:
                target = item.get("object") if isinstance(item, dict) else item
                if not is_uri(target):
                    raise BadRequestData(f"ListRelationship {name!r}: {item!r} is not a URI")
            return value
        if key == "valueList":
            if not isinstance(value, list):
                raise BadRequestData(f"ListProperty {name!r}: valueList must be an array")
            return value
        if key == "languageMap":
            if not isinstance(value, dict) or not value:
                raise BadRequestData(f"LanguageProperty {name!r}: languageMap must be an object")
            for tag, text in value.items():
                texts = text if isinstance(text, list) else [text]
                if not isinstance(tag, str) or not all(isinstance(t, str) for t in texts):
                    raise BadRequestData(
                        f"LanguageProperty {name!r}: languageMap values must be strings"
                    )
            return value
        if key == "vocab":
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(v, str) for v in items):
                raise BadRequestData(f"VocabProperty {name!r}: vocab must be a string or strings")
            expanded = [_expand_iri(self.tm, v, "vocab value") for v in items]
            return expanded if isinstance(value, list) else expanded[0]
        if key == "objectType":
            return expand_types(value, self.tm)
        if key == "observedAt":
            return check_datetime(value, f"{name!r} observedAt")
        if key == "datasetId":
            if not is_uri(value):
                raise BadRequestData(f"attribute {name!r}: datasetId must be a URI")
            return value
        if key == "unitCode":
            if not isinstance(value, str):
                raise BadRequestData(f"attribute {name!r}: unitCode must be a string")
            return value
        return value


def _members(raw: Any) -> int:
    """One attribute instance and its sub-attributes, at any depth (see Parser._weight)."""
    count = 0
    stack = [raw]
    while stack:
        item = stack.pop()
        count += 1
        if (
            isinstance(item, dict)
            and ("type" in item or infer_type(item) is not None)
            and not looks_like_geometry(item)
        ):
            stack.extend(v for k, v in item.items() if k not in INSTANCE_KEYS)
    return count


def stored_weight(ent: Entity) -> int:
    """What a stored entity counts against ``max_attributes``: every instance of every
    attribute and every sub-attribute, at any depth (the bound ``Parser`` applies to a
    request, applied to what a merge or an append makes of the entity)."""
    count = 0
    stack: list[Any] = [
        inst for k, v in ent.items() if k not in ENTITY_KEYS and isinstance(v, list) for inst in v
    ]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(
                v for k, v in item.items() if k not in INSTANCE_KEYS and isinstance(v, dict)
            )
    return count


def check_growth(before: Entity | None, after: Entity, limit: int) -> None:
    """Refuse a write that grows an entity past ``limit`` instances and sub-attributes
    (one stored past it, under an earlier limit, may still shrink or change)."""
    weight = stored_weight(after)
    if weight > limit and (before is None or weight > stored_weight(before)):
        raise BadRequestData(
            f"the entity would hold {weight} attribute instances and sub-attributes "
            f"(limit {limit} in all)"
        )


# -- rendering -------------------------------------------------------------------------------

Format = Literal["normalized", "concise", "keyValues"]


@dataclass
class View:
    """How to render entities for one request.

    ``pick``/``omit`` are projection trees keyed by ``id``/``type``/``scope`` or by
    expanded attribute IRIs; a sub-tree applies to the entity a Relationship links to
    when linked entities are joined (``join=inline|flat``, ``joinLevel``).
    """

    tm: TermMap
    format: Format = "normalized"
    sys_attrs: bool = False
    #: Expanded attribute IRIs to keep (the ``attrs`` parameter), or None for all.
    attrs: set[str] | None = None
    pick: Tree | None = None
    omit: Tree | None = None
    lang: str | None = None
    join: str | None = None
    join_level: int = 1
    #: Attribute instances to show, by datasetId (None: the default instance), or all.
    dataset_ids: set[str | None] | None = None
    #: The GeoProperty (expanded) that is a GeoJSON Feature's geometry.
    geometry_property: str = NGSI_LD + "location"

    def member(self, key: str) -> bool:
        if self.pick is not None:
            return key in self.pick
        return not (self.omit is not None and key in self.omit and self.omit[key] is None)

    def keeps(self, iri: str) -> bool:
        return (self.attrs is None or iri in self.attrs) and self.member(iri)

    def child(self, iri: str) -> View:
        """The view of an entity linked through attribute ``iri``."""
        pick = self.pick.get(iri) if self.pick is not None else None
        omit = self.omit.get(iri) if self.omit is not None else None
        return replace(self, attrs=None, pick=pick, omit=omit)

    def entity(
        self,
        ent: Entity,
        linked: dict[str, Entity] | None = None,
        flat: list[dict[str, Any]] | None = None,
        depth: int = 0,
    ) -> dict[str, Any]:
        types = [self.tm.compact(t) for t in ent["type"]]
        scoped = self.tm
        for term in types:
            scoped = scoped.scoped(term)
        if scoped is not self.tm:
            return replace(self, tm=scoped)._entity(ent, types, linked, flat, depth)
        return self._entity(ent, types, linked, flat, depth)

    def _entity(
        self,
        ent: Entity,
        types: list[str],
        linked: dict[str, Entity] | None,
        flat: list[dict[str, Any]] | None,
        depth: int,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.member("id"):
            out["id"] = ent["id"]
        if self.member("type"):
            out["type"] = types[0] if len(types) == 1 else types
        if "scope" in ent and self.member("scope"):
            out["scope"] = ent["scope"][0] if len(ent["scope"]) == 1 else ent["scope"]
        joining = linked is not None and self.join is not None and depth < self.join_level
        for iri, instances in ent.items():
            if iri in ENTITY_KEYS or not self.keeps(iri):
                continue
            if self.dataset_ids is not None:
                instances = [i for i in instances if i.get("datasetId") in self.dataset_ids]
                if not instances:
                    continue
            rendered = []
            for inst in instances:
                item = self.instance(inst)
                if joining and inst.get("type") == "Relationship":
                    assert linked is not None
                    item = self._join(iri, inst, item, linked, flat, depth)
                rendered.append(item)
            out[self.tm.compact(iri)] = rendered[0] if len(rendered) == 1 else rendered
        if self.sys_attrs and self.format != "keyValues":
            for key in ("createdAt", "modifiedAt", "expiresAt"):
                if key in ent:
                    out[key] = ent[key]
        return out

    def _join(
        self,
        iri: str,
        inst: Instance,
        item: Any,
        linked: dict[str, Entity],
        flat: list[dict[str, Any]] | None,
        depth: int,
    ) -> Any:
        objects = inst["object"] if isinstance(inst["object"], list) else [inst["object"]]
        targets = [linked[o] for o in objects if o in linked]
        if not targets:
            return item
        child = self.child(iri)
        if self.join == "flat":
            assert flat is not None
            for target in targets:
                if all(e.get("id") != target["id"] for e in flat):
                    flat.append({})  # reserve the place: deeper links come after their parent
                    at = len(flat) - 1
                    flat[at] = child.entity(target, linked, flat, depth + 1)
            return item
        embedded = [child.entity(t, linked, flat, depth + 1) for t in targets]
        value = embedded[0] if len(embedded) == 1 else embedded
        if self.format == "keyValues":
            return value
        if isinstance(item, dict):
            item["entity"] = value
        return item

    def instance(self, inst: Instance) -> Any:
        kind = inst.get("type", "Property")
        if self.format == "keyValues":
            return self._simple_value(kind, inst)
        out: dict[str, Any] = {}
        for key, value in inst.items():
            if key in SYSTEM_KEYS:
                if self.sys_attrs:
                    out[key] = value
            elif key == "vocab":
                out[key] = self.compact_vocab(value)
            elif key == "objectType":
                types = [self.tm.compact(v) for v in value]
                out[key] = types[0] if len(types) == 1 else types
            elif key in INSTANCE_KEYS:
                out[key] = value
            else:
                out[self.tm.compact(key)] = self.instance(value)
        if kind == "LanguageProperty" and self.lang is not None:
            tag, text = pick_language(inst["languageMap"], self.lang)
            del out["languageMap"]
            out["type"] = "Property"
            out["value"] = text
            out["lang"] = tag
            kind = "Property"
        if self.format == "concise":
            out.pop("type", None)
            if set(out) == {"value"} and kind == "Property":
                return out["value"]
        return out

    def compact_vocab(self, value: Any) -> Any:
        """A VocabProperty's ``vocab`` (one IRI or a list) in the request's terms."""
        return (
            [self.tm.compact(v) for v in value]
            if isinstance(value, list)
            else self.tm.compact(value)
        )

    def _simple_value(self, kind: str, inst: Instance) -> Any:
        if kind == "LanguageProperty":
            if self.lang is not None:
                return pick_language(inst["languageMap"], self.lang)[1]
            return {"languageMap": inst["languageMap"]}
        if kind == "VocabProperty":
            return self.compact_vocab(inst["vocab"])
        if kind == "ListRelationship":
            return inst.get("objectList")
        return inst.get(ATTRIBUTE_TYPES.get(kind, "value"))

    def feature(self, ent: Entity, geometry_property: str) -> dict[str, Any]:
        """A GeoJSON Feature of the entity; ``geometry_property`` is an expanded IRI."""
        body = self.entity(ent)
        props = {k: v for k, v in body.items() if k != "id"}
        geometry = None
        for inst in ent.get(geometry_property, []):
            if inst.get("type") == "GeoProperty":
                geometry = inst.get("value")
                break
        return {"id": ent["id"], "type": "Feature", "geometry": geometry, "properties": props}


def check_expiry(value: Any) -> str:
    """``expiresAt`` of a transient entity: a DateTime in the future (one in the past
    would create an entity that no read can see)."""
    text = check_datetime(value, "expiresAt")
    if (expires_us({"expiresAt": text}) or 0) <= now_us():
        raise BadRequestData("expiresAt is in the past")
    return text
