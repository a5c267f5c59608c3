"""NGSI v2 Simple Query Language (``q``, ``mq``) and geo-queries, translated to the query AST.

Orion's ``doc/manuals/orion-api.md`` ("Simple Query Language", "Geographical Queries"):
statements joined by ``;`` (and); binary ``path op value`` with ``==`` (or ``:``),
``!=``, ``>``, ``>=``, ``<``, ``<=``, ``~=``; unary ``path`` and ``!path``. A path is
tokens separated by ``.`` (``'a.b'`` quotes a token): in ``q`` the first token is the
attribute and the rest walk into its structured value; in ``mq`` the second token is
a metadata name. ``==``/``!=`` take a value, a comma-separated list or a range
``low..high``; ``'...'`` forces a string. Unquoted values are numbers, ``true``/
``false``, ISO 8601 date-times (dates are midnight UTC) or else strings.

Translation: the text is first parsed into :class:`Statement` values; :func:`to_node`
turns them into a ``broker.model.query`` node over the internal form (attribute and
metadata names expanded, structured-value keys as JSON keys, metadata as
sub-attributes), which every store evaluates. :func:`matches_reference` is the slow,
obvious meaning of the same statements over an entity in v2 form; property tests hold
the two together.

Geo-queries (``georel``, ``geometry``, ``coords`` as ``lat,lon;lat,lon``) become a
:class:`~broker.model.query.GeoQuery` on the ``location`` attribute: ``coveredBy`` is
NGSI-LD ``within``, ``box`` a polygon.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from broker.errors import BadRequestData
from broker.model.geo import validate_geometry
from broker.model.query import (
    AttrPath,
    Comparison,
    DateTime,
    Exists,
    GeoQuery,
    Node,
    Range,
    Scalar,
    all_of,
)
from broker.query.patterns import check_pattern

_OPERATORS: Final = ("==", "!=", ">=", "<=", "~=", ">", "<", ":")
_NUMBER = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T[0-9:.]+(?:Z|[+-][0-9:]+)?)?$")
#: v2 builtin metadata in ``mq`` -> the instance member holding it.
_BUILTIN_META: Final = {"dateCreated": "createdAt", "dateModified": "modifiedAt"}
_MEMBER_META: Final = frozenset({"unitCode", "observedAt"})


@dataclass(frozen=True)
class Statement:
    """One statement of ``q`` or ``mq``: ``path`` tokens, ``op`` (None: existence)."""

    path: tuple[str, ...]
    op: str | None = None
    #: Typed values: one, several (a list), or two for a range (``is_range``).
    values: tuple[Scalar, ...] = ()
    is_range: bool = False
    negated: bool = False


_DT_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)


def iso_datetime(text: Any, what: str) -> str:
    """An ISO 8601 date-time as Orion stores it, ``YYYY-MM-DDThh:mm:ss.sssZ`` (UTC)."""
    match = _DT_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise BadRequestData(f"date has invalid format in {what}: {text!r}")
    y, mo, d, h, mi, s, frac, tz = match.groups()
    try:
        parsed = datetime(
            int(y),
            int(mo),
            int(d),
            int(h or 0),
            int(mi or 0),
            int(s or 0),
            int(((frac or "") + "000000")[:6]),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise BadRequestData(f"date has invalid format in {what}: {text!r}") from exc
    if tz and tz != "Z":
        sign = -1 if tz[0] == "+" else 1
        digits = tz[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        parsed = parsed.fromtimestamp(parsed.timestamp() + sign * minutes * 60, UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


def box_polygon(corners: list[list[float]]) -> dict[str, Any]:
    """The GeoJSON Polygon of a box given by two opposite corners (lon/lat)."""
    (x1, y1), (x2, y2) = corners[0][:2], corners[1][:2]
    w, e, s, n = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    if w == e or s == n:
        raise BadRequestData("a box needs two corners that differ in latitude and longitude")
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


# -- parsing ---------------------------------------------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside single quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "'":
            quoted = not quoted
        if not quoted and text.startswith(sep, i):
            parts.append("".join(current))
            current = []
            i += len(sep)
            continue
        current.append(c)
        i += 1
    if quoted:
        raise BadRequestData(f"unterminated quote in {text!r}")
    parts.append("".join(current))
    return parts


def _path(text: str, label: str) -> tuple[str, ...]:
    tokens = []
    for token in _split(text.strip(), "."):
        if len(token) >= 2 and token[0] == token[-1] == "'":
            token = token[1:-1]
        if not token or "'" in token:
            raise BadRequestData(f"invalid path {text!r} in {label}")
        tokens.append(token)
    return tuple(tokens)


def _find_operator(text: str) -> tuple[int, str] | None:
    quoted = False
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted
        if quoted:
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                return i, op
    return None


def typed(raw: str, label: str) -> Scalar:
    """An unquoted or quoted value of a statement, typed as Orion types it."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if "'" in raw:
        raise BadRequestData(f"invalid quoting in {label} value {raw!r}")
    if _NUMBER.match(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise BadRequestData(f"number out of range in {label}: {raw!r}")
        return (
            int(number)
            if number.is_integer() and "." not in raw and "e" not in raw.lower()
            else number
        )
    if raw in ("true", "false"):
        return raw == "true"
    if _DATETIME.match(raw):
        try:
            return DateTime(iso_datetime(raw, label))
        except (BadRequestData, ValueError):
            return raw
    return raw


def parse_statements(text: str, label: str = "q") -> list[Statement]:
    """The statements of a ``q`` or ``mq`` text; 400 BadRequest for bad syntax."""
    out: list[Statement] = []
    for part in _split(text, ";"):
        part = part.strip()
        if not part:
            continue
        found = _find_operator(part)
        if found is None:
            negated = part.startswith("!")
            path = _path(part[1:] if negated else part, label)
            out.append(Statement(path, None, negated=negated))
            continue
        at, op = found
        op = "==" if op == ":" else op
        width = 1 if found[1] in (">", "<", ":") else 2
        path = _path(part[:at], label)
        rhs = part[at + width :].strip()
        if not rhs:
            raise BadRequestData(f"empty right-hand side in {label} statement {part!r}")
        out.append(_binary(path, op, rhs, label))
    if not out:
        raise BadRequestData(f"empty {label}")
    return out


def _binary(path: tuple[str, ...], op: str, rhs: str, label: str) -> Statement:
    if op == "~=":
        pattern = rhs[1:-1] if len(rhs) >= 2 and rhs[0] == rhs[-1] == "'" else rhs
        check_pattern(pattern)
        return Statement(path, op, (pattern,))
    items = _split(rhs, ",")
    if op in ("==", "!=") and len(items) == 1 and len(_split(rhs, "..")) == 2:
        low, high = (typed(x, label) for x in _split(rhs, ".."))
        if _kind(low) is None or _kind(low) != _kind(high):
            raise BadRequestData(f"invalid range in {label}: {rhs!r}")
        return Statement(path, op, (low, high), is_range=True)
    values = tuple(typed(x, label) for x in items)
    if len(values) > 1 and op not in ("==", "!="):
        raise BadRequestData(f"a list of values needs == or != in {label}")
    if op in (">", ">=", "<", "<=") and _kind(values[0]) is None:
        raise BadRequestData(f"{op} needs a number, a string or a date in {label}")
    return Statement(path, op, values)


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, DateTime):
        return "datetime"
    return None


