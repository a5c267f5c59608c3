"""Payload -> NGSI-LD attributes, typed per the device's attribute mappings.

A measure is a JSON object of ``object_id -> value`` (an array of such objects is
several measures in order). Mapped attributes are converted to their declared type;
unmapped ones pass through with their JSON type unless the device has
``explicitAttrs``. The measure's ``TimeInstant`` (or arrival time) becomes
``observedAt`` of every attribute it carries; with ``timestamp: true`` on the device
or its group, the entity also gets a ``TimeInstant`` DateTime property holding that
time, as iotagent-node-lib does for NGSI-LD.

Conversion problems are reported, not raised through: one bad value costs only that
attribute, and the caller counts it per reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.mqtt.expressions import ExpressionError
from connectors.mqtt.models import AttributeMapping, StaticAttribute
from connectors.mqtt.ngsiv2 import V2_TYPE
from connectors.mqtt.registry import Resolved, entity_id_for, expression_name

TIMESTAMP_KEYS = ("TimeInstant", "timeInstant", "observedAt")
TIME_INSTANT = "TimeInstant"
_NUMBER = {"number", "float", "double", "decimal"}
_INTEGER = {"integer", "int", "long"}
_BOOLEAN = {"boolean", "bool"}
_TEXT = {"text", "string"}
_DATETIME = {"datetime", "iso8601", "date-time"}
_JSON = {"json", "jsonproperty", "structuredvalue", "object", "array"}
_RELATIONSHIP = {"relationship"}
_GEO_PREFIX = "geo:"
_GEO_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}


class BadValue(ValueError):
    """A value that cannot become the mapped type; ``reason`` names the counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Measure:
    """One measure of one device: attributes ready for an NGSI-LD write."""

    attrs: dict[str, dict[str, Any]]
    observed: float  # epoch seconds
    problems: list[BadValue]
    #: attributes mapped to other entities (``entity_name``/``entity_type`` of a mapping)
    targets: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: the entity id ``entityNameExp`` gave for this measure (None: the device's own)
    entity_id: str | None = None
    #: attribute names ``explicitAttrs`` allows, when its expression gives a list
    allowed: frozenset[str] | None = None


def iso(epoch: float) -> str:
    """``epoch`` in UTC with milliseconds (``2025-04-01T09:30:00.123Z``).

    Called for every measure, and a burst of measures shares its second: the date and
    time of day are cached per second. Microseconds are rounded as ``datetime`` does.
    """
    frac, whole = math.modf(epoch)
    carry, micros = divmod(round(frac * 1e6), 1_000_000)
    return f"{_second(int(whole) + carry)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=16)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat()


def time_instant(epoch: float) -> dict[str, Any]:
    """The entity's ``TimeInstant`` attribute (``timestamp: true``) for a measure time;
    its ``observedAt`` lets the newest measure's time win, whatever the arrival order."""
    stamp = iso(epoch)
    return {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": stamp},
        "observedAt": stamp,
    }


def parse_time(value: Any) -> float:
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    raise BadValue("invalid_timestamp", f"timestamp {value!r} is not an ISO 8601 date-time")


def _number(value: Any, integer: bool) -> float | int:
    if isinstance(value, bool):
        raise BadValue("invalid_value", f"{value!r} is not a number")
    if isinstance(value, int | float):
        number: float | int = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise BadValue("invalid_value", f"{value!r} is not a number") from None
    else:
        raise BadValue("invalid_value", f"{value!r} is not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise BadValue("invalid_value", f"{value!r} is not a finite number")
    if integer:
        if number != int(number):
            raise BadValue("invalid_value", f"{value!r} is not an integer")
        return int(number)
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise BadValue("invalid_value", f"{value!r} is not a boolean")


def _geometry(value: Any) -> dict[str, Any]:
    """GeoJSON geometry, or a ``"lat,lon"`` string (the IoT Agent convention) as a Point."""
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) == 2:
            try:
                lat, lon = float(parts[0]), float(parts[1])
            except ValueError:
                pass
            else:
                if -90 <= lat <= 90 and -180 <= lon <= 180:
                    return {"type": "Point", "coordinates": [lon, lat]}
        raise BadValue("invalid_value", f"{value!r} is not a 'lat,lon' position")
    if (
        isinstance(value, dict)
        and value.get("type") in _GEO_TYPES
        and isinstance(value.get("coordinates"), list)
    ):
        return value
    raise BadValue("invalid_value", f"{value!r} is not a GeoJSON geometry")


def attribute(type_name: str, value: Any, observed: str | None) -> dict[str, Any]:
    """One NGSI-LD attribute for ``value`` declared as ``type_name`` (IoT Agent names)."""
    kind = type_name.strip().lower()
    attr: dict[str, Any]
    if kind.startswith(_GEO_PREFIX) or kind == "geoproperty":
        attr = {"type": "GeoProperty", "value": _geometry(value)}
    elif kind in _RELATIONSHIP:
        if not isinstance(value, str) or ":" not in value:
            raise BadValue("invalid_value", f"{value!r} is not a URI to relate to")
        attr = {"type": "Relationship", "object": value}
    elif kind in _NUMBER:
        attr = {"type": "Property", "value": _number(value, integer=False)}
    elif kind in _INTEGER:
        attr = {"type": "Property", "value": _number(value, integer=True)}
    elif kind in _BOOLEAN:
        attr = {"type": "Property", "value": _boolean(value)}
    elif kind in _TEXT:
        if isinstance(value, dict | list) or value is None:
            raise BadValue("invalid_value", f"{value!r} is not text")
        attr = {"type": "Property", "value": value if isinstance(value, str) else str(value)}
    elif kind in _DATETIME:
        attr = {
            "type": "Property",
            "value": {"@type": "DateTime", "@value": iso(parse_time(value))},
        }
    elif kind in _JSON:
        attr = {"type": "JsonProperty", "json": value}
    else:  # "Property" or a type the agent does not know: the JSON value as it came
        if value is None:
            raise BadValue("invalid_value", "null is not a value")
        attr = {"type": "Property", "value": value}
    if observed is not None:
        attr["observedAt"] = observed
    return attr


def _declared(attr: dict[str, Any], type_name: str, device: Resolved) -> dict[str, Any]:
    """In NGSI v2 mode, the attribute keeps the type it was provisioned with (``Text``
    for a measure nobody provisioned, as iotagent-json sends it)."""
    if device.ngsi_v2:
        attr[V2_TYPE] = type_name
    return attr


def _with_metadata(attr: dict[str, Any], mapping: AttributeMapping | StaticAttribute) -> None:
    unit = (mapping.metadata or {}).get("unitCode")
    if isinstance(unit, dict):
        unit = unit.get("value")
    if isinstance(unit, str) and attr["type"] == "Property":
        attr["unitCode"] = unit


def lazy_attribute(mapping: AttributeMapping, value: Any, observed: str) -> dict[str, Any]:
    """A lazy attribute's value as the agent serves it (raises BadValue)."""
    attr = attribute(mapping.type, value, observed)
    _with_metadata(attr, mapping)
    return attr


def static_attributes(device: Resolved) -> dict[str, dict[str, Any]]:
    out = {}
    for s in device.static:
        try:
            out[s.name] = _declared(attribute(s.type, s.value, None), s.type, device)
        except BadValue:
            continue  # refused at provisioning time already; never block measures
        _with_metadata(out[s.name], s)
    return out


def measures(payload: Any) -> Iterator[dict[str, Any]]:
    """The measure objects of a payload, in order; raises BadValue if it is neither."""
    if isinstance(payload, dict):
        yield payload
    elif isinstance(payload, list) and payload and all(isinstance(m, dict) for m in payload):
        yield from payload
    else:
        raise BadValue("invalid_payload", "a measure must be a JSON object or an array of them")


def _place(
    device: Resolved,
    mapping: AttributeMapping | None,
    name: str,
    attr: dict[str, Any],
    attrs: dict[str, dict[str, Any]],
    targets: dict[tuple[str, str], dict[str, dict[str, Any]]],
) -> None:
    if mapping is not None and mapping.entity_name:  # multi-entity: another entity's value
        etype = mapping.entity_type or device.entity_type
        eid = entity_id_for(mapping.entity_name, etype, device.ngsi_v2)
        targets.setdefault((eid, etype), {})[name] = attr
    else:
        attrs[name] = attr


def _evaluate(
    device: Resolved,
    measure: dict[str, Any],
    attrs: dict[str, dict[str, Any]],
    targets: dict[tuple[str, str], dict[str, dict[str, Any]]],
    stamp: str,
    problems: list[BadValue],
) -> dict[str, Any]:
    """Run the device's attribute expressions in provisioning order; each sees the
    measure, the device and the results before it. Returns the final context."""
    context = device.context()
    context.update(measure)
    present = set(measure)  # what this measure brings: its keys, their names, results
    for key, mapping in device.mappings.items():
        if key in measure:
            present.add(mapping.name)
            context.setdefault(mapping.name, measure[key])
    for mapping, expression in device.computed:
        if mapping.key not in present and not (expression.names & present):
            continue  # none of its inputs is in this measure
        try:
            value = expression.evaluate(context)
        except ExpressionError as exc:
            problems.append(BadValue("expression_error", f"{mapping.name}: {exc}"))
            continue
        if value is None or value == mapping.skipValue:
            continue
        context[mapping.name] = value
        present.add(mapping.name)
        try:
            attr = _declared(attribute(mapping.type, value, stamp), mapping.type, device)
        except BadValue as exc:
            problems.append(BadValue(exc.reason, f"{mapping.name}: {exc}"))
            continue
        _with_metadata(attr, mapping)
        _place(device, mapping, mapping.name, attr, attrs, targets)
    return context


def _explicit(
    device: Resolved, context: dict[str, Any], problems: list[BadValue]
) -> tuple[bool, frozenset[str] | None]:
    """``explicitAttrs`` for this measure: (only provisioned attributes, or the names
    allowed when the expression gives a list)."""
    if device.explicit_exp is None:
        return device.explicit, None
    try:
        value = device.explicit_exp.evaluate(context)
    except ExpressionError as exc:
        problems.append(BadValue("expression_error", f"explicitAttrs: {exc}"))
        return True, None  # the safe reading: send only what is provisioned
    if isinstance(value, bool):
        return value, None
    if isinstance(value, list):
        names: set[str] = set()
        for item in value:
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, dict) and isinstance(item.get("object_id"), str):
                mapping = device.mappings.get(item["object_id"])
                if mapping is not None:
                    names.add(mapping.name)
        return True, frozenset(names)
    problems.append(
        BadValue("expression_error", f"explicitAttrs gave {value!r}, not a boolean or a list")
    )
    return True, None


