"""NGSI v2 entities and attributes <-> the broker's internal (NGSI-LD) form.

One store, two APIs (Orion's NGSI v2 API, ``doc/manuals/orion-api.md``, beside
NGSI-LD). The mapping, written down with what does not round-trip in
``docs/ngsi-v2.md``:

* names: v2 entity types, attribute and metadata names are terms of the NGSI-LD core
  context with its default ``@vocab``, so ``Room`` is
  ``https://uri.etsi.org/ngsi-ld/default-context/Room`` and an NGSI-LD client without
  a ``Link`` header sees the same short names;
* ids: kept as they are (as Orion-LD does); v2 ids that are URIs (``urn:ngsi-ld:...``)
  are also addressable through NGSI-LD;
* attributes: Properties (``Relationship`` a Relationship, ``geo:*`` a GeoProperty
  holding GeoJSON); metadata are sub-properties; ``unitCode`` and ``observedAt``
  metadata are the NGSI-LD members of those names;
* the v2 attribute (and metadata) type: implied by the value when it is the type v2
  would infer (``Number``, ``Text``, ``Boolean``, ``StructuredValue``, ``None``,
  ``Relationship``, ``geo:json``); any other type is kept in the sub-property
  :data:`ATTR_TYPE`, so it round-trips;
* ``DateTime`` values are stored as ISO 8601 UTC strings (``...sssZ``), which the
  query evaluators of every store compare as instants;
* ``Fiware-ServicePath`` is the entity's ``scope`` (the root path ``/`` is no scope).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from broker.errors import BadRequestData
from broker.jsonld.context import TermMap
from broker.model.entity import ENTITY_KEYS, INSTANCE_KEYS, Entity, Instance
from broker.model.geo import validate_geometry
from broker.query.v2q import box_polygon, iso_datetime

#: Sub-property keeping a v2 type the value does not imply (``geo:point``, ``Temperature``).
ATTR_TYPE: Final = "urn:ngsi-v2:attrType"
DEFAULT_TYPE: Final = "Thing"
MAX_ID: Final = 256
#: v2 metadata names that are NGSI-LD instance members rather than sub-properties.
MEMBER_METADATA: Final = frozenset({"unitCode", "observedAt"})
GEO_TYPES: Final = frozenset({"geo:json", "geo:point", "geo:line", "geo:box", "geo:polygon"})
DATETIME_TYPES: Final = frozenset({"DateTime", "ISO8601"})
BUILTIN_METADATA: Final = ("dateCreated", "dateModified")

# Orion's general syntax restrictions plus the identifier ones (control, whitespace, & ? / #).
_FORBIDDEN_ID = re.compile(r"[<>\"'=;()&?/#\s\x00-\x1f\x7f]")
# Attribute values: the general restrictions only (TextUnrestricted lifts them).
_FORBIDDEN_VALUE = re.compile(r"[<>\"'=;()]")
_PATH_LEVEL = re.compile(r"^[A-Za-z0-9_]{1,50}$")


# -- identifiers -----------------------------------------------------------------------------


def check_id(value: Any, what: str = "entity id") -> str:
    """An identifier by Orion's rules: 1 to 256 characters, none of ``<>"'=;()&?/#``, no
    control characters or whitespace. Non-ASCII (Japanese) characters are allowed."""
    if not isinstance(value, str):
        raise BadRequestData(f"{what} must be a string")
    if not value:
        raise BadRequestData(f"empty {what}")
    if len(value) > MAX_ID:
        raise BadRequestData(f"{what} is longer than {MAX_ID} characters")
    if _FORBIDDEN_ID.search(value):
        raise BadRequestData(f"Invalid characters in {what}")
    return value


def check_attr_name(name: Any) -> str:
    check_id(name, "attribute name")
    if name in ENTITY_KEYS or name in ("geo:distance", "*"):
        raise BadRequestData(f"{name!r} is not allowed as an attribute name")
    return str(name)


def check_meta_name(name: Any) -> str:
    check_id(name, "metadata name")
    if name == "*" or name == ATTR_TYPE or (name in INSTANCE_KEYS and name not in MEMBER_METADATA):
        raise BadRequestData(f"{name!r} is not allowed as a metadata name")
    return str(name)


def _check_text(value: Any, what: str) -> None:
    """Orion's general syntax restrictions on string values, inside structures too."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _FORBIDDEN_VALUE.search(item):
                raise BadRequestData(f"Invalid characters in {what}")
        elif isinstance(item, dict):
            stack.extend(item.values())
            for key in item:
                if _FORBIDDEN_VALUE.search(key):
                    raise BadRequestData(f"Invalid characters in {what}")
        elif isinstance(item, list):
            stack.extend(item)