# -- translation -----------------------------------------------------------------------------


def _attr_path(path: tuple[str, ...], expand: Callable[[str], str], meta: bool) -> AttrPath:
    if not meta:
        return AttrPath(expand(path[0]), (), path[1:])
    if len(path) < 2:
        raise BadRequestData(f"mq needs attribute.metadata, got {'.'.join(path)!r}")
    name = path[1]
    if name in _BUILTIN_META or name in _MEMBER_META:
        if len(path) > 2:
            raise BadRequestData(f"metadata {name} has no sub-properties")
        return AttrPath(expand(path[0]), (_BUILTIN_META.get(name, name),))
    return AttrPath(expand(path[0]), (expand(name),), path[2:])


def to_node(statements: list[Statement], expand: Callable[[str], str], *, meta: bool) -> Node:
    """The AST of parsed statements; ``meta`` for ``mq`` (metadata paths)."""
    nodes: list[Node] = []
    for st in statements:
        path = _attr_path(st.path, expand, meta)
        if st.op is None:
            nodes.append(Exists(path, st.negated))
        elif st.is_range:
            nodes.append(Comparison(path, st.op, Range(st.values[0], st.values[1])))
        elif len(st.values) > 1:
            nodes.append(Comparison(path, st.op, st.values))
        else:
            nodes.append(Comparison(path, st.op, st.values[0]))
    return all_of(nodes)