def convert(device: Resolved, measure: dict[str, Any], arrival: float) -> Measure:
    problems: list[BadValue] = []
    observed = arrival
    for key in TIMESTAMP_KEYS:
        if key in measure and key not in device.mappings:
            try:
                observed = parse_time(measure[key])
            except BadValue as exc:
                problems.append(exc)
                return Measure({}, arrival, problems)
            break
    stamp = iso(observed)
    attrs: dict[str, dict[str, Any]] = {}
    targets: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    expressive = device.computed or device.explicit_exp or device.name_exp
    context = _evaluate(device, measure, attrs, targets, stamp, problems) if expressive else {}
    explicit, allowed = (
        _explicit(device, context, problems)
        if expressive
        else (
            device.explicit,
            None,
        )
    )
    for key, value in measure.items():
        mapping = device.mappings.get(key)
        if mapping is None:
            if key in TIMESTAMP_KEYS or (explicit and key not in device.names):
                continue
            name, type_name = key, "geo:json" if key == "location" else "Property"
            if device.ngsi_v2:  # passed on as it came, typed Text (iotagent-json's default)
                type_name = "Property"
        elif mapping.expression is not None:
            continue  # its value is the expression's, sent above
        else:
            name, type_name = mapping.name, mapping.type
        if name in attrs:
            continue  # an expression gave this attribute its value
        try:
            attr = attribute(type_name, value, stamp)
            if device.ngsi_v2:
                _declared(attr, mapping.type if mapping is not None else "Text", device)
        except BadValue as exc:
            problems.append(BadValue(exc.reason, f"{key}: {exc}"))
            continue
        if mapping is not None:
            _with_metadata(attr, mapping)
        _place(device, mapping, name, attr, attrs, targets)
    if allowed is not None:
        attrs = {k: v for k, v in attrs.items() if k in allowed}
        targets = {
            t: kept
            for t, part in targets.items()
            if (kept := {k: v for k, v in part.items() if k in allowed})
        }
    entity_id = None
    if device.name_exp is not None:
        try:
            name = device.name_exp.evaluate(context)
        except ExpressionError as exc:
            problems.append(BadValue("expression_error", f"entityNameExp: {exc}"))
        else:
            if (named := expression_name(name)) is not None:
                entity_id = entity_id_for(named, device.entity_type, device.ngsi_v2)
            else:
                problems.append(
                    BadValue("expression_error", f"entityNameExp gave {name!r}, not a name")
                )
    if device.timestamp:
        for part in (attrs, *targets.values()):
            if part and TIME_INSTANT not in part:
                part[TIME_INSTANT] = time_instant(observed)
    return Measure(attrs, observed, problems, targets, entity_id, allowed)
