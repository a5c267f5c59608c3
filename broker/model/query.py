"""The backend-neutral query AST: what ``q``, ``scopeQ`` and geo-queries parse into.

Every backend (the SQL and MongoDB stores, the reference evaluator in
``broker.query.evaluate``) consumes these nodes, never the query text, so the
language is parsed (and its errors reported) in exactly one place.

The nodes are frozen dataclasses: they compare by value, which is what makes the
round-trip property ``parse_q(format_q(node)) == node`` testable, and they can be
shared between requests and cached without copying. Constructors check the
invariants the grammar guarantees (operators, value kinds, flattened boolean
nodes), so a hand-built AST cannot express something the text form cannot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Final, TypeAlias

from broker.errors import BadRequestData

#: Instance members (not sub-attributes) that ``attr.member`` may name in a path.
META_MEMBERS: Final = frozenset({"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt"})
#: Members that name the value itself; ``attr.value`` means ``attr``, so they are never kept.
VALUE_MEMBERS: Final = frozenset({"value", "object"})

EQUALITY_OPS: Final = ("==", "!=")
ORDER_OPS: Final = (">", ">=", "<", "<=")
PATTERN_OPS: Final = ("~=", "!~=")
OPERATORS: Final = (*EQUALITY_OPS, *ORDER_OPS, *PATTERN_OPS)
#: Terms one q or scopeQ expression may hold (and names one ``type`` expression): far more
#: than any real query, and few enough that every store can evaluate it (SQLite refuses
#: expression trees deeper than 1000).
MAX_TERMS: Final = 256
#: Largest value of a count parameter (limit, offset, lastN, joinLevel ...): far beyond any
#: listing, and within every store's integers.
MAX_COUNT: Final = 2**31 - 1
_COUNT_RE: Final = re.compile(r"[0-9]{1,10}")


def count_param(value: str, name: str, minimum: int = 0) -> int:
    """A decimal count from ``minimum`` to ``MAX_COUNT``; anything else is 400 saying so.

    Only ASCII digits: ``str.isdigit`` also admits digits ``int`` refuses (``²``).
    """
    if _COUNT_RE.fullmatch(value):
        n = int(value)
        if minimum <= n <= MAX_COUNT:
            return n
    raise BadRequestData(
        f"{name} must be an integer from {minimum} to {MAX_COUNT}, got {value[:40]!r}"
    )


class QuerySyntaxError(BadRequestData):
    """A syntax error in query text; ``position`` is 1-based, as in the message."""

    def __init__(self, detail: str, position: int) -> None:
        super().__init__(detail)
        self.position = position


def syntax_error(label: str, text: str, index: int, what: str) -> QuerySyntaxError:
    """Build the error for ``text`` at 0-based ``index``: message, position and a caret line.

    The caret line is indented so that it sits under the offending character when the
    text is printed at the start of a line, which is how clients usually show it.
    """
    position = index + 1
    shown = "".join(c if c.isprintable() else " " for c in text)
    detail = f"{label}: {what} at position {position}: {shown}\n{' ' * index}^"
    return QuerySyntaxError(detail, position)


# -- attribute paths ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttrPath:
    """``attr.sub1.sub2[key1][key2]``: an attribute, sub-attributes, then JSON keys.

    ``sub`` names sub-attributes, except that its last element may be one of
    :data:`META_MEMBERS` (``temp.observedAt``), in which case no JSON keys follow.
    ``json`` are keys into a JSON object value (``address[city]``). ``value`` and
    ``object`` are never path elements: the compared value is implied by the type
    of the instance. Names are terms as written until ``resolve_q`` expands them.
    """

    attr: str
    sub: tuple[str, ...] = ()
    json: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.attr:
            raise ValueError("attribute name must not be empty")
        for i, name in enumerate(self.sub):
            if not name or name in VALUE_MEMBERS:
                raise ValueError(f"invalid path element {name!r}")
            if name in META_MEMBERS and i != len(self.sub) - 1:
                raise ValueError(f"{name} must be the last element of a path")
        if self.meta is not None and self.json:
            raise ValueError(f"{self.meta} has no JSON keys")
        if not all(self.json):
            raise ValueError("JSON keys must not be empty")

    @property
    def meta(self) -> str | None:
        """The instance member the path ends with (``observedAt`` ...), if any."""
        if self.sub and self.sub[-1] in META_MEMBERS:
            return self.sub[-1]
        return None

    @property
    def sub_attributes(self) -> tuple[str, ...]:
        """The sub-attribute names of the path (``sub`` without a trailing meta member)."""
        return self.sub[:-1] if self.meta is not None else self.sub


# -- temporal text --------------------------------------------------------------------------

_TZ = r"(?:Z|[+-]\d{2}(?::?\d{2})?)"
_CLOCK = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
#: ISO 8601 extended forms accepted for date-times, dates and times, in the query text and
#: (for comparisons) in stored string values alike. Without an offset, UTC is meant.
DATETIME_RE: Final = re.compile(rf"\d{{4}}-\d{{2}}-\d{{2}}T{_CLOCK}{_TZ}?")
DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME_RE: Final = re.compile(rf"{_CLOCK}{_TZ}?")
_DAY_US: Final = 86_400_000_000


def parse_datetime(text: str) -> datetime | None:
    """The UTC instant of an ISO date-time text, or None if it is not one.

    Fractions beyond microseconds are truncated; a missing offset means UTC.
    """
    if not DATETIME_RE.fullmatch(text):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_date(text: str) -> date | None:
    """The date of an ISO ``YYYY-MM-DD`` text, or None if it is not one."""
    if not DATE_RE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def parse_time(text: str) -> int | None:
    """Microseconds since midnight UTC of an ISO time text (offset applied, modulo one day)."""
    if not TIME_RE.fullmatch(text):
        return None
    try:
        parsed = time.fromisoformat(text)
    except ValueError:
        return None
    us = ((parsed.hour * 60 + parsed.minute) * 60 + parsed.second) * 1_000_000
    us += parsed.microsecond
    offset = parsed.utcoffset()
    if offset is not None:
        us -= (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    return us % _DAY_US


# -- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DateTime:
    """An unquoted date-time literal (``2018-01-01T12:00:00Z``), kept as written.

    Keeping the text (not a ``datetime``) makes printing round-trip exactly;
    :attr:`instant` is the normalised (UTC) value comparisons use.
    """

    text: str

    def __post_init__(self) -> None:
        if parse_datetime(self.text) is None:
            raise ValueError(f"invalid date-time {self.text!r}")

    @property
    def instant(self) -> datetime:
        parsed = parse_datetime(self.text)
        assert parsed is not None
        return parsed


@dataclass(frozen=True, slots=True)
class Date:
    """An unquoted date literal (``2018-01-01``), kept as written."""

    text: str

    def __post_init__(self) -> None:
        if parse_date(self.text) is None:
            raise ValueError(f"invalid date {self.text!r}")

    @property
    def day(self) -> date:
        parsed = parse_date(self.text)
        assert parsed is not None
        return parsed


@dataclass(frozen=True, slots=True)
class Time:
    """An unquoted time literal (``12:00:00Z``), kept as written."""

    text: str

    def __post_init__(self) -> None:
        if parse_time(self.text) is None:
            raise ValueError(f"invalid time {self.text!r}")

    @property
    def utc_us(self) -> int:
        """Microseconds since midnight UTC."""
        parsed = parse_time(self.text)
        assert parsed is not None
        return parsed


@dataclass(frozen=True, slots=True)
class URI:
    """An unquoted URI (``urn:ngsi-ld:Building:1``); compares like the string it spells."""

    text: str


Scalar: TypeAlias = str | int | float | bool | DateTime | Date | Time | URI


@dataclass(frozen=True, slots=True)
class Range:
    """``low..high``, both ends included; both ends are of one comparable kind."""

    low: Scalar
    high: Scalar

    def __post_init__(self) -> None:
        kind = comparable_kind(self.low)
        if kind is None or kind != comparable_kind(self.high):
            raise ValueError(f"range bounds {self.low!r}..{self.high!r} are not of one kind")


Value: TypeAlias = Scalar | Range | tuple[Scalar, ...]


def comparable_kind(value: Any) -> str | None:
    """The ordering family of a literal: number, string, datetime, date, time, or None.

    Booleans and URIs are not ordered (the grammar only allows ``==``/``!=`` on
    them), so they have no kind here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, DateTime):
        return "datetime"
    if isinstance(value, Date):
        return "date"
    if isinstance(value, Time):
        return "time"
    return None


