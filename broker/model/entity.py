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
import time
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

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
ENTITY_KEYS = frozenset(
    {"id", "type", "scope", "@context", "@id", "@type", "expiresAt", *SYSTEM_KEYS}
)
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


_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Characters that show as nothing (or as a blank) yet are letters or marks: Hangul
#: fillers, the combining grapheme joiner, Khmer inherent vowels, the braille blank.
_INVISIBLE = frozenset({0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0})
#: Control, format (bidi controls, zero-width characters, BOM ...), surrogate, and line
#: and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _refused(ch: str) -> bool:
    cp = ord(ch)
    return (
        unicodedata.category(ch) in _REFUSED_CATEGORIES
        or 0xFDD0 <= cp <= 0xFDEF  # noncharacters
        or (cp & 0xFFFE) == 0xFFFE
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF
        or 0x180B <= cp <= 0x180F  # Mongolian free variation selectors
        or cp in _INVISIBLE
    )


def check_characters(text: str, what: str) -> None:
    """Refuse (400) an id or name holding a character that is invisible or changes how
    the text around it reads: a name that looks like another is a spoofing tool, and
    control characters break logs, headers and files. Japanese text passes.
    """
    if text.isascii():
        found = _ASCII_CONTROL.search(text)
        at = found.start() if found else -1
    else:
        at = next((i for i, ch in enumerate(text) if _refused(ch)), -1)
    if at >= 0:
        ch = text[at]
        label = unicodedata.name(ch, "") or unicodedata.category(ch)
        raise BadRequestData(
            f"{what} contains U+{ord(ch):04X} ({label}) at position {at + 1}: control, format "
            "(bidi, zero-width, BOM), noncharacter, variation selector and invisible filler "
            "characters are not allowed"
        )


def check_entity_id(value: Any, what: str = "entity id") -> str:
    if isinstance(value, str):
        check_characters(value, what)
    if not is_uri(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}")
    return str(value)


#: Names that passed :func:`check_name` (the same few names recur in every entity of a
#: batch); bounded, so that a stream of distinct names cannot grow it.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 65_536


def check_name(name: Any, what: str = "attribute name") -> str:
    if type(name) is str and name in _GOOD_NAMES:
        return name
    if isinstance(name, str):
        check_characters(name, what)
    if not isinstance(name, str) or not name or _FORBIDDEN_NAME.search(name):
        raise BadRequestData(f"invalid {what} {name!r}")
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return name


def id_segment(value: str) -> str:
    """An id as one URL path segment (RFC 3986 pchar): non-ASCII characters (RFC 3987
    section 3.1) and ``%``, ``/``, ``?`` and ``#`` percent-encoded, so that the server's
    single decoding of the path gives the id back exactly."""
    return quote(value, safe="!$&'()*+,;=:@")


def iri_to_uri(value: str) -> str:
    """An IRI as a URI (RFC 3987 section 3.1), for headers that must be ASCII: characters
    outside URIs percent-encoded as UTF-8, all else (``%XX`` included) kept."""
    return quote(value, safe=_URI_SAFE) if _NOT_URI.search(value) else value


_URI_SAFE = ":/?#[]@!$&'()*+,;=%"
_NOT_URI = re.compile(r"[^\x21-\x7e]|[<>\"{}|\\^`]")


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


def expires_us(ent: Mapping[str, Any]) -> int | None:
    """When a transient entity expires (its ``expiresAt``, in µs since the epoch), or None."""
    at = ent.get("expiresAt")
    if not isinstance(at, str):
        return None
    moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def now_us() -> int:
    return int(time.time() * 1_000_000)


def live(ent: Entity | None, now: int | None = None) -> Entity | None:
    """``ent`` unless it is a transient entity whose ``expiresAt`` has passed (clause
    4.22 of v1.8.1): an expired entity is gone for every read and write, even before
    the background purge removes it."""
    if ent is None:
        return None
    at = expires_us(ent)
    if at is not None and at <= (now_us() if now is None else now):
        return None
    return ent
