"""The ``Prefer`` request header (IETF RFC 7240) on entity answers.

* ``Prefer: body=json`` on a GeoJSON answer: the ``@context`` goes in a ``Link`` header
  rather than in the FeatureCollection or Feature (clause 6.3.6); ``body=ld+json`` or
  no preference keeps it in the body.
* ``Prefer: ngsi-ld=<major.minor>``: a client "may wish to indicate that it is only
  capable of interpreting responses which conform to a specific NGSI-LD specification,
  in which case the Context Source shall endeavour to amend its payload accordingly"
  (clause 4.3.6.8). Attribute types introduced after that version are given in the
  form that version knows (Table 4.3.6.8-1): a LanguageProperty (1.4) becomes a
  Property whose value is its languageMap; a JsonProperty, VocabProperty or
  ListProperty (1.8) a Property of its json, vocab or valueList; a ListRelationship
  (1.8) a Relationship of its objectList. Members a version lacks are dropped:
  ``scope`` (1.4), ``objectType`` (1.8), ``expiresAt`` (1.9), and several types become
  the first (1.3). The answer says ``Preference-Applied: ngsi-ld=<version>`` and is
  203 Non-Authoritative Information when the payload was changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request

#: The version of the specification this hub answers in.
NATIVE: Final = (1, 8)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")

#: Members of an attribute instance that are not sub-attributes.
_MEMBERS: Final = frozenset(
    {
        "type",
        "value",
        "object",
        "languageMap",
        "json",
        "vocab",
        "valueList",
        "objectList",
        "datasetId",
        "observedAt",
        "unitCode",
        "objectType",
        "createdAt",
        "modifiedAt",
        "deletedAt",
        "instanceId",
        "lang",
        "expiresAt",
        "entity",
    }
)
_ENTITY_MEMBERS: Final = frozenset(
    {"id", "type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt", "expiresAt"}
)


@dataclass(frozen=True)
class Preferences:
    """What a request's ``Prefer`` headers ask for."""

    body_json: bool = False
    version: tuple[int, int] | None = None

    @property
    def applied(self) -> str | None:
        """The ``Preference-Applied`` value for the version preference, if any."""
        if self.version is None:
            return None
        major, minor = min(self.version, NATIVE)
        return f"ngsi-ld={major}.{minor}"


def preferences(request: Request) -> Preferences:
    """The preferences of every ``Prefer`` line (a list-type header: lines add up)."""
    body_json = False
    version: tuple[int, int] | None = None
    for line in request.headers.getlist("prefer"):
        for item in line.split(","):
            token = item.split(";", 1)[0].strip()
            name, _, value = token.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "body":
                body_json = value.lower() == "json"
            elif name == "ngsi-ld":
                found = _VERSION.fullmatch(value)
                if found:
                    version = (int(found.group(1)), int(found.group(2)))
    return Preferences(body_json=body_json, version=version)


def amend(payload: Any, version: tuple[int, int]) -> bool:
    """Amend rendered entities (one, a list, or GeoJSON) for ``version``, in place;
    whether anything changed."""
    if version >= NATIVE:
        return False
    if isinstance(payload, list):
        return any([amend(item, version) for item in payload])
    if not isinstance(payload, dict):
        return False
    if payload.get("type") == "FeatureCollection":
        return amend(payload.get("features", []), version)
    if payload.get("type") == "Feature":
        props = payload.get("properties")
        return isinstance(props, dict) and _entity(props, version)
    return _entity(payload, version)


def _entity(ent: dict[str, Any], version: tuple[int, int]) -> bool:
    changed = False
    if version < (1, 9) and ent.pop("expiresAt", None) is not None:
        changed = True
    if version < (1, 4) and ent.pop("scope", None) is not None:
        changed = True
    if version < (1, 3) and isinstance(ent.get("type"), list) and ent["type"]:
        ent["type"] = ent["type"][0]
        changed = True
    for key, value in ent.items():
        if key not in _ENTITY_MEMBERS:
            changed = _attribute(value, version) or changed
    return changed


def _attribute(value: Any, version: tuple[int, int]) -> bool:
    if isinstance(value, list):
        return any([_attribute(item, version) for item in value])
    if not isinstance(value, dict):
        return False
    changed = False
    kind = value.get("type")
    if version < (1, 4) and (
        kind == "LanguageProperty" or (kind is None and "languageMap" in value)
    ):
        changed = _retype(value, "Property", "languageMap", "value")
    elif version < (1, 8):
        for member, new_kind, new_member in (
            ("json", "Property", "value"),
            ("vocab", "Property", "value"),
            ("valueList", "Property", "value"),
            ("objectList", "Relationship", "object"),
        ):
            if member in value:
                changed = _retype(value, new_kind, member, new_member)
                break
    if version < (1, 8) and value.pop("objectType", None) is not None:
        changed = True
    if version < (1, 9) and value.pop("expiresAt", None) is not None:
        changed = True
    for key, sub in value.items():
        if key not in _MEMBERS:
            changed = _attribute(sub, version) or changed
    return changed


def _retype(inst: dict[str, Any], kind: str, member: str, new_member: str) -> bool:
    inst["type"] = kind
    inst[new_member] = inst.pop(member)
    return True
