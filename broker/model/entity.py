"""NGSI-LD entities in the broker's internal form, their attribute values and checks.

Internal form (what the store keeps, what services pass around)::

    {"id": "urn:ngsi-ld:Shelter:1",
     "type": ["https://example.org/Shelter"],          # expanded IRIs, always a list
     "scope": ["/Tokyo/Komae"],                         # optional
     "createdAt": "...Z", "modifiedAt": "...Z",
     "https://example.org/capacity": [                  # attribute IRI -> instances
         {"type": "Property", "value": 120, "unitCode": "C62",
          "createdAt": "...", "modifiedAt": "...",
          "https://uri.etsi.org/ngsi-ld/observedBy": {...}}]}  # sub-attribute IRI -> one instance

Attribute and sub-attribute names are expanded IRIs; every IRI contains ``:``, so
they never collide with the reserved member names (``id``, ``type``, ``value`` ...).
Values inside Property values are kept as given (not JSON-LD expanded), as Orion-LD
does. Parsing request payloads into this form, which needs the request's JSON-LD
context, is ``broker.core.model``'s.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from broker.errors import BadRequestData
from broker.model.geo import looks_like_geometry

#: The NGSI-LD core vocabulary; core terms expand under it.
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"

Entity = dict[str, Any]
Instance = dict[str, Any]

ATTRIBUTE_TYPES = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "VocabProperty": "vocab",
    "JsonProperty": "json",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
}
VALUE_KEYS = {v: k for k, v in ATTRIBUTE_TYPES.items() if k != "GeoProperty"}
SYSTEM_KEYS = frozenset({"createdAt", "modifiedAt", "deletedAt"})
INSTANCE_KEYS = frozenset(
    {
        "type",
        "value",
        "object",
        "objectType",
        "languageMap",
        "vocab",
        "json",
        "valueList",
        "objectList",
        "datasetId",
        "observedAt",
        "unitCode",
        "instanceId",
        "lang",
        "previousValue",
        "@context",
        *SYSTEM_KEYS,
    }
)
ENTITY_KEYS = frozenset({"id", "type", "scope", "@context", "@id", "@type", *SYSTEM_KEYS})
GEO_ATTRIBUTES = frozenset(
    {NGSI_LD + "location", NGSI_LD + "observationSpace", NGSI_LD + "operationSpace"}
)
NULL = "urn:ngsi-ld:null"

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
_FORBIDDEN_NAME = re.compile(r"[\s<>\"'=;()\\]")
_SCOPE_RE = re.compile(r"^/?[^\s/+#,;|()]+(/[^\s/+#,;|()]+)*$|^/$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_uri(value: Any) -> bool:
    return isinstance(value, str) and bool(_URI_RE.match(value))


def check_entity_id(value: Any) -> str:
    if not is_uri(value):
        raise BadRequestData(f"entity id must be a URI, got {value!r}")
    return str(value)


def check_name(name: Any, what: str = "attribute name") -> str:
    if not isinstance(name, str) or not name or _FORBIDDEN_NAME.search(name):
        raise BadRequestData(f"invalid {what} {name!r}")
    return name


def check_datetime(value: Any, what: str) -> str:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if "T" in value and parsed.tzinfo is not None:
                return value
    raise BadRequestData(f"{what} must be an ISO 8601 date-time with time zone, got {value!r}")


def check_scope(raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if not isinstance(item, str) or not _SCOPE_RE.match(item):
            raise BadRequestData(f"invalid scope {item!r}: scopes look like /Region/City")
    return [str(i) for i in items]


def infer_type(raw: dict[str, Any]) -> str | None:
    for key, kind in VALUE_KEYS.items():
        if key in raw:
            if kind == "Property" and looks_like_geometry(raw["value"]):
                return "GeoProperty"
            return kind
    return None


def is_instance_list(raw: list[Any]) -> bool:
    return bool(raw) and all(
        isinstance(item, dict) and ("type" in item or infer_type(item) is not None) for item in raw
    )


def linked_ids(ent: Entity) -> list[str]:
    """Ids of the entities this entity's Relationships point at."""
    out: list[str] = []
    for iri, instances in ent.items():
        if iri in ENTITY_KEYS:
            continue
        for inst in instances:
            if inst.get("type") == "Relationship":
                obj = inst.get("object")
                for target in obj if isinstance(obj, list) else [obj]:
                    if isinstance(target, str) and target not in out:
                        out.append(target)
    return out


def pick_language(language_map: dict[str, Any], wanted: str) -> tuple[str, Any]:
    """Choose a language from a languageMap by an Accept-Language-like ``lang`` value."""
    prefs: list[tuple[float, str]] = []
    for part in wanted.split(","):
        bits = part.strip().split(";")
        tag = bits[0].strip()
        q = 1.0
        for b in bits[1:]:
            b = b.strip()
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if tag:
            prefs.append((q, tag))
    prefs.sort(key=lambda p: -p[0])
    for _, tag in prefs:
        if tag == "*":
            break
        if tag in language_map:
            return tag, language_map[tag]
        for have in language_map:
            if have.split("-")[0].lower() == tag.split("-")[0].lower():
                return have, language_map[have]
    if "@none" in language_map:
        return "@none", language_map["@none"]
    first = next(iter(language_map))
    return first, language_map[first]
