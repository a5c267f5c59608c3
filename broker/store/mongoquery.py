"""The backend-neutral query AST compiled to MongoDB filters over ``mongodb.py`` documents.

An entity document carries, beside the entity itself (``e``), what queries filter on:

* ``types``, ``attrs``, ``scopes``: arrays of expanded type IRIs, attribute IRIs, scopes;
* ``vals``: one subdocument per comparable value of each attribute path, built by
  ``broker.store.index.value_rows`` from the reference evaluator's own
  ``candidates`` (``{"p": path key, "n"|"s"|"b"|"dt"|"day"|"tod": value}``; a path
  with nothing comparable has ``{"p": key}`` alone). A comparison is one
  ``$elemMatch`` over ``vals``, so it answers exactly what ``broker.query.evaluate``
  answers, and it uses the ``(t, vals.p, vals.<kind>)`` multikey indexes;
* ``g``: per GeoProperty attribute (escaped IRI), its geometry with long edges
  split (``densify``), under a 2dsphere index.

Where MongoDB cannot answer exactly (regular expressions: MongoDB's PCRE is not the
RE2 dialect NGSI-LD queries are checked against; attribute system times, which have
no ``vals`` rows; scopeQ wildcards; geo-relations, which MongoDB computes on the
sphere while NGSI-LD relations are planar in lon/lat), the compiled filter is a
*superset* and :attr:`FilterBuilder.exact` turns False: the store then runs the
reference evaluator (:func:`matches`) on every candidate and pages in Python, which
is exactly how the SQLite backend stays correct with its R*Tree pre-filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import shapely
from shapely.geometry import box, mapping, shape

from broker.model.entity import Entity
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
    ScopeQuery,
    Time,
)
from broker.model.store import EntityQuery, Selector
from broker.query.evaluate import matches_geo, matches_q, matches_scope
from broker.query.patterns import check_pattern, search
from broker.store.index import UNINDEXED_META, epoch_us, geo_window, path_key, sql_number

#: Longest edge (degrees) of a geometry as indexed. MongoDB joins vertices by great
#: circles, NGSI-LD (and the reference evaluator) by straight lines in lon/lat; with
#: edges this short the two differ by less than ~1e-4 degrees anywhere.
MAX_EDGE_DEG: Final = 0.25
#: Margin (degrees) added around geo pre-filter regions; it covers the difference above.
GEO_MARGIN_DEG: Final = 1e-3
#: A pre-filter region wider or nearer the poles than this is not worth the risk of
#: MongoDB's big-polygon rules: such queries filter on presence and post-check all.
_MAX_REGION_SPAN: Final = 90.0
_MAX_REGION_LAT: Final = 85.0

_ESC_RE: Final = re.compile(r"%(25|2E|24|00)")
_UNESC: Final = {"25": "%", "2E": ".", "24": "$", "00": "\x00"}


# -- field names --------------------------------------------------------------------------


def escape_key(key: str) -> str:
    """A MongoDB-safe field name for ``key``, reversibly.

    MongoDB forbids ``.`` (path separator) and a leading ``$`` in field names and NUL
    anywhere; IRIs are full of dots. ``%`` is escaped first so that the mapping is
    one-to-one: ``%`` -> ``%25``, ``.`` -> ``%2E``, ``$`` (leading) -> ``%24``, NUL -> ``%00``.
    """
    if not key or not ("%" in key or "." in key or "\x00" in key or key[0] == "$"):
        return key
    out = key.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
    if out.startswith("$"):
        out = "%24" + out[1:]
    return out


def unescape_key(key: str) -> str:
    """Inverse of :func:`escape_key`."""
    if "%" not in key:
        return key
    return _ESC_RE.sub(lambda m: _UNESC[m.group(1)], key)


def escape_doc(value: Any) -> Any:
    """``value`` with every object key escaped (recursively, lists included)."""
    if isinstance(value, dict):
        return {escape_key(str(k)): escape_doc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_doc(v) for v in value]
    return value


def unescape_doc(value: Any) -> Any:
    """Inverse of :func:`escape_doc`."""
    if isinstance(value, dict):
        return {unescape_key(k): unescape_doc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape_doc(v) for v in value]
    return value


def geo_field(attr: str) -> str:
    """The document field indexing the geometry of attribute ``attr`` (an expanded IRI)."""
    return "g." + escape_key(attr)


# -- indexed values -----------------------------------------------------------------------

_KIND_FIELDS: Final = ("b", "n", "s", "dt", "day", "tod")


def value_docs(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """``index.value_rows`` as ``vals`` subdocuments; absent columns are left out,
    so ``$exists`` on a column is "this value is of that kind"."""
    docs: list[dict[str, Any]] = []
    for path, kind, b, num, text, dt, day, tod in rows:
        doc: dict[str, Any] = {"p": path}
        if kind == 1:
            doc["b"] = bool(b)
        for name, value in zip(
            ("n", "s", "dt", "day", "tod"), (num, text, dt, day, tod), strict=True
        ):
            if value is not None:
                doc[name] = value
        docs.append(doc)
    return docs


def densify(geometry: dict[str, Any]) -> dict[str, Any]:
    """The geometry as indexed: no edge longer than :data:`MAX_EDGE_DEG` and no repeated
    consecutive vertex (MongoDB refuses loops with duplicate vertices), no altitude;
    the same shape."""
    if geometry.get("type") == "Point":
        return {"type": "Point", "coordinates": list(geometry["coordinates"][:2])}
    geom = shapely.force_2d(shapely.remove_repeated_points(shape(geometry)))
    return dict(mapping(shapely.segmentize(geom, MAX_EDGE_DEG)))


# -- q ------------------------------------------------------------------------------------


def _column(literal: Scalar) -> tuple[str, Any]:
    """The ``vals`` field a literal compares with, and the literal in that field's terms."""
    if isinstance(literal, bool):
        return "b", literal
    if isinstance(literal, int | float):
        return "n", sql_number(literal)
    if isinstance(literal, URI):
        return "s", literal.text
    if isinstance(literal, str):
        return "s", literal
    if isinstance(literal, DateTime):
        return "dt", epoch_us(literal.instant)
    if isinstance(literal, Date):
        return "day", literal.day.toordinal()
    assert isinstance(literal, Time)
    return "tod", literal.utc_us


