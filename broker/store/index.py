"""The index rows of an entity, which both store backends keep and query.

Every comparable value an entity holds is a row, keyed by a path string (attribute
IRI, sub-attribute or meta member, JSON keys). The rows are by definition the
reference evaluator's own ``candidates`` for every path the entity has
(``value_rows_reference``), so a comparison over them answers exactly what
``broker.query.evaluate`` answers; a backend computes them in one walk of the entity
(``value_rows``), and property tests hold the three together. A path that exists but
holds nothing comparable gets one presence row, so ``attr``/``!attr`` are row
look-ups too. SQLite keeps them in ``attr_values`` (``broker.store.sqlindex``),
MongoDB as ``vals`` subdocuments (``broker.store.mongoquery``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from shapely.geometry import shape

from broker.model.entity import ATTRIBUTE_TYPES, ENTITY_KEYS, Entity
from broker.model.query import (
    META_MEMBERS,
    AttrPath,
    GeoQuery,
    parse_date,
    parse_datetime,
    parse_time,
)
from broker.query.evaluate import (
    EARTH_RADIUS_M,
    candidates,
    dicts,
    elements,
    instance_values,
    path_exists,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Attribute system timestamps change on every write and are rarely queried: they get
#: no index rows; a query on them is evaluated exactly on the stored documents instead.
UNINDEXED_META = frozenset({"createdAt", "modifiedAt"})
_INDEXED_META = META_MEMBERS - UNINDEXED_META
#: instance kinds whose value may hold JSON objects with keys to index, and that value's member
_JSON_KINDS = {"Property": "value", "LanguageProperty": "languageMap", "JsonProperty": "json"}
_MAX_JSON_DEPTH = 4
SUB = "\x1f"  # separates sub-attribute / meta steps in a path key
KEY = "\x1e"  # separates JSON keys in a path key

Row = tuple[str, int, Any, Any, Any, Any, Any, Any]  # path, kind, b, num, str, dt, day, tod


def path_key(path: AttrPath) -> str:
    return path.attr + "".join(SUB + s for s in path.sub) + "".join(KEY + k for k in path.json)


def epoch_us(instant: datetime) -> int:
    """A date-time as microseconds since the Unix epoch (the rows' ``dt`` column)."""
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _json_paths(
    values: list[Any], prefix: tuple[str, ...], depth: int
) -> Iterator[tuple[str, ...]]:
    if depth >= _MAX_JSON_DEPTH:
        return
    keys: dict[str, list[Any]] = {}
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                for k, v in item.items():
                    keys.setdefault(str(k), []).append(v)
    for k, vs in keys.items():
        yield (*prefix, k)
        yield from _json_paths(vs, (*prefix, k), depth + 1)


def _instance_paths(attr: str, inst: dict[str, Any], subs: tuple[str, ...]) -> Iterator[AttrPath]:
    yield AttrPath(attr, subs)
    for key, value in inst.items():
        if key in META_MEMBERS and key not in UNINDEXED_META:
            yield AttrPath(attr, (*subs, key))
        elif ":" in key and isinstance(value, dict):
            yield from _instance_paths(attr, value, (*subs, key))
    kind = inst.get("type", "Property")
    raw = inst.get({"LanguageProperty": "languageMap", "JsonProperty": "json"}.get(kind, "value"))
    if kind in ("Property", "LanguageProperty", "JsonProperty") and raw is not None:
        for keys in _json_paths([raw], (), 0):
            yield AttrPath(attr, subs, keys)


def entity_paths(ent: Entity) -> set[AttrPath]:
    paths: set[AttrPath] = set()
    for attr, instances in ent.items():
        if attr in ENTITY_KEYS:
            continue
        for inst in instances:
            paths.update(_instance_paths(attr, inst, ()))
    return paths


def _value_row(key: str, c: Any) -> Row | None:
    """The row of one candidate value, or None when it is not comparable."""
    if isinstance(c, bool):
        return (key, 1, int(c), None, None, None, None, None)
    if isinstance(c, int | float):
        if isinstance(c, float) and not math.isfinite(c):
            return None
        return (key, 2, None, sql_number(c), None, None, None, None)
    if isinstance(c, str):
        if not c[:1].isdecimal():  # dates, date-times and times all start with a digit
            return (key, 3, None, None, c, None, None, None)
        dt = parse_datetime(c)
        day = parse_date(c)
        return (
            key,
            3,
            None,
            None,
            c,
            epoch_us(dt) if dt else None,
            day.toordinal() if day else None,
            parse_time(c),
        )
    return None


def _comparable(key: str, candidates: Iterable[Any]) -> list[Row]:
    """The rows of the comparable values among one path's ``candidates``."""
    return [row for c in candidates if (row := _value_row(key, c)) is not None]


def _presence(key: str) -> Row:
    """The row of a path that exists but holds nothing comparable."""
    return (key, 0, None, None, None, None, None, None)


def _add_rows(key: str, values: list[Any], rows: list[Row]) -> None:
    """Rows for the candidates of one path (lists spread one level), or its presence row."""
    rows.extend(_comparable(key, elements(values)) or [_presence(key)])


def _level_rows(
    key: str, insts: list[dict[str, Any]], named: list[dict[str, Any]], rows: list[Row]
) -> None:
    """The rows of the instances a path reaches (an attribute, or a sub-attribute):
    their values, indexed meta members, sub-attributes and JSON keys. Paths are named
    after ``named`` (the instances given as objects, as ``entity_paths`` walks them);
    values come from all of ``insts``, as the evaluator reads them."""
    _add_rows(key, [v for inst in insts for v in instance_values(inst, keyed=False)], rows)
    metas: dict[str, None] = {}
    subs: dict[str, None] = {}
    json_paths: dict[tuple[str, ...], None] = {}
    for inst in named:
        for k, v in inst.items():
            if k in _INDEXED_META:
                metas[k] = None
            elif ":" in k and isinstance(v, dict) and k not in META_MEMBERS:
                subs[k] = None
        kind = inst.get("type", "Property")
        if kind in _JSON_KINDS:
            raw = inst.get(_JSON_KINDS[kind])
            if raw is not None:
                json_paths.update(dict.fromkeys(_json_paths([raw], (), 0)))
    for m in metas:
        _add_rows(key + SUB + m, [inst[m] for inst in insts if m in inst], rows)
    for name in subs:
        _level_rows(
            key + SUB + name,
            [s for inst in insts for s in dicts(inst.get(name))],
            [inst[name] for inst in named if isinstance(inst.get(name), dict)],
            rows,
        )
    if json_paths:
        keyed = [v for inst in insts for v in instance_values(inst, keyed=True)]
        for keys in json_paths:
            values = keyed
            for k in keys:
                values = [c[k] for c in elements(values) if isinstance(c, dict) and k in c]
            _add_rows(key + "".join(KEY + k for k in keys), values, rows)


#: Kinds whose value member, unless a list (or a Property's object, which has JSON keys),
#: is one candidate: a GeoProperty's geometry or any other object is only a presence.
_SINGLE_VALUE = {
    kind: ATTRIBUTE_TYPES[kind]
    for kind in ("Property", "GeoProperty", "Relationship", "VocabProperty")
}


def _single_rows(key: str, inst: dict[str, Any], rows: list[Row]) -> bool:
    """The rows of a lone instance with one value and no sub-attributes (most
    attributes are), as :func:`_level_rows` makes them; False, adding nothing, for any
    other instance."""
    kind = inst.get("type", "Property")
    member = _SINGLE_VALUE.get(kind)
    if member is None:
        return False
    value = inst.get(member)
    if isinstance(value, list) or (kind == "Property" and isinstance(value, dict)):
        return False  # spread candidates, or JSON keys
    metas = []
    for k in inst:
        if ":" in k:
            return False  # a sub-attribute, maybe
        if k in _INDEXED_META:
            if isinstance(inst[k], list):
                return False
            metas.append(k)
    rows.append(_value_row(key, value) or _presence(key))
    for m in metas:
        path = key + SUB + m
        rows.append(_value_row(path, inst[m]) or _presence(path))
    return True


def value_rows(ent: Entity) -> list[Row]:
    """The ``attr_values`` rows of an entity (without tenant and rid), in one walk.

    :func:`value_rows_reference` defines them; this computes the same rows without an
    evaluation per path (the store runs it for every entity it writes). Most attributes
    are one instance with one value and meta members: those take a shorter way."""
    rows: list[Row] = []
    for attr, instances in ent.items():
        if attr not in ENTITY_KEYS:
            if (
                type(instances) is list
                and len(instances) == 1
                and type(instances[0]) is dict
                and _single_rows(attr, instances[0], rows)
            ):
                continue
            insts = dicts(instances)
            if insts:
                _level_rows(attr, insts, insts, rows)
    return rows


def value_rows_reference(ent: Entity) -> list[Row]:
    """The ``attr_values`` rows by definition: the reference evaluator's candidates for
    every path the entity has, or a presence row when none is comparable."""
    rows: list[Row] = []
    for path in entity_paths(ent):
        key = path_key(path)
        found = _comparable(key, candidates(path, ent))
        rows.extend(found)
        if not found and path_exists(path, ent):
            rows.append(_presence(key))
    return rows


def geo_window(geo: GeoQuery) -> tuple[float, float, float, float] | None:
    """The bounding box candidates must intersect, or None when no box bounds them.

    ``disjoint`` and ``near;minDistance`` alone select what is far away: no window.
    For ``near;maxDistance`` the query's box grows by the distance, converted to
    degrees generously (2 % more, longitudes at the box's worst latitude).
    """
    if geo.georel == "disjoint" or (geo.georel == "near" and geo.max_distance is None):
        return None
    minx, miny, maxx, maxy = shape(geo.geometry).bounds
    if geo.georel == "near":
        assert geo.max_distance is not None
        dlat = geo.max_distance / (EARTH_RADIUS_M * math.pi / 180) * 1.02 + 1e-9
        worst = max(abs(miny - dlat), abs(maxy + dlat))
        if worst >= 89.0:
            return (-180.0, -90.0, 180.0, 90.0)
        dlon = dlat / math.cos(math.radians(worst))
        return (minx - dlon, miny - dlat, maxx + dlon, maxy + dlat)
    return (minx, miny, maxx, maxy)


def sql_number(n: int | float) -> int | float:
    """SQLite integers (and BSON ones) are 64-bit: larger Python integers compare as floats."""
    return float(n) if isinstance(n, int) and not -(2**63) <= n < 2**63 else n
