"""The agent's NGSI v2 mode (``--ngsi v2``, iotagent-json's ``IOTA_CB_NGSI_VERSION=v2``):
measures written as the v2 entities iotagent-node-lib writes, through ``/v2/op/update``.

Deployments that grew up on Orion and NGSI v2 keep their entity shapes: an entity id
``{entity_type}:{device_id}`` when the device names none, attributes typed as provisioned
(``Number``, ``Float``, ``geo:point`` ...; ``Text`` for measures nobody provisioned, as
iotagent-json types them), ``unitCode`` metadata, and with ``timestamp`` a ``TimeInstant``
attribute plus ``TimeInstant`` metadata on every attribute of the measure.

The window the batcher hands over holds, per entity, each attribute's instances in
arrival order (see ``northbound``). Here they become v2 entities, one per measure (the
instances sharing an ``observedAt``; attributes without one go with the first), ordered by
``TimeInstant`` as iotagent-node-lib orders a multi-measure, and are sent with
``actionType: append`` per service path (``Fiware-ServicePath``), so each measure is its
own update, its own history entry and its own notification.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

#: Key of an attribute (as the mapping produced it) naming its v2 type, in v2 mode only.
V2_TYPE: Final = "v2type"
TIME_INSTANT: Final = "TimeInstant"
#: Entities in one ``/v2/op/update`` request at most (the broker's default batch limit).
MAX_ENTITIES: Final = 1000


def _format(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def attribute(inst: dict[str, Any]) -> dict[str, Any]:
    """One attribute instance of the agent's (NGSI-LD shaped) pipeline as a v2 attribute."""
    declared = inst.get(V2_TYPE)
    kind = inst.get("type")
    out: dict[str, Any]
    if kind == "GeoProperty":
        geom = inst["value"]
        if (
            isinstance(declared, str)
            and declared.lower() == "geo:point"
            and geom.get("type") == "Point"
        ):
            lon, lat = geom["coordinates"][:2]
            out = {"type": "geo:point", "value": f"{_format(lat)}, {_format(lon)}"}
        else:
            out = {"type": "geo:json", "value": geom}
    elif kind == "Relationship":
        out = {"type": declared or "Relationship", "value": inst.get("object")}
    elif kind == "JsonProperty":
        out = {"type": declared or "StructuredValue", "value": inst.get("json")}
    else:
        value = inst.get("value")
        if isinstance(value, dict) and value.get("@type") == "DateTime" and "@value" in value:
            out = {"type": declared or "DateTime", "value": value["@value"]}
        else:
            out = {"type": declared or "Text", "value": value}
    metadata: dict[str, Any] = {}
    if isinstance(inst.get("unitCode"), str):
        metadata["unitCode"] = {"type": "Text", "value": inst["unitCode"]}
    if metadata:
        out["metadata"] = metadata
    return out


def _measures(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One v2 entity per measure of a window's entity, in time order."""
    by_time: dict[str, dict[str, dict[str, Any]]] = {}
    untimed: dict[str, dict[str, Any]] = {}
    for name, instances in body.items():
        if name in ("id", "type", "scope"):
            continue
        for inst in instances:
            stamp = inst.get("observedAt")
            (by_time.setdefault(stamp, {}) if stamp else untimed)[name] = inst
    stamps: list[str | None] = [*sorted(by_time)] or [None]
    for i, stamp in enumerate(stamps):
        attrs = {**(untimed if i == 0 else {}), **(by_time.get(stamp, {}) if stamp else {})}
        entity: dict[str, Any] = {"id": body["id"], "type": body["type"]}
        for name, inst in attrs.items():
            entity[name] = attribute(inst)
        instant = entity.get(TIME_INSTANT)
        if instant is not None:
            meta = {"type": "DateTime", "value": instant["value"]}
            for name, attr in entity.items():
                if name not in ("id", "type", TIME_INSTANT):
                    attr.setdefault("metadata", {})[TIME_INSTANT] = meta
        if len(entity) > 2:
            yield entity


def requests(bodies: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(service path, v2 entities)`` of each ``/v2/op/update`` a window's entities
    (``northbound`` bodies of one tenant) are written with, in order."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        path = body.get("scope") or "/"
        by_path.setdefault(path, []).extend(_measures(body))
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for path, entities in by_path.items():
        if all(TIME_INSTANT in e for e in entities):
            entities.sort(key=lambda e: str(e[TIME_INSTANT]["value"]))
        for start in range(0, len(entities), MAX_ENTITIES):
            out.append((path, entities[start : start + MAX_ENTITIES]))
    return out