_ORDER_OPS: Final = {">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}


def _conditions(node: Comparison) -> list[dict[str, Any]]:
    """Conditions on one ``vals`` element (besides its path), any of which will do.

    Alternatives are kept apart (one ``$elemMatch`` each) rather than joined by
    ``$or`` inside ``$elemMatch``: "some element matches A or B" is "some element
    matches A, or some matches B", and plain field conditions are what every
    MongoDB-compatible server handles in ``$elemMatch``. An element holds one kind
    of value, so conditions on the other kinds' fields never matter.
    """
    op, value = node.op, node.value
    if isinstance(value, tuple):
        by_field: dict[str, list[Any]] = {}
        for v in value:
            name, lit = _column(v)
            by_field.setdefault(name, []).append(lit)
        if op == "==":
            return [{name: {"$in": lits}} for name, lits in by_field.items()]
        # comparable with some element of the list, and equal to none of them
        return [{name: {"$exists": True, "$nin": lits}} for name, lits in by_field.items()]
    if isinstance(value, Range):
        name, low = _column(value.low)
        _, high = _column(value.high)
        if op == "==":
            return [{name: {"$gte": low, "$lte": high}}]
        return [{name: {"$lt": low}}, {name: {"$gt": high}}]
    name, lit = _column(value)
    if op == "==":
        return [{name: lit}]
    if op == "!=":
        return [{name: {"$exists": True, "$ne": lit}}]
    return [{name: {_ORDER_OPS[op]: lit}}]


def _and(parts: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _or(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if any(not p for p in parts):
        return {}  # one alternative lets everything through
    return parts[0] if len(parts) == 1 else {"$or": parts}


_LITERAL: Final = re.compile(r"[A-Za-z0-9:/_\-]*")


def _anchored_prefix(pattern: str) -> str:
    """The literal text a ``^``-anchored pattern starts with ("" if none or unsure).

    Only plain characters count, and not one a quantifier or alternation could make
    optional: ``^urn:x:1?`` gives ``urn:x:``."""
    if not pattern.startswith("^") or pattern.startswith("^(?"):
        return ""
    match = _LITERAL.match(pattern, 1)
    literal = match.group(0) if match else ""
    rest = pattern[1 + len(literal) :]
    if "|" in pattern:
        return ""
    if rest[:1] in ("?", "*", "{"):
        literal = literal[:-1]
    return literal


class FilterBuilder:
    """Compiles one query; :attr:`exact` is False once any part is only a pre-filter."""

    def __init__(self) -> None:
        self.exact = True

    def q(self, node: Node) -> dict[str, Any]:
        if isinstance(node, And):
            return _and([self.q(i) for i in node.items])
        if isinstance(node, Or):
            return _or([self.q(i) for i in node.items])
        if node.path.meta in UNINDEXED_META:
            # attribute system times have no ``vals`` rows: the attribute must be there
            # (unless negated), the rest is checked on the entity
            self.exact = False
            if isinstance(node, Exists) and node.negated:
                return {}
            return {"attrs": node.path.attr}
        key = path_key(node.path)
        if isinstance(node, Exists):
            return {"vals.p": {"$ne": key}} if node.negated else {"vals.p": key}
        if node.op in ("~=", "!~="):
            self.exact = False
            return {"vals": {"$elemMatch": {"p": key, "s": {"$exists": True}}}}
        return _or([{"vals": {"$elemMatch": {"p": key, **c}}} for c in _conditions(node)])

    def scope(self, node: ScopeQuery) -> dict[str, Any]:
        """Scopes matching a regular expression built from the pattern's fixed segments;
        ``+``/``#`` semantics (and scopes written without the leading ``/``) are
        post-checked."""
        self.exact = False
        if isinstance(node, ScopeAnd):
            return _and([self.scope(i) for i in node.items])
        if isinstance(node, ScopeOr):
            return _or([self.scope(i) for i in node.items])
        fixed: list[str] = []
        for seg in node.segments:
            if seg in ("+", "#"):
                break
            fixed.append(seg)
        if not fixed:
            return {"scopes.0": {"$exists": True}}
        return {"scopes": {"$regex": "^/?" + "/".join(re.escape(s) for s in fixed)}}

    def geo(self, geo: GeoQuery) -> dict[str, Any]:
        """A 2dsphere pre-filter: ``$geoWithin`` (within, equals) or ``$geoIntersects``
        (the rest) over the query's bounding box, grown by the distance for ``near``
        and by :data:`GEO_MARGIN_DEG`; the exact relation is post-checked.

        ``near`` uses the distance window rather than ``$nearSphere``: ``$nearSphere``
        cannot be counted, combined with ``$or`` or ordered by id without a blocking
        sort, and its distance to non-point geometries is not the NGSI-LD reference
        distance; the window uses the same 2dsphere index.
        """
        self.exact = False
        field = geo_field(geo.geoproperty)
        present = {field: {"$exists": True}}
        window = geo_window(geo)
        if window is None:
            return present
        minx, miny, maxx, maxy = window
        minx, miny = minx - GEO_MARGIN_DEG, miny - GEO_MARGIN_DEG
        maxx, maxy = maxx + GEO_MARGIN_DEG, maxy + GEO_MARGIN_DEG
        if (
            maxx - minx > _MAX_REGION_SPAN
            or maxy - miny > _MAX_REGION_SPAN
            or minx < -180
            or maxx > 180
            or miny < -_MAX_REGION_LAT
            or maxy > _MAX_REGION_LAT
        ):
            return present
        region = dict(mapping(shapely.segmentize(box(minx, miny, maxx, maxy), MAX_EDGE_DEG)))
        op = "$geoWithin" if geo.georel in ("within", "equals") else "$geoIntersects"
        return {field: {op: {"$geometry": region}}}

    def selector(self, sel: Selector | EntityQuery) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if sel.ids:
            parts.append({"id": {"$in": list(sel.ids)}})
        if sel.id_pattern:
            check_pattern(sel.id_pattern)
            self.exact = False  # RE2 syntax, not MongoDB's PCRE: checked on the ids
            prefix = _anchored_prefix(sel.id_pattern)
            if prefix:  # ^urn:ngsi-ld:Vehicle:... reads one range of the id index
                parts.append({"id": {"$gte": prefix, "$lt": prefix + "\U0010ffff"}})
        if sel.types:
            parts.append(_or([{"types": {"$all": list(conj)}} for conj in sel.types]))
        return _and(parts)

    def query(self, query: EntityQuery) -> dict[str, Any]:
        parts = [self.selector(query)]
        if query.selectors:
            parts.append(_or([self.selector(s) for s in query.selectors]))
        if query.attrs:
            parts.append({"attrs": {"$in": list(query.attrs)}})
        if query.q is not None:
            parts.append(self.q(query.q))
        if query.scope_q is not None:
            parts.append(self.scope(query.scope_q))
        if query.geo is not None:
            parts.append(self.geo(query.geo))
        return _and(parts)


# -- ordering -----------------------------------------------------------------------------


def _smallest(values: dict[str, Any]) -> dict[str, Any]:
    """The smallest non-null element of an array expression, null when there is none.

    A ``$reduce`` rather than ``$min`` of the array: the same answer, and servers
    that only take ``$min`` as an accumulator (mongoeco) evaluate it too."""
    smaller = {"$and": [{"$ne": ["$$this", None]}, {"$lt": ["$$this", "$$value"]}]}
    return {
        "$reduce": {
            "input": values,
            "initialValue": None,
            "in": {"$cond": [{"$or": [{"$eq": ["$$value", None]}, smaller]}, "$$this", "$$value"]},
        }
    }


def sort_stages(query: EntityQuery) -> list[dict[str, Any]]:
    """``$addFields`` + ``$sort`` for ``query.order_by``, then the id.

    An attribute sorts by its smallest comparable value (numbers before strings, an
    entity without one first), as in the SQLite backend.
    """
    computed: dict[str, Any] = {}
    sort: dict[str, int] = {}
    for i, (key, desc) in enumerate(query.order_by or ()):
        direction = -1 if desc else 1
        if key == "id":
            field = "id"
        elif key == "type":
            field = "tmin"
        elif isinstance(key, str):  # createdAt, modifiedAt
            field = "e." + key
        else:
            field = f"_o{i}"
            if key.meta in UNINDEXED_META and not key.sub_attributes:
                first = {"$arrayElemAt": ["$e." + escape_key(key.attr), 0]}
                computed[field] = {"$let": {"vars": {"a": first}, "in": "$$a." + key.meta}}
            else:
                rows = {
                    "$filter": {
                        "input": {"$ifNull": ["$vals", []]},
                        "as": "v",
                        "cond": {"$eq": ["$$v.p", path_key(key)]},
                    }
                }
                values = {"$map": {"input": rows, "as": "r", "in": {"$ifNull": ["$$r.n", "$$r.s"]}}}
                computed[field] = _smallest(values)
        sort.setdefault(field, direction)
    sort.setdefault("id", 1)
    stages: list[dict[str, Any]] = []
    if computed:
        stages.append({"$addFields": computed})
    stages.append({"$sort": sort})
    return stages


# -- the reference check ------------------------------------------------------------------


def _selected(sel: Selector | EntityQuery, ent: Entity) -> bool:
    if sel.ids and ent["id"] not in sel.ids:
        return False
    if sel.id_pattern and not search(check_pattern(sel.id_pattern), ent["id"]):
        return False
    if sel.types:
        types = set(ent.get("type") or ())
        if not any(all(t in types for t in conj) for conj in sel.types):
            return False
    return True


def matches(query: EntityQuery, ent: Entity) -> bool:
    """The whole query evaluated on one entity by the reference evaluator."""
    if not _selected(query, ent):
        return False
    if query.selectors and not any(_selected(s, ent) for s in query.selectors):
        return False
    if query.attrs and not any(a in ent for a in query.attrs):
        return False
    if query.q is not None and not matches_q(query.q, ent):
        return False
    if query.scope_q is not None and not matches_scope(query.scope_q, ent):
        return False
    return query.geo is None or matches_geo(query.geo, ent)