def parse_v2_q(q: str | None, mq: str | None, expand: Callable[[str], str]) -> Node | None:
    """The AST of a request's ``q`` and ``mq`` (ANDed), or None when neither is given."""
    nodes: list[Node] = []
    if q is not None:
        nodes.append(to_node(parse_statements(q, "q"), expand, meta=False))
    if mq is not None:
        nodes.append(to_node(parse_statements(mq, "mq"), expand, meta=True))
    return all_of(nodes) if nodes else None


# -- the reference ---------------------------------------------------------------------------


def _walk(values: list[Any], keys: tuple[str, ...]) -> list[Any]:
    for key in keys:
        nxt = []
        for v in values:
            for item in v if isinstance(v, list) else [v]:
                if isinstance(item, dict) and key in item:
                    nxt.append(item[key])
        values = nxt
    return values


def _targets(st: Statement, entity: dict[str, Any], meta: bool) -> list[Any]:
    attr = entity.get(st.path[0])
    if not isinstance(attr, dict):
        return []
    if not meta:
        return _walk([attr.get("value")], st.path[1:])
    m = (attr.get("metadata") or {}).get(st.path[1])
    if not isinstance(m, dict):
        return []
    return _walk([m.get("value")], st.path[2:])


def _spread(values: list[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, list):
            yield from v
        else:
            yield v


def _comparable(literal: Any, candidate: Any) -> tuple[Any, Any] | None:
    if isinstance(literal, bool):
        return (literal, candidate) if isinstance(candidate, bool) else None
    if isinstance(literal, int | float):
        ok = isinstance(candidate, int | float) and not isinstance(candidate, bool)
        return (literal, candidate) if ok else None
    if isinstance(literal, DateTime):
        if not isinstance(candidate, str) or "T" not in candidate:
            return None
        try:
            return iso_datetime(literal.text, "q"), iso_datetime(candidate, "value")
        except BadRequestData:
            return None
    if isinstance(literal, str) and isinstance(candidate, str):
        return literal, candidate
    return None


def _holds(st: Statement, candidate: Any) -> bool:
    op = st.op
    if op == "~=":
        return isinstance(candidate, str) and re.search(str(st.values[0]), candidate) is not None
    if st.is_range:
        lo, hi = _comparable(st.values[0], candidate), _comparable(st.values[1], candidate)
        if lo is None or hi is None:
            return False
        inside = lo[0] <= lo[1] <= hi[0]
        return inside if op == "==" else not inside
    pairs = [p for p in (_comparable(v, candidate) for v in st.values) if p is not None]
    if not pairs:
        return False
    if op == "==":
        return any(a == b for a, b in pairs)
    if op == "!=":
        return not any(a == b for a, b in pairs)
    a, b = pairs[0]
    return bool({">": b > a, ">=": b >= a, "<": b < a, "<=": b <= a}[op])  # type: ignore[index]


def matches_reference(q: str | None, mq: str | None, entity: dict[str, Any]) -> bool:
    """Whether an entity in v2 normalized form matches ``q`` and ``mq``, read directly
    off the v2 JSON: the meaning :func:`to_node` must give the stores."""
    for text, meta in ((q, False), (mq, True)):
        if text is None:
            continue
        for st in parse_statements(text, "mq" if meta else "q"):
            targets = _targets(st, entity, meta)
            if st.op is None:
                if bool(targets) == st.negated:
                    return False
            elif not any(_holds(st, c) for c in _spread(targets)):
                return False
    return True


# -- geo-queries -----------------------------------------------------------------------------

_GEORELS: Final = {
    "near": "near",
    "coveredBy": "within",
    "intersects": "intersects",
    "equals": "equals",
    "disjoint": "disjoint",
}


def _coords(text: str) -> list[list[float]]:
    out = []
    for pair in text.split(";"):
        parts = pair.split(",")
        try:
            lat, lon = (float(p) for p in parts)
        except ValueError as exc:
            raise BadRequestData(f"invalid coords {text!r}: use lat,lon;lat,lon") from exc
        if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180:
            raise BadRequestData(f"coords {pair!r} out of range")
        out.append([lon, lat])
    return out


def parse_v2_geo(
    georel: str | None, geometry: str | None, coords: str | None, geoproperty: str
) -> GeoQuery | None:
    """The geo-query of ``georel``/``geometry``/``coords`` on attribute ``geoproperty``."""
    given = {"georel": georel, "geometry": geometry, "coords": coords}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise BadRequestData(f"incomplete geo-query: missing {', '.join(missing)}")
    if georel is None or geometry is None or coords is None:
        raise BadRequestData("incomplete geo-query")
    rel, *mods = georel.split(";")
    if rel not in _GEORELS:
        raise BadRequestData(
            f"Invalid georel {georel!r}: use near, coveredBy, intersects, equals or disjoint"
        )
    distances: dict[str, float] = {}
    for mod in mods:
        name, sep, raw = mod.partition(":")
        if not sep:
            name, _, raw = mod.partition("==")
        if rel != "near" or name not in ("maxDistance", "minDistance"):
            raise BadRequestData(f"Invalid georel modifier {mod!r}")
        try:
            distance = float(raw)
        except ValueError as exc:
            raise BadRequestData(f"invalid distance {raw!r} in georel") from exc
        if not math.isfinite(distance) or distance < 0:
            raise BadRequestData(f"invalid distance {raw!r} in georel")
        distances[name] = distance
    if rel == "near" and not distances:
        raise BadRequestData("georel near needs maxDistance or minDistance")
    points = _coords(coords)
    shape: dict[str, Any]
    if geometry == "point":
        if len(points) != 1:
            raise BadRequestData("a point takes one lat,lon pair in coords")
        shape = {"type": "Point", "coordinates": points[0]}
    elif geometry == "line":
        shape = {"type": "LineString", "coordinates": points}
    elif geometry == "polygon":
        if len(points) < 4 or points[0] != points[-1]:
            raise BadRequestData("a polygon needs at least four pairs, the last equal to the first")
        shape = {"type": "Polygon", "coordinates": [points]}
    elif geometry == "box":
        if len(points) != 2:
            raise BadRequestData("a box takes two lat,lon pairs in coords")
        shape = box_polygon(points)
    else:
        raise BadRequestData(f"Invalid geometry {geometry!r}: use point, line, polygon or box")
    if rel == "near" and geometry != "point":
        raise BadRequestData("georel near needs geometry point")
    validate_geometry(shape, "geometry")
    return GeoQuery(
        _GEORELS[rel],
        shape,
        geoproperty,
        distances.get("maxDistance"),
        distances.get("minDistance"),
    )
