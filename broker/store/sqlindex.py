"""What the SQLite store indexes per entity, and the query AST compiled to SQL over it.

Every comparable value an entity holds is a row of ``attr_values``: the index rows of
``broker.store.index``, which define what a SQL comparison over them answers.

Geometries: the first GeoProperty instance of each attribute, as WKB, with its
bounding box in an R*Tree; the exact predicate runs in shapely on the candidates
the R*Tree lets through (``geo_match``).
"""

from __future__ import annotations

import itertools
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
from shapely import wkb
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from broker.model.entity import ENTITY_KEYS, Entity
from broker.model.query import (
    URI,
    And,
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
)
from broker.model.store import EntityQuery, Selector
from broker.query.evaluate import (
    distance_m,
    entity_geometry,
    haversine_m,
    matches_q,
)
from broker.query.patterns import check_pattern
from broker.query.scopeq import scope_matches
from broker.store.index import UNINDEXED_META, epoch_us, geo_window, path_key, sql_number


@dataclass(frozen=True, slots=True)
class EntityTable:
    """How the SQL conditions of an entity selection probe one table of entities: the
    current ones (``sqlite``) or those the history knows (``sqlhistory``)."""

    #: the tenant and entity id columns of the table's rows
    tenant_column: str
    id_column: str
    #: an EXISTS with two placeholders (tenant, type IRI)
    type_probe: str
    #: an EXISTS with one placeholder (tenant) and ``{marks}`` for the attribute IRIs
    attr_probe: str


def selection_sql(
    query: EntityQuery, tenant: str, table: EntityTable
) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) for the tenant, ids, id pattern, types and attributes of
    an ``EntityQuery`` and its ORed ``selectors``: what the entity tables and the
    history tables select alike. q, scopeQ and geo are the entity tables' own."""
    id_column = table.id_column

    def one(sel: EntityQuery | Selector, clauses: list[str], args: list[Any]) -> None:
        if sel.ids:
            clauses.append(f"{id_column} IN ({','.join('?' * len(sel.ids))})")
            args.extend(sel.ids)
        if sel.id_pattern:
            clauses.append(f"regexp(?, {id_column})")
            args.append(check_pattern(sel.id_pattern))
        if sel.types:
            alternatives = []
            for conj in sel.types:
                alternatives.append("(" + " AND ".join(table.type_probe for _ in conj) + ")")
                for t in conj:
                    args.extend([tenant, t])
            clauses.append("(" + " OR ".join(alternatives) + ")")

    clauses: list[str] = [f"{table.tenant_column} = ?"]
    args: list[Any] = [tenant]
    one(query, clauses, args)
    if query.selectors:
        alternatives = []
        for sel in query.selectors:
            parts: list[str] = []
            one(sel, parts, args)
            alternatives.append("(" + (" AND ".join(parts) or "1") + ")")
        clauses.append("(" + " OR ".join(alternatives) + ")")
    if query.attrs:
        clauses.append(table.attr_probe.format(marks=",".join("?" * len(query.attrs))))
        args.extend([tenant, *query.attrs])
    return clauses, args


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

#: little-endian WKB of a 2D Point: byte order, type 1, then x and y (what ``_geo_row``
#: stores for every point, and shapely writes for one)
_POINT_HEAD = b"\x01\x01\x00\x00\x00"
_POINT_XY = struct.Struct("<dd")

PointTest = Callable[[float, float], bool]


@dataclass(frozen=True, slots=True)
class _Registered:
    geo: GeoQuery
    shape: BaseGeometry
    #: the predicate for a stored Point at (x, y), where one answers exactly what the
    #: general path answers without building geometries; else None
    point_test: PointTest | None