# -- service paths ---------------------------------------------------------------------------


def _check_path(path: str) -> list[str]:
    if not path.startswith("/"):
        raise BadRequestData(
            "Only /absolute/ Service Paths allowed [a service path must begin with /]"
        )
    levels = [p for p in path.strip().rstrip("/").split("/")[1:]]
    if len(levels) > 10:
        raise BadRequestData("too many components in ServicePath (at most 10)")
    for i, level in enumerate(levels):
        if level == "#" and i == len(levels) - 1:
            continue
        if not _PATH_LEVEL.match(level):
            raise BadRequestData(
                "a component of ServicePath contains an illegal character "
                "(letters, digits and _ only, 1 to 50 of them)"
            )
    return levels


def write_path(header: str | None) -> str | None:
    """The scope of an entity written under ``Fiware-ServicePath`` (None for the root)."""
    if header is None or not header.strip():
        return None
    if "," in header:
        raise BadRequestData("more than one service path in an update request")
    levels = _check_path(header.strip())
    if levels and levels[-1] == "#":
        raise BadRequestData("a service path with # cannot be used in an update request")
    return "/" + "/".join(levels) if levels else None


def query_paths(header: str | None) -> list[str] | None:
    """The scope patterns of a query's ``Fiware-ServicePath`` (None: every entity).

    Up to 10 comma-separated paths; ``/a/#`` is ``/a`` and below. The root ``/`` and
    ``/#`` select every entity: the store's scope filter cannot single out entities
    without a scope (see docs/ngsi-v2.md).
    """
    if header is None or not header.strip():
        return None
    parts = [p.strip() for p in header.split(",")]
    if len(parts) > 10:
        raise BadRequestData("too many service paths - a maximum of ten service paths is allowed")
    out: list[str] = []
    for part in parts:
        levels = _check_path(part)
        if not levels or levels == ["#"]:
            return None
        out.append("/" + "/".join(levels))
    return out


def in_paths(ent: Entity, paths: list[str] | None) -> bool:
    """Whether an entity is in one of the query paths (the reference of the scope filter)."""
    if paths is None:
        return True
    scopes = ent.get("scope") or []
    for path in paths:
        subtree = path.endswith("/#")
        base = path[:-2] if subtree else path
        for scope in scopes:
            s = "/" + scope.strip("/")
            if s == base or (subtree and s.startswith(base + "/")):
                return True
    return False


def scope_query_text(paths: list[str]) -> str:
    """The NGSI-LD ``scopeQ`` text of query paths: ``/a,/b/#``."""
    return ",".join(paths)


# -- values ----------------------------------------------------------------------------------