def _check_scalar(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers in queries must be finite")
    if not isinstance(value, str | int | float | bool | DateTime | Date | Time | URI):
        raise ValueError(f"not a query value: {value!r}")


# -- nodes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """``path op value``.

    Value lists (tuples, at least two scalars) and ranges only go with ``==``/``!=``;
    ``~=``/``!~=`` take a pattern string; ordering operators take an ordered kind
    (numbers, strings, dates, date-times, times).
    """

    path: AttrPath
    op: str
    value: Value

    def __post_init__(self) -> None:
        op, value = self.op, self.value
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}")
        if isinstance(value, tuple):
            if op not in EQUALITY_OPS or len(value) < 2:
                raise ValueError("value lists need == or != and at least two values")
            for item in value:
                _check_scalar(item)
        elif isinstance(value, Range):
            if op not in EQUALITY_OPS:
                raise ValueError("ranges need == or !=")
            _check_scalar(value.low)
            _check_scalar(value.high)
        else:
            _check_scalar(value)
            if op in PATTERN_OPS and not isinstance(value, str):
                raise ValueError(f"{op} needs a pattern string")
            if op in ORDER_OPS and comparable_kind(value) is None:
                raise ValueError(f"{op} needs a number, string, date, date-time or time")


@dataclass(frozen=True, slots=True)
class Exists:
    """``attr`` (the path is present) or ``!attr`` (it is not)."""

    path: AttrPath
    negated: bool = False


@dataclass(frozen=True, slots=True)
class And:
    """``a;b;...``: all items hold. Flat (no And directly inside) with two items or more."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        _check_items(self.items, And)


@dataclass(frozen=True, slots=True)
class Or:
    """``a|b|...``: some item holds. Flat (no Or directly inside) with two items or more."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        _check_items(self.items, Or)


Node: TypeAlias = Comparison | Exists | And | Or


def _check_items(items: tuple[Any, ...], cls: type) -> None:
    if len(items) < 2:
        raise ValueError(f"{cls.__name__} needs at least two items")
    for item in items:
        if isinstance(item, cls) or not isinstance(item, Comparison | Exists | And | Or):
            raise ValueError(f"{cls.__name__} items must be flattened nodes, got {item!r}")


def all_of(items: list[Node] | tuple[Node, ...]) -> Node:
    """And of ``items``, flattened; a single item is returned as is."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def any_of(items: list[Node] | tuple[Node, ...]) -> Node:
    """Or of ``items``, flattened; a single item is returned as is."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Or) else (item,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# -- scopeQ ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopePattern:
    """One scopeQ pattern, as segments: ``/a/+/#`` is ``("a", "+", "#")``, ``/`` is ``()``.

    ``+`` stands for exactly one level, ``#`` (last only) for any number of levels,
    none included.
    """

    segments: tuple[str, ...]

    def __post_init__(self) -> None:
        for i, seg in enumerate(self.segments):
            if seg not in ("+", "#") and (
                not seg or any(c in "/+#;|,()" or c.isspace() or not c.isprintable() for c in seg)
            ):
                raise ValueError(f"invalid scope segment {seg!r}")
            if seg == "#" and i != len(self.segments) - 1:
                raise ValueError("# must be the last segment of a scope pattern")


@dataclass(frozen=True, slots=True)
class ScopeAnd:
    """``a;b``: every pattern is matched (each by some scope of the entity)."""

    items: tuple[ScopeQuery, ...]

    def __post_init__(self) -> None:
        _check_scope_items(self.items, ScopeAnd)


@dataclass(frozen=True, slots=True)
class ScopeOr:
    """``a|b``: some pattern is matched."""

    items: tuple[ScopeQuery, ...]

    def __post_init__(self) -> None:
        _check_scope_items(self.items, ScopeOr)


ScopeQuery: TypeAlias = ScopePattern | ScopeAnd | ScopeOr


def _check_scope_items(items: tuple[Any, ...], cls: type) -> None:
    if len(items) < 2:
        raise ValueError(f"{cls.__name__} needs at least two items")
    for item in items:
        if isinstance(item, cls) or not isinstance(item, ScopePattern | ScopeAnd | ScopeOr):
            raise ValueError(f"{cls.__name__} items must be flattened scope nodes, got {item!r}")


# -- geo-queries ----------------------------------------------------------------------------

GEORELS: Final = ("near", "within", "contains", "intersects", "equals", "disjoint", "overlaps")


@dataclass(frozen=True)
class GeoQuery:
    """A geo-query: ``<entity geometry> georel <query geometry>``.

    ``geometry`` is a validated GeoJSON geometry (lon/lat). ``geoproperty`` is the
    attribute holding the entity's geometry: a term as given by the client until
    :func:`broker.query.geo.resolve_geo` expands it. ``near`` carries
    ``max_distance`` and/or ``min_distance`` in metres; other relations carry none.
    Not hashable (the geometry is a dict).
    """

    georel: str
    geometry: dict[str, Any]
    geoproperty: str = "location"
    max_distance: float | None = None
    min_distance: float | None = None

    def __post_init__(self) -> None:
        if self.georel not in GEORELS:
            raise ValueError(f"unknown georel {self.georel!r}")
        distances = [d for d in (self.max_distance, self.min_distance) if d is not None]
        if self.georel == "near" and not distances:
            raise ValueError("near needs maxDistance or minDistance")
        if self.georel != "near" and distances:
            raise ValueError("only near takes a distance")
        for d in distances:
            if isinstance(d, bool) or not math.isfinite(d) or d < 0:
                raise ValueError(f"invalid distance {d!r}")


BLANKS: Final = " \t\r\n"


@dataclass
class Cursor:
    """Position in a query text, shared by the q and scopeQ parsers."""

    text: str
    label: str = "q"
    i: int = 0
    depth: int = 0
    terms: int = 0

    def count_term(self) -> None:
        """One more term; more than ``MAX_TERMS`` is refused before any store sees it."""
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.error(f"more than {MAX_TERMS} terms")

    def error(self, what: str, at: int | None = None) -> QuerySyntaxError:
        return syntax_error(self.label, self.text, self.i if at is None else at, what)

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def blanks(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in BLANKS:
            self.i += 1
