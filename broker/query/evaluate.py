"""The reference evaluator: whether one entity (internal form) matches a query.

This is plain, brute-force Python on purpose. The SQL and MongoDB backends translate
the same AST into their own query languages and are property-tested against these
functions, so every rule below is the contract they implement; when a backend and
this module disagree, this module is right (or the rule is changed here first).

Paths are expected resolved (``resolve_q``): attribute and sub-attribute names are
expanded IRIs, as the entity's keys are.

**Values compared.** For each instance of the attribute (several with datasetIds:
any instance may match), the value is the member its type names:

* Property, GeoProperty: ``value``; Relationship: ``object``;
* LanguageProperty: every string of ``languageMap`` (``attr[ja]`` picks a language);
* VocabProperty: ``vocab`` (expanded IRIs); JsonProperty: ``json``;
* ListProperty: ``valueList``; ListRelationship: the ``object`` of each item.

An instance without ``type`` counts as a Property. ``attr.sub`` compares the
sub-attribute's value the same way; ``attr.observedAt`` (and the other meta members)
compares that member of the instance. ``attr[k1][k2]`` walks keys of JSON object
values. A list met on the way (a list value, a list under a key) stands for each of
its elements, one level deep: the query holds when it holds for any element.

**Comparisons** are between the literal and each candidate value, and hold when any
candidate satisfies them:

* numbers compare with numbers (never booleans), strings with strings; a URI literal
  is a string that only takes ``==``/``!=``; booleans only equal booleans;
* ``DateTime``/``Date``/``Time`` literals compare with strings in the same ISO form
  (``DATETIME_RE``/``DATE_RE``/``TIME_RE`` of ``broker.model.query``), both sides
  normalised to UTC (no offset means UTC); other strings are not comparable;
* a candidate of another type is not comparable, and an incomparable pair satisfies
  no operator: ``!=`` holds only for comparable, different values. So an absent
  attribute, or a value of the wrong type, matches neither ``==`` nor ``!=``;
* ranges include both ends; ``==`` a list holds when the candidate equals a comparable
  element, ``!=`` a list when it is comparable with some element and equals none;
* ``~=`` is a regular-expression search (RE2, ``broker.query.patterns``) on string candidates; ``!~=`` holds for string candidates
  the pattern does not find; neither holds for other types.

``attr`` holds when the path leads somewhere (the attribute, sub-attribute, member or
key is present, whatever its value); ``!attr`` when it does not.

**Geo-queries** use the entity's geometry: the ``value`` of the first GeoProperty
instance of the (expanded) ``geoproperty`` attribute; no geometry, no match. The
relations are the shapely predicates in lon/lat degrees, with the entity's geometry
as subject (``within``: the entity's geometry lies within the query geometry).
``near`` takes the great-circle distance from the query geometry to the entity's:
between points, the haversine distance on a sphere of radius 6,371,008.8 m; for
other geometries, the haversine distance between the nearest points found in
lon/lat degrees (an approximation the backends may improve on only within a
tolerance). ``maxDistance`` needs distance <= d, ``minDistance`` distance >= d.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Final

from shapely.geometry import shape
from shapely.ops import nearest_points

from broker.model.entity import ATTRIBUTE_TYPES, Entity
from broker.model.geo import looks_like_geometry
from broker.model.query import (
    EQUALITY_OPS,
    PATTERN_OPS,
    URI,
    And,
    AttrPath,
    Comparison,
    Date,
    DateTime,
    Exists,
    GeoQuery,
    Node,
    Range,
    Scalar,
    ScopeQuery,
    Time,
    parse_date,
    parse_datetime,
    parse_time,
)
from broker.query.patterns import search
from broker.query.scopeq import scope_matches

#: Mean earth radius (IUGG), in metres.
EARTH_RADIUS_M: Final = 6_371_008.8


# -- q --------------------------------------------------------------------------------------


def _instances(raw: Any) -> list[dict[str, Any]]:
    items = raw if isinstance(raw, list) else [raw]
    return [i for i in items if isinstance(i, dict)]


def _elements(values: list[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from value
        else:
            yield value


def _instance_value(inst: dict[str, Any], keyed: bool) -> list[Any]:
    """The raw value(s) of an instance; a languageMap is one value when keys follow."""
    kind = inst.get("type", "Property")
    key = ATTRIBUTE_TYPES.get(kind, "value")
    if key not in inst:
        return []
    value = inst[key]
    if kind == "LanguageProperty" and isinstance(value, dict) and not keyed:
        return list(value.values())
    if kind == "ListRelationship" and isinstance(value, list):
        return [[item.get("object") if isinstance(item, dict) else item for item in value]]
    return [value]


def _reached(path: AttrPath, entity: Entity) -> list[Any]:
    """What the path leads to in the entity, before lists are spread into elements."""
    instances = _instances(entity.get(path.attr))
    for name in path.sub_attributes:
        instances = [s for inst in instances for s in _instances(inst.get(name))]
    if path.meta is not None:
        return [inst[path.meta] for inst in instances if path.meta in inst]
    if not path.json:
        return [v for inst in instances for v in _instance_value(inst, keyed=False)]
    values = [v for inst in instances for v in _instance_value(inst, keyed=True)]
    for key in path.json:
        values = [c[key] for c in _elements(values) if isinstance(c, dict) and key in c]
    return values


def path_exists(path: AttrPath, entity: Entity) -> bool:
    """Whether the path leads anywhere: attribute, sub-attribute, member or key present."""
    if not path.sub and not path.json:
        return bool(_instances(entity.get(path.attr)))
    if not path.json and path.meta is None:
        instances = _instances(entity.get(path.attr))
        for name in path.sub_attributes:
            instances = [s for inst in instances for s in _instances(inst.get(name))]
        return bool(instances)
    return bool(_reached(path, entity))


#: Public names for the index builder (``broker.store.index``), which walks entities
#: with the same rules.
dicts = _instances
elements = _elements
instance_values = _instance_value


def candidates(path: AttrPath, entity: Entity) -> list[Any]:
    """The values a comparison on ``path`` is tried against (lists spread one level)."""
    return list(_elements(_reached(path, entity)))


def _keys(literal: Scalar, candidate: Any) -> tuple[Any, Any] | None:
    """The pair to compare for a literal and a candidate, or None when incomparable."""
    if isinstance(literal, bool):
        return (literal, candidate) if isinstance(candidate, bool) else None
    if isinstance(literal, int | float):
        if isinstance(candidate, bool) or not isinstance(candidate, int | float):
            return None
        return literal, candidate
    if not isinstance(candidate, str):
        return None
    if isinstance(literal, str):
        return literal, candidate
    if isinstance(literal, URI):
        return literal.text, candidate
    parsed: Any
    if isinstance(literal, DateTime):
        parsed = parse_datetime(candidate)
        return None if parsed is None else (literal.instant, parsed)
    if isinstance(literal, Date):
        parsed = parse_date(candidate)
        return None if parsed is None else (literal.day, parsed)
    if isinstance(literal, Time):
        parsed = parse_time(candidate)
        return None if parsed is None else (literal.utc_us, parsed)
    return None


def _equal(literal: Scalar, candidate: Any) -> bool | None:
    pair = _keys(literal, candidate)
    return None if pair is None else bool(pair[0] == pair[1])


def _satisfies(node: Comparison, candidate: Any) -> bool:
    op, value = node.op, node.value
    if op in PATTERN_OPS:
        if not isinstance(candidate, str) or not isinstance(value, str):
            return False
        found = search(value, candidate)
        return found if op == "~=" else not found
    if isinstance(value, tuple):
        results = [r for r in (_equal(v, candidate) for v in value) if r is not None]
        if not results:
            return False
        return any(results) if op == "==" else not any(results)
    if isinstance(value, Range):
        low, high = _keys(value.low, candidate), _keys(value.high, candidate)
        if low is None or high is None:
            return False
        inside = bool(low[0] <= low[1]) and bool(high[1] <= high[0])
        return inside if op == "==" else not inside
    pair = _keys(value, candidate)
    if pair is None:
        return False
    lit, cand = pair
    if op in EQUALITY_OPS:
        return bool(cand == lit) if op == "==" else bool(cand != lit)
    if op == ">":
        return bool(cand > lit)
    if op == ">=":
        return bool(cand >= lit)
    if op == "<":
        return bool(cand < lit)
    return bool(cand <= lit)


def matches_q(node: Node, entity: Entity) -> bool:
    """Whether the entity matches the (resolved) ``q`` query; see the module rules."""
    if isinstance(node, And):
        return all(matches_q(item, entity) for item in node.items)
    if isinstance(node, Exists):
        return path_exists(node.path, entity) != node.negated
    if isinstance(node, Comparison):
        return any(_satisfies(node, c) for c in candidates(node.path, entity))
    return any(matches_q(item, entity) for item in node.items)


# -- scopeQ ---------------------------------------------------------------------------------


def matches_scope(node: ScopeQuery, entity: Entity) -> bool:
    """Whether the entity's ``scope`` matches; an entity without scope matches nothing."""
    scopes = entity.get("scope") or []
    return scope_matches(node, [scopes] if isinstance(scopes, str) else list(scopes))