def _rectangle(geometry: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """``(minx, miny, maxx, maxy)`` of a Polygon that is an axis-aligned rectangle
    (one ring of four corners, no holes), else None."""
    if geometry.get("type") != "Polygon":
        return None
    rings = geometry.get("coordinates")
    if not isinstance(rings, list) or len(rings) != 1 or len(rings[0]) != 5:
        return None
    try:
        ring = [(float(p[0]), float(p[1])) for p in rings[0] if len(p) == 2]
    except (TypeError, ValueError, IndexError):
        return None
    if len(ring) != 5 or ring[0] != ring[4]:
        return None
    xs = {x for x, _ in ring}
    ys = {y for _, y in ring}
    if len(xs) != 2 or len(ys) != 2 or len(set(ring)) != 4:
        return None
    for (ax, ay), (bx, by) in itertools.pairwise(ring):
        if (ax != bx) == (ay != by):  # each side is horizontal or vertical, not both
            return None
    return min(xs), min(ys), max(xs), max(ys)


def _point_test(geo: GeoQuery) -> PointTest | None:
    """What the reference (``broker.query.evaluate.matches_geo``) answers for an entity
    whose geometry is the Point (x, y), computed on the two numbers:

    * ``near`` a Point: the reference's nearest points of two points are the points
      themselves, so its distance is ``haversine_m`` of the two coordinate pairs;
    * ``within`` / ``intersects`` an axis-aligned rectangle: a point lies within a
      polygon when it is in its interior (strictly between the sides), and intersects
      it when it is in the interior or on the boundary. Comparisons of the same
      floats are exact, as GEOS's point-in-polygon test is."""
    if geo.georel == "near":
        coords = geo.geometry.get("coordinates")
        if geo.geometry.get("type") != "Point" or not isinstance(coords, list | tuple):
            return None
        if len(coords) != 2:
            return None
        qx, qy = float(coords[0]), float(coords[1])
        hi = geo.max_distance
        lo = geo.min_distance

        def near(x: float, y: float) -> bool:
            d = haversine_m(qx, qy, x, y)
            return (hi is None or d <= hi) and (lo is None or d >= lo)

        return near
    if geo.georel in ("within", "intersects"):
        box = _rectangle(geo.geometry)
        if box is None:
            return None
        minx, miny, maxx, maxy = box
        if geo.georel == "within":
            return lambda x, y: minx < x < maxx and miny < y < maxy
        return lambda x, y: minx <= x <= maxx and miny <= y <= maxy
    return None


_geo_queries: dict[int, _Registered] = {}
_geo_ids = itertools.count(1)
_geo_lock = threading.Lock()


def register_geo(geo: GeoQuery) -> int:
    entry = _Registered(geo, shape(geo.geometry), _point_test(geo))
    with _geo_lock:
        qid = next(_geo_ids)
        _geo_queries[qid] = entry
    return qid


def release_geo(qid: int) -> None:
    with _geo_lock:
        _geo_queries.pop(qid, None)


def geo_match(blob: bytes, qid: int) -> int:
    """SQLite function: does the stored geometry satisfy registered geo-query ``qid``."""
    entry = _geo_queries.get(qid)
    if entry is None:
        return 0
    if entry.point_test is not None and len(blob) == 21 and blob.startswith(_POINT_HEAD):
        x, y = _POINT_XY.unpack_from(blob, 5)
        if math.isfinite(x) and math.isfinite(y):
            return int(entry.point_test(x, y))
    geo = entry.geo
    try:
        subject = wkb.loads(blob)
        if geo.georel == "near":
            d = distance_m(geo.geometry, subject.__geo_interface__)
            return int(
                (geo.max_distance is None or d <= geo.max_distance)
                and (geo.min_distance is None or d >= geo.min_distance)
            )
        return int(bool(getattr(subject, geo.georel)(entry.shape)))
    except (ValueError, TypeError, AttributeError):
        return 0


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

    def geo(self, geo: GeoQuery, candidates: tuple[str, list[Any]] | None = None) -> str:
        """The geo condition; ``candidates`` (SQL on ``g.rid`` and its parameters) narrows
        the R*Tree's candidates before the exact check and before any entity is read."""
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
        narrow, narrow_args = (
            ("", []) if candidates is None else (f" AND {candidates[0]}", candidates[1])
        )
        self.args.extend([maxx, minx, maxy, miny, self.tenant, geo.geoproperty, *narrow_args, qid])
        return (
            # CROSS JOIN keeps the R*Tree as the outer loop: only shapes in the window
            # reach the exact (costly) check
            "e.rid IN (SELECT g.rid FROM geo_rtree r CROSS JOIN geo_shapes g ON g.id = r.id "
            "WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ? "
            f"AND g.tenant=? AND g.path=?{narrow} AND geo_match(g.geom, ?))"
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
        return "dt", epoch_us(literal.instant)
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
