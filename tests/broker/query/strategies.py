"""Hypothesis strategies for query ASTs (only valid ones: the constructors check)."""

from __future__ import annotations

import re
from datetime import date

from hypothesis import strategies as st

from broker.model.query import (
    META_MEMBERS,
    URI,
    VALUE_MEMBERS,
    AttrPath,
    Comparison,
    Date,
    DateTime,
    Exists,
    Node,
    Range,
    Scalar,
    ScopePattern,
    ScopeQuery,
    Time,
    all_of,
    any_of,
)
from broker.query.scopeq import scope_all_of, scope_any_of

NAME_CHARS = "abcxyzABZ019_:-/#@温度é"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=8)
sub_names = names.filter(lambda n: n not in META_MEMBERS and n not in VALUE_MEMBERS)
#: JSON keys of a trailing path; a dot separates keys there ("[a.b]" is "[a][b]", clause 4.9)
keys = st.text(alphabet=NAME_CHARS, min_size=1, max_size=6)


@st.composite
def attr_paths(draw: st.DrawFn) -> AttrPath:
    attr = draw(names)
    sub = draw(st.lists(sub_names, max_size=2))
    if draw(st.booleans()) and draw(st.booleans()):
        return AttrPath(attr, (*sub, draw(st.sampled_from(sorted(META_MEMBERS)))))
    return AttrPath(attr, tuple(sub), tuple(draw(st.lists(keys, max_size=2))))


_tz = st.sampled_from(["", "Z", "+09:00", "-05:30", "+0900", "-03", "+00:00"])


@st.composite
def clocks(draw: st.DrawFn) -> str:
    text = f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}"
    if draw(st.booleans()):
        text += f":{draw(st.integers(0, 59)):02d}"
        if draw(st.booleans()):
            text += "." + draw(st.text(alphabet="0123456789", min_size=1, max_size=9))
    return text + draw(_tz)


@st.composite
def date_texts(draw: st.DrawFn) -> str:
    day = draw(st.dates(min_value=date(1000, 1, 1)))
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


datetimes = st.builds(lambda d, c: DateTime(f"{d}T{c}"), date_texts(), clocks())
dates = st.builds(Date, date_texts())
times = st.builds(Time, clocks())
uris = st.from_regex(
    re.compile(
        r"urn:ngsi-ld:[A-Za-z]{1,6}:[0-9a-z.:-]{1,8}|https?://[a-z]{1,6}\.[a-z]{2,3}(/[a-z0-9._~%-]{0,6}){0,3}"
    ),
    fullmatch=True,
).map(URI)
numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
strings = st.text(max_size=10)
ordered: st.SearchStrategy[Scalar] = st.one_of(numbers, strings, datetimes, dates, times)
scalars: st.SearchStrategy[Scalar] = st.one_of(ordered, st.booleans(), uris)
ranges = st.one_of(
    st.builds(Range, numbers, numbers),
    st.builds(Range, strings, strings),
    st.builds(Range, datetimes, datetimes),
    st.builds(Range, dates, dates),
    st.builds(Range, times, times),
)
value_lists = st.lists(scalars, min_size=2, max_size=4).map(tuple)

_PIECES = [
    "a",
    "(a|b)",
    "[;)|]",
    r"\)",
    r"\(",
    r"\\",
    ";",
    "|",
    '"',
    " ",
    "x*",
    ".+",
    r"\d",
    "[^]]",
]


def _valid(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return bool(pattern)


patterns = (
    st.lists(
        st.one_of(st.sampled_from(_PIECES), st.text(max_size=4).map(re.escape)),
        min_size=1,
        max_size=5,
    )
    .map("".join)
    .filter(_valid)
)


def comparisons(path: st.SearchStrategy[AttrPath]) -> st.SearchStrategy[Comparison]:
    return st.one_of(
        st.builds(
            Comparison, path, st.sampled_from(["==", "!="]), st.one_of(scalars, ranges, value_lists)
        ),
        st.builds(Comparison, path, st.sampled_from([">", ">=", "<", "<="]), ordered),
        st.builds(Comparison, path, st.sampled_from(["~=", "!~="]), patterns),
    )


leaves: st.SearchStrategy[Node] = st.one_of(
    st.builds(Exists, attr_paths(), st.booleans()), comparisons(attr_paths())
)


def _combine(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    groups = st.lists(children, min_size=2, max_size=4)
    return st.one_of(groups.map(all_of), groups.map(any_of))


nodes: st.SearchStrategy[Node] = st.recursive(leaves, _combine, max_leaves=12)

scope_segments = st.text(alphabet="abcXYZ019_-.:温", min_size=1, max_size=5)


@st.composite
def scope_patterns(draw: st.DrawFn) -> ScopePattern:
    segments = draw(st.lists(st.one_of(scope_segments, st.just("+")), max_size=4))
    if draw(st.booleans()):
        segments.append("#")
    return ScopePattern(tuple(segments))


def _combine_scopes(children: st.SearchStrategy[ScopeQuery]) -> st.SearchStrategy[ScopeQuery]:
    groups = st.lists(children, min_size=2, max_size=4)
    return st.one_of(groups.map(scope_all_of), groups.map(scope_any_of))


scope_queries: st.SearchStrategy[ScopeQuery] = st.recursive(
    scope_patterns(), _combine_scopes, max_leaves=10
)
