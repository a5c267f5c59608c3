"""What the SQLite store indexes per entity, and the query AST compiled to SQL over it.

Every comparable value an entity holds is a row of ``attr_values``, keyed by a path
string (attribute IRI, sub-attribute or meta member, JSON keys). The rows are by
definition the reference evaluator's own ``candidates`` for every path the entity has
(``value_rows_reference``), so a SQL comparison over them answers exactly what
``broker.query.evaluate`` answers; the writer computes them in one walk of the entity
(``value_rows``), and property tests hold the three together. A path that exists but holds nothing
comparable gets one presence row, so ``attr``/``!attr`` are row look-ups too.

Geometries: the first GeoProperty instance of each attribute, as WKB, with its
bounding box in an R*Tree; the exact predicate runs in shapely on the candidates
the R*Tree lets through (``geo_match``).
"""

from __future__ import annotations

import itertools
import math
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from shapely import wkb
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from broker.model.entity import ATTRIBUTE_TYPES, ENTITY_KEYS, Entity
from broker.model.query import (
    META_MEMBERS,
    URI,
    And,
    AttrPath,
    Comparison,
    Date,
    DateTime,
    Exists,
    GeoQuery,
    Node,
    Or,
    Range,
    Scalar,
    ScopeAnd,
    ScopeOr,
    ScopePattern,
    ScopeQuery,
    Time,
    parse_date,
    parse_datetime,
    parse_time,
)
from broker.query.evaluate import (
    EARTH_RADIUS_M,
    candidates,
    dicts,
    distance_m,
    elements,
    entity_geometry,
    instance_values,
    matches_q,
    path_exists,
)
from broker.query.patterns import check_pattern
from broker.query.scopeq import scope_matches

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