def infer_type(value: Any) -> str:
    """The type v2 gives an attribute or metadata whose type is omitted."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "Text"
    return "StructuredValue"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _latlon(text: Any, what: str) -> list[float]:
    """``"lat, lon"`` -> ``[lon, lat]`` (GeoJSON order)."""
    if not isinstance(text, str):
        raise BadRequestData(f"{what}: coordinates must be 'latitude, longitude' strings")
    parts = [p.strip() for p in text.split(",")]
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError as exc:
        raise BadRequestData(f"{what}: invalid coordinates {text!r}") from exc
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
        raise BadRequestData(f"{what}: coordinates {text!r} out of range")
    return [lon, lat]


def _latlons(value: Any, what: str, minimum: int) -> list[list[float]]:
    if not isinstance(value, list) or len(value) < minimum:
        raise BadRequestData(f"{what}: needs a list of at least {minimum} 'lat, lon' strings")
    return [_latlon(v, what) for v in value]


def to_geojson(kind: str, value: Any, what: str) -> dict[str, Any]:
    """A ``geo:*`` attribute value as a validated GeoJSON geometry."""
    geom: Any
    if kind == "geo:point":
        geom = {"type": "Point", "coordinates": _latlon(value, what)}
    elif kind == "geo:line":
        geom = {"type": "LineString", "coordinates": _latlons(value, what, 2)}
    elif kind == "geo:box":
        if not isinstance(value, list) or len(value) != 2:
            raise BadRequestData(f"{what}: a geo:box is two 'lat, lon' corners")
        geom = box_polygon(_latlons(value, what, 2))
    elif kind == "geo:polygon":
        geom = {"type": "Polygon", "coordinates": [_latlons(value, what, 4)]}
    else:
        geom = value
        if isinstance(geom, dict) and geom.get("type") == "Feature":
            geom = geom.get("geometry")
        elif isinstance(geom, dict) and geom.get("type") == "FeatureCollection":
            features = geom.get("features")
            if not isinstance(features, list) or len(features) != 1:
                raise BadRequestData(f"{what}: a FeatureCollection must hold exactly one Feature")
            geom = features[0].get("geometry") if isinstance(features[0], dict) else None
    return validate_geometry(geom, what)


def from_geojson(kind: str, geom: dict[str, Any]) -> Any:
    """A GeoJSON geometry in the form of the v2 type it was written as."""
    coords = geom.get("coordinates")

    def ll(pos: list[float]) -> str:
        return f"{_num(pos[1])}, {_num(pos[0])}"

    try:
        if kind == "geo:point" and geom["type"] == "Point":
            return ll(coords)  # type: ignore[arg-type]
        if kind == "geo:line" and geom["type"] == "LineString":
            return [ll(p) for p in coords]  # type: ignore[union-attr]
        if kind == "geo:polygon" and geom["type"] == "Polygon":
            return [ll(p) for p in coords[0]]  # type: ignore[index]
        if kind == "geo:box" and geom["type"] == "Polygon":
            ring = coords[0]  # type: ignore[index]
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            return [ll([min(xs), min(ys)]), ll([max(xs), max(ys)])]
    except (KeyError, IndexError, TypeError):
        pass
    return geom


# -- v2 -> internal --------------------------------------------------------------------------


@dataclass
class V2Mapper:
    """Converts v2 payloads to internal instances and back, under the core term map."""

    tm: TermMap

    def expand(self, name: str) -> str:
        return self.tm.expand(name)

    def compact(self, iri: str) -> str:
        return self.tm.compact(iri)

    # writing

    def entity(self, body: Any, now: str, scope: str | None) -> Entity:
        """A new internal entity from a v2 entity (normalized or keyValues already mapped)."""
        if not isinstance(body, dict):
            raise BadRequestData("an entity must be a JSON object")
        if "id" not in body:
            raise BadRequestData("entity id is missing")
        eid = check_id(body["id"])
        etype = check_id(body.get("type", DEFAULT_TYPE), "entity type")
        ent: Entity = {"id": eid, "type": [self.expand(etype)], "createdAt": now}
        if scope is not None:
            ent["scope"] = [scope]
        ent.update(self.attributes(body, now))
        ent["modifiedAt"] = now
        return ent

    def attributes(self, body: dict[str, Any], now: str, *, key_values: bool = False) -> Entity:
        """Internal attributes (IRI -> [instance]) of the attribute members of ``body``."""
        out: Entity = {}
        for name, raw in body.items():
            if name in ("id", "type"):
                continue
            check_attr_name(name)
            out[self.expand(name)] = [self.attribute(name, raw, now, key_values=key_values)]
        return out

    def attribute(self, name: str, raw: Any, now: str, *, key_values: bool = False) -> Instance:
        if key_values:
            raw = {"value": raw}
        if not isinstance(raw, dict):
            raise BadRequestData(f"attribute {name!r} must be a JSON object")
        unknown = set(raw) - {"value", "type", "metadata"}
        if unknown:
            raise BadRequestData(
                f"unrecognized property for attribute {name!r}: {', '.join(sorted(unknown))}"
            )
        value = raw.get("value")
        kind = raw.get("type")
        if kind is None:
            kind = infer_type(value)
        else:
            check_id(kind, "attribute type")
        metadata = raw.get("metadata", {})
        if not isinstance(metadata, dict):
            raise BadRequestData(f"metadata of attribute {name!r} must be a JSON object")
        if kind != "TextUnrestricted" and not _unrestricted(metadata):
            _check_text(value, f"attribute value of {name!r}")
        inst = self._value_instance(name, kind, value, metadata, now)
        for meta, mraw in metadata.items():
            self._metadata(inst, name, meta, mraw, now)
        return inst

    def _value_instance(
        self, name: str, kind: str, value: Any, metadata: dict[str, Any], now: str
    ) -> Instance:
        what = f"attribute {name!r}"
        implied = infer_type(value)
        ignore = _flag(metadata.get("ignoreType"))
        inst: Instance
        if kind in GEO_TYPES and not ignore and value is not None:
            inst = {"type": "GeoProperty", "value": to_geojson(kind, value, what)}
            implied = "geo:json"
        elif kind == "Relationship" and isinstance(value, str) and _is_id(value):
            inst = {"type": "Relationship", "object": value}
            implied = "Relationship"
        elif kind in DATETIME_TYPES and not ignore and value is not None:
            inst = {"type": "Property", "value": iso_datetime(value, what)}
        else:
            inst = {"type": "Property", "value": value}
        inst["createdAt"] = inst["modifiedAt"] = now
        if kind != implied:
            inst[ATTR_TYPE] = {
                "type": "Property",
                "value": kind,
                "createdAt": now,
                "modifiedAt": now,
            }
        return inst

    def _metadata(self, inst: Instance, attr: str, meta: str, raw: Any, now: str) -> None:
        check_meta_name(meta)
        if not isinstance(raw, dict):
            raise BadRequestData(f"metadata {meta!r} of attribute {attr!r} must be a JSON object")
        unknown = set(raw) - {"value", "type"}
        if unknown:
            raise BadRequestData(f"unrecognized property for metadata {meta!r}")
        value = raw.get("value")
        kind = raw.get("type")
        if kind is None:
            kind = infer_type(value)
        else:
            check_id(kind, "metadata type")
        if kind != "TextUnrestricted":
            _check_text(value, f"metadata value of {meta!r}")
        if meta == "unitCode" and isinstance(value, str) and kind == "Text":
            inst["unitCode"] = value
            return
        if meta == "observedAt" and kind in DATETIME_TYPES:
            inst["observedAt"] = iso_datetime(value, f"metadata {meta!r}")
            return
        if meta in MEMBER_METADATA:
            raise BadRequestData(
                f"metadata {meta!r} must be a Text (unitCode) or a DateTime (observedAt)"
            )
        if kind in DATETIME_TYPES and value is not None:
            value = iso_datetime(value, f"metadata {meta!r}")
        sub: Instance = {"type": "Property", "value": value, "createdAt": now, "modifiedAt": now}
        if kind != infer_type(value):
            sub[ATTR_TYPE] = {
                "type": "Property",
                "value": kind,
                "createdAt": now,
                "modifiedAt": now,
            }
        inst[self.expand(meta)] = sub

    # reading

    def entity_out(
        self,
        ent: Entity,
        *,
        attrs: list[str] | None = None,
        metadata: list[str] | None = None,
        mode: str = "normalized",
    ) -> Any:
        """A stored entity in v2 form: ``normalized``, ``keyValues``, ``values`` or ``unique``.

        ``attrs`` lists the attributes to render (``*`` for all user attributes, builtins
        ``dateCreated``/``dateModified`` by name), in that order for ``values``.
        """
        named = self.attribute_map(ent)
        wanted: list[str]
        if attrs is None:
            wanted = list(named)
        else:
            wanted = []
            for a in attrs:
                if a == "*":
                    wanted.extend(n for n in named if n not in wanted)
                elif a not in wanted:
                    wanted.append(a)
        rendered: dict[str, Any] = {}
        for name in wanted:
            if name in named:
                rendered[name] = self.attribute_out(named[name], metadata)
            elif name == "dateCreated" and "createdAt" in ent:
                rendered[name] = _builtin(ent["createdAt"])
            elif name == "dateModified" and "modifiedAt" in ent:
                rendered[name] = _builtin(ent["modifiedAt"])
        if mode in ("values", "unique"):
            values = [r["value"] for r in rendered.values()]
            if mode == "unique":
                unique: list[Any] = []
                for v in values:
                    if v not in unique:
                        unique.append(v)
                return unique
            return values
        out: dict[str, Any] = {"id": ent["id"], "type": self.entity_type(ent)}
        for name, attr in rendered.items():
            out[name] = attr["value"] if mode == "keyValues" else attr
        return out

    def entity_type(self, ent: Entity) -> str:
        types = ent.get("type") or []
        return self.compact(types[0]) if types else DEFAULT_TYPE

    def attribute_map(self, ent: Entity) -> dict[str, Instance]:
        """Attribute name -> the instance v2 shows (the default one, else the first)."""
        out: dict[str, Instance] = {}
        for iri, instances in ent.items():
            if iri in ENTITY_KEYS or not isinstance(instances, list) or not instances:
                continue
            chosen = next((i for i in instances if "datasetId" not in i), instances[0])
            out[self.compact(iri)] = chosen
        return out

    def attribute_out(self, inst: Instance, metadata: list[str] | None = None) -> dict[str, Any]:
        kind, value = self.value_out(inst)
        metas: dict[str, Any] = {}
        for key, sub in inst.items():
            if key == "unitCode":
                metas["unitCode"] = {"type": "Text", "value": sub}
            elif key == "observedAt":
                metas["observedAt"] = {"type": "DateTime", "value": _orion_time(sub)}
            elif key == "datasetId":
                metas["datasetId"] = {"type": "Text", "value": sub}
            elif key in INSTANCE_KEYS or key == ATTR_TYPE or not isinstance(sub, dict):
                continue
            else:
                mkind, mvalue = self.value_out(sub)
                metas[self.compact(key)] = {"type": mkind, "value": mvalue}
        if metadata is not None:
            keep = set(metadata)
            selected = {k: v for k, v in metas.items() if "*" in keep or k in keep}
            for builtin, member in (("dateCreated", "createdAt"), ("dateModified", "modifiedAt")):
                if builtin in keep and builtin not in selected and member in inst:
                    selected[builtin] = {"type": "DateTime", "value": _orion_time(inst[member])}
            metas = selected
        return {"type": kind, "value": value, "metadata": metas}

    def value_out(self, inst: Instance) -> tuple[str, Any]:
        """(v2 type, v2 value) of an internal instance, attribute or sub-attribute."""
        ld = inst.get("type", "Property")
        kept = inst.get(ATTR_TYPE)
        kind = kept.get("value") if isinstance(kept, dict) else None
        if ld == "Relationship":
            obj = inst.get("object")
            return kind or "Relationship", obj
        if ld == "GeoProperty":
            geom = inst.get("value")
            if kind is not None and isinstance(geom, dict):
                return kind, from_geojson(kind, geom)
            return "geo:json", geom
        if ld == "Property":
            value = inst.get("value")
            if isinstance(value, dict) and value.get("@type") == "DateTime" and "@value" in value:
                return kind or "DateTime", value["@value"]
            return kind or infer_type(value), value
        if ld == "LanguageProperty":
            return kind or ld, inst.get("languageMap")
        if ld == "VocabProperty":
            vocab = inst.get("vocab")
            return kind or ld, (
                [self.compact(v) for v in vocab]
                if isinstance(vocab, list)
                else self.compact(str(vocab))
            )
        if ld == "JsonProperty":
            return kind or ld, inst.get("json")
        if ld == "ListProperty":
            return kind or ld, inst.get("valueList")
        if ld == "ListRelationship":
            return kind or ld, inst.get("objectList")
        return kind or ld, inst.get("value")


def _is_id(value: str) -> bool:
    try:
        check_id(value)
    except BadRequestData:
        return False
    return True


def _flag(meta: Any) -> bool:
    return isinstance(meta, dict) and meta.get("value") is True


def _unrestricted(metadata: dict[str, Any]) -> bool:
    return _flag(metadata.get("TextUnrestricted"))


#: ``YYYY-MM-DDThh:mm:ss.sssZ``: a time already in the form v2 shows.
_ORION_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _orion_time(text: Any) -> Any:
    """A stored time as v2 shows it (``...sss`` milliseconds, ``Z``); read for every
    ``observedAt`` of every entity a query renders, so the usual cases are cheap."""
    if not isinstance(text, str):
        return text
    if _ORION_TIME.match(text):
        return text
    return _converted_time(text)


@functools.lru_cache(maxsize=4096)
def _converted_time(text: str) -> str:
    try:
        return iso_datetime(text, "date")
    except BadRequestData:
        return text


def _builtin(text: Any) -> dict[str, Any]:
    return {"type": "DateTime", "value": _orion_time(text), "metadata": {}}