# -- geo ------------------------------------------------------------------------------------


def entity_geometry(entity: Entity, geoproperty: str) -> dict[str, Any] | None:
    """The value of the first GeoProperty instance of ``geoproperty`` (an expanded IRI)."""
    for inst in _instances(entity.get(geoproperty)):
        if inst.get("type") == "GeoProperty":
            value = inst.get("value")
            return value if looks_like_geometry(value) else None
    return None


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two lon/lat positions (degrees)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def distance_m(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Reference distance between two GeoJSON geometries: haversine of the nearest points."""
    pa, pb = nearest_points(shape(a), shape(b))
    return haversine_m(float(pa.x), float(pa.y), float(pb.x), float(pb.y))


def matches_geo(geo: GeoQuery, entity: Entity) -> bool:
    """Whether the entity's geometry (``geo.geoproperty``, expanded) satisfies the query."""
    geometry = entity_geometry(entity, geo.geoproperty)
    if geometry is None:
        return False
    try:
        if geo.georel == "near":
            d = distance_m(geo.geometry, geometry)
            return (geo.max_distance is None or d <= geo.max_distance) and (
                geo.min_distance is None or d >= geo.min_distance
            )
        subject, other = shape(geometry), shape(geo.geometry)
        return bool(getattr(subject, geo.georel)(other))
    except (ValueError, TypeError, AttributeError):
        # A stored geometry shapely cannot use (empty, degenerate) matches nothing.
        return False