def selection_sql(
    query: Any, tenant: str, *, id_column: str, type_probe: str
) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) for the ids, id pattern and types of an ``EntityQuery``
    and its ORed ``selectors``; ``type_probe`` is an EXISTS with two placeholders
    (tenant, type). Shared by the entity tables and the history tables."""

    def one(sel: Any, clauses: list[str], args: list[Any]) -> None:
        if sel.ids:
            clauses.append(f"{id_column} IN ({','.join('?' * len(sel.ids))})")
            args.extend(sel.ids)
        if sel.id_pattern:
            clauses.append(f"regexp(?, {id_column})")
            args.append(check_pattern(sel.id_pattern))
        if sel.types:
            alternatives = []
            for conj in sel.types:
                alternatives.append("(" + " AND ".join(type_probe for _ in conj) + ")")
                for t in conj:
                    args.extend([tenant, t])
            clauses.append("(" + " OR ".join(alternatives) + ")")

    clauses: list[str] = []
    args: list[Any] = []
    one(query, clauses, args)
    if query.selectors:
        alternatives = []
        for sel in query.selectors:
            parts: list[str] = []
            one(sel, parts, args)
            alternatives.append("(" + (" AND ".join(parts) or "1") + ")")
        clauses.append("(" + " OR ".join(alternatives) + ")")
    return clauses, args


def path_key(path: AttrPath) -> str:
    return path.attr + "".join(SUB + s for s in path.sub) + "".join(KEY + k for k in path.json)


def _us(instant: datetime) -> int:
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
            _us(dt) if dt else None,
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


@dataclass(frozen=True)
class GeoRow:
    path: str
    wkb: bytes
    bounds: tuple[float, float, float, float]


_POINT_WKB = struct.Struct("<BIdd")


def _geo_row(attr: str, value: dict[str, Any]) -> GeoRow | None:
    coords = value.get("coordinates")
    if value.get("type") == "Point" and isinstance(coords, list) and len(coords) == 2:
        # most geometries are points: their WKB and box need no geometry library
        x, y = float(coords[0]), float(coords[1])
        return GeoRow(attr, _POINT_WKB.pack(1, 1, x, y), (x, y, x, y))
    try:
        geom = shape(value)
    except (ValueError, TypeError, AttributeError):
        return None
    if geom.is_empty:
        return None
    minx, miny, maxx, maxy = (float(b) for b in geom.bounds)
    return GeoRow(attr, wkb.dumps(geom), (minx, miny, maxx, maxy))


def geo_rows(ent: Entity) -> list[GeoRow]:
    rows: list[GeoRow] = []
    for attr in ent:
        if attr in ENTITY_KEYS:
            continue
        value = entity_geometry(ent, attr)
        if value is not None:
            row = _geo_row(attr, value)
            if row is not None:
                rows.append(row)
    return rows


# -- geo predicates registered per query ----------------------------------------------------

_geo_queries: dict[int, tuple[GeoQuery, BaseGeometry, dict[str, Any]]] = {}
_geo_ids = itertools.count(1)
_geo_lock = threading.Lock()


def register_geo(geo: GeoQuery) -> int:
    with _geo_lock:
        qid = next(_geo_ids)
        _geo_queries[qid] = (geo, shape(geo.geometry), geo.geometry)
    return qid


def release_geo(qid: int) -> None:
    with _geo_lock:
        _geo_queries.pop(qid, None)


def geo_match(blob: bytes, qid: int) -> int:
    """SQLite function: does the stored geometry satisfy registered geo-query ``qid``."""
    entry = _geo_queries.get(qid)
    if entry is None:
        return 0
    geo, query_geom, query_json = entry
    try:
        subject = wkb.loads(blob)
        if geo.georel == "near":
            d = distance_m(query_json, subject.__geo_interface__)
            return int(
                (geo.max_distance is None or d <= geo.max_distance)
                and (geo.min_distance is None or d >= geo.min_distance)
            )
        return int(bool(getattr(subject, geo.georel)(query_geom)))
    except (ValueError, TypeError, AttributeError):
        return 0


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


_q_nodes: dict[int, Node] = {}


def q_match(doc: bytes, qid: int) -> int:
    """SQLite function: exact evaluation of a registered q node on a stored entity."""
    node = _q_nodes.get(qid)
    return int(node is not None and matches_q(node, orjson.loads(doc)))


# -- q compiled to SQL ----------------------------------------------------------------------


class SqlBuilder:
    """Accumulates a WHERE fragment and its parameters for one query."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.args: list[Any] = []
        self.geo_ids: list[int] = []
        self.q_ids: list[int] = []

    def _in_values(self, key: str, cond: str, args: list[Any]) -> str:
        self.args.extend([self.tenant, key, *args])
        return (
            "EXISTS (SELECT 1 FROM attr_values v WHERE v.tenant=? AND v.path=? AND v.rid=e.rid "
            f"AND {cond})"
        )

    def q(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(self.q(i) for i in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.q(i) for i in node.items) + ")"
        if isinstance(node, Exists) and node.path.meta in UNINDEXED_META:
            return (
                self.q(Comparison(node.path, "~=", ""))
                if not node.negated
                else ("NOT " + self.q(Comparison(node.path, "~=", "")))
            )
        if isinstance(node, Exists):
            self.args.extend([self.tenant, path_key(node.path)])
            op = "NOT EXISTS" if node.negated else "EXISTS"
            return (
                f"{op} (SELECT 1 FROM attr_values v WHERE v.tenant=? AND v.path=? AND v.rid=e.rid)"
            )
        assert isinstance(node, Comparison)
        if node.path.meta in UNINDEXED_META:
            with _geo_lock:
                qid = next(_geo_ids)
                _q_nodes[qid] = node
            self.q_ids.append(qid)
            self.args.append(qid)
            return "q_match(e.doc, ?)"
        cond, args = _condition(node)
        return self._in_values(path_key(node.path), cond, args)

    def scope(self, node: ScopeQuery) -> str:
        if isinstance(node, ScopeAnd):
            return "(" + " AND ".join(self.scope(i) for i in node.items) + ")"
        if isinstance(node, ScopeOr):
            return "(" + " OR ".join(self.scope(i) for i in node.items) + ")"
        assert isinstance(node, ScopePattern)
        self.args.extend([self.tenant, "/" + "/".join(node.segments)])
        return "EXISTS (SELECT 1 FROM entity_scopes s WHERE s.rid=e.rid AND s.tenant=? AND scope_match(?, s.scope))"

    def geo(self, geo: GeoQuery) -> str:
        qid = register_geo(geo)
        self.geo_ids.append(qid)
        window = geo_window(geo)
        if window is None:
            self.args.extend([self.tenant, geo.geoproperty, qid])
            return (
                "e.rid IN (SELECT g.rid FROM geo_shapes g WHERE g.tenant=? AND g.path=? "
                "AND geo_match(g.geom, ?))"
            )
        minx, miny, maxx, maxy = window
        self.args.extend([maxx, minx, maxy, miny, self.tenant, geo.geoproperty, qid])
        return (
            # CROSS JOIN keeps the R*Tree as the outer loop: only shapes in the window
            # reach the exact (costly) check
            "e.rid IN (SELECT g.rid FROM geo_rtree r CROSS JOIN geo_shapes g ON g.id = r.id "
            "WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ? "
            "AND g.tenant=? AND g.path=? AND geo_match(g.geom, ?))"
        )

    def release(self) -> None:
        for qid in self.geo_ids:
            release_geo(qid)
        for qid in self.q_ids:
            _q_nodes.pop(qid, None)


def scope_match(pattern: str, scope: str) -> int:
    """SQLite function: does an entity scope match one scopeQ pattern (``/a/+/#``)."""
    segments = tuple(s for s in pattern.split("/") if s)
    return int(scope_matches(ScopePattern(segments), [scope]))


def sql_number(n: int | float) -> int | float:
    """SQLite integers are 64-bit: larger Python integers compare as floats."""
    return float(n) if isinstance(n, int) and not -(2**63) <= n < 2**63 else n


def _column(literal: Scalar) -> tuple[str, Any]:
    """The column a literal compares with, and the literal in that column's terms."""
    if isinstance(literal, bool):
        return "b", int(literal)
    if isinstance(literal, int | float):
        return "num", sql_number(literal)
    if isinstance(literal, URI):
        return "str", literal.text
    if isinstance(literal, str):
        return "str", literal
    if isinstance(literal, DateTime):
        return "dt", _us(literal.instant)
    if isinstance(literal, Date):
        day: date = literal.day
        return "day", day.toordinal()
    assert isinstance(literal, Time)
    return "tod", literal.utc_us


def _condition(node: Comparison) -> tuple[str, list[Any]]:
    op, value = node.op, node.value
    if op in ("~=", "!~="):
        assert isinstance(value, str)
        neg = "NOT " if op == "!~=" else ""
        return f"str IS NOT NULL AND {neg}regexp(?, str)", [value]
    if isinstance(value, tuple):
        by_column: dict[str, list[Any]] = {}
        for v in value:
            col, lit = _column(v)
            by_column.setdefault(col, []).append(lit)
        args: list[Any] = []
        if op == "==":
            parts = []
            for col, lits in by_column.items():
                parts.append(f"{col} IN ({','.join('?' * len(lits))})")
                args.extend(lits)
            return "(" + " OR ".join(parts) + ")", args
        # comparable with some element, and equal to none of them
        comparable = " OR ".join(f"{col} IS NOT NULL" for col in by_column)
        parts = []
        for col, lits in by_column.items():
            parts.append(f"({col} IS NULL OR {col} NOT IN ({','.join('?' * len(lits))}))")
            args.extend(lits)
        return f"({comparable}) AND " + " AND ".join(parts), args
    if isinstance(value, Range):
        col, low = _column(value.low)
        _, high = _column(value.high)
        if op == "==":
            return f"{col} BETWEEN ? AND ?", [low, high]
        return f"({col} < ? OR {col} > ?)", [low, high]
    col, lit = _column(value)
    sql_op = {"==": "=", "!=": "!="}.get(op, op)
    return f"{col} {sql_op} ?", [lit]
