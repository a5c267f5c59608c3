"""The NGSI v2 Simple Query Language: parsing, and the translation to the query AST held
against the reference reading of the v2 JSON (STYLE item 14)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.v2map import V2Mapper
from broker.errors import BadRequestData
from broker.jsonld.context import ContextResolver
from broker.model.query import And, AttrPath, Comparison, DateTime, Exists, Range
from broker.query.evaluate import matches_geo, matches_q
from broker.query.v2q import (
    matches_reference,
    parse_statements,
    parse_v2_geo,
    parse_v2_q,
    to_node,
)

DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
MAPPER = V2Mapper(ContextResolver().core)
NOW = "2026-01-01T00:00:00.000Z"


def expand(name: str) -> str:
    return MAPPER.expand(name)


def test_statements_and_their_ast() -> None:
    node = parse_v2_q("temperature>20;!humidity;color==black,red;'a.b'.c:'x,y'", None, expand)
    items = node.items  # type: ignore[union-attr]
    t = DEFAULT_VOCAB + "temperature"
    assert items[0] == Comparison(AttrPath(t), ">", 20)
    assert items[1] == Exists(AttrPath(DEFAULT_VOCAB + "humidity"), negated=True)
    assert items[2] == Comparison(AttrPath(DEFAULT_VOCAB + "color"), "==", ("black", "red"))
    assert items[3] == Comparison(AttrPath(DEFAULT_VOCAB + "a.b", (), ("c",)), "==", "x,y")


def test_values_are_typed_as_orion_types_them() -> None:
    (s,) = parse_statements("d==2018-01-01..2018-12-31T10:00:00+09:00")
    assert s.is_range
    assert s.values == (
        DateTime("2018-01-01T00:00:00.000Z"),
        DateTime("2018-12-31T01:00:00.000Z"),
    )
    assert parse_statements("n==10..20.5")[0].values == (10, 20.5)
    assert parse_statements("title=='20'")[0].values == ("20",)
    assert parse_statements("flag==true")[0].values == (True,)
    assert parse_statements("名前==会議室")[0].values == ("会議室",)


def test_mq_paths_reach_metadata_and_members() -> None:
    node = parse_v2_q(None, "temperature.accuracy>0.5;temperature.unitCode==CEL", expand)
    assert isinstance(node, And)
    a, b = node.items
    assert isinstance(a, Comparison)
    assert isinstance(b, Comparison)
    assert a.path == AttrPath(DEFAULT_VOCAB + "temperature", (DEFAULT_VOCAB + "accuracy",))
    assert b.path == AttrPath(DEFAULT_VOCAB + "temperature", ("unitCode",))
    created = parse_v2_q(None, "temperature.dateCreated>2020-01-01", expand)
    assert created.path.sub == ("createdAt",)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    ["", "a==", "a>1,2", "a>true", "a==1..x", "a=='x", "a~=(", "a.==1"],
)
def test_bad_query_text_is_400(text: str) -> None:
    with pytest.raises(BadRequestData):
        parse_v2_q(text, None, expand)


def test_range_node() -> None:
    node = parse_v2_q("n!=1..5", None, expand)
    assert node == Comparison(AttrPath(DEFAULT_VOCAB + "n"), "!=", Range(1, 5))


def test_geo_queries_in_v2_order() -> None:
    geo = parse_v2_geo("near;maxDistance:1000", "point", "35.68,139.76", expand("location"))
    assert geo is not None
    assert geo.geometry == {"type": "Point", "coordinates": [139.76, 35.68]}
    assert geo.max_distance == 1000
    box = parse_v2_geo("coveredBy", "box", "35.0,139.0;36.0,140.0", "loc")
    assert box is not None
    assert box.georel == "within"
    ent = MAPPER.entity(
        {
            "id": "Shelter1",
            "type": "Shelter",
            "location": {"type": "geo:point", "value": "35.5, 139.5"},
        },
        NOW,
        None,
    )
    inside = parse_v2_geo("coveredBy", "box", "35.0,139.0;36.0,140.0", expand("location"))
    outside = parse_v2_geo("coveredBy", "box", "36.0,139.0;37.0,140.0", expand("location"))
    assert inside is not None
    assert outside is not None
    assert matches_geo(inside, ent)
    assert not matches_geo(outside, ent)
    for bad in (
        ("near", "point", "35,139"),
        ("near;maxDistance:x", "point", "35,139"),
        ("within", "point", "35,139"),
        ("coveredBy", "polygon", "35,139;36,139;36,140"),
        ("coveredBy", "box", "95,139;36,140"),
    ):
        with pytest.raises(BadRequestData):
            parse_v2_geo(*bad, "location")


# -- translation against the reference ------------------------------------------------------

WORDS = st.sampled_from(["a", "b", "ab", "ba", "東京", "x y"])
DATES = st.sampled_from(
    ["2020-01-01T00:00:00.000Z", "2021-06-30T12:30:00.000Z", "2019-12-31T23:59:59.000Z"]
)
SCALARS = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([0.5, -1.5, 2.25]),
    st.booleans(),
    WORDS,
)
ATTRS = ("temp", "name", "info")


@st.composite
def attributes(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["scalar", "list", "object", "date"]))
    if kind == "scalar":
        attr: dict[str, Any] = {"value": draw(SCALARS)}
    elif kind == "list":
        attr = {"value": draw(st.lists(SCALARS, min_size=1, max_size=3))}
    elif kind == "object":
        attr = {"value": {"k": draw(SCALARS), "m": {"k": draw(SCALARS)}}}
    else:
        attr = {"value": draw(DATES), "type": "DateTime"}
    if draw(st.booleans()):
        attr["metadata"] = {"accuracy": {"value": draw(SCALARS)}}
    return attr


@st.composite
def entities(draw: Any) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(ATTRS), unique=True, max_size=3))
    return {"id": "E1", "type": "T", **{n: draw(attributes()) for n in names}}


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


@st.composite
def statements(draw: Any, meta: bool) -> str:
    attr = draw(st.sampled_from(ATTRS))
    path = f"{attr}.accuracy" if meta else draw(st.sampled_from([attr, f"{attr}.k", f"{attr}.m.k"]))
    form = draw(
        st.sampled_from(["exists", "not", "eq", "ne", "order", "list", "range", "match", "date"])
    )
    if form == "exists":
        return path
    if form == "not":
        return "!" + path
    if form in ("eq", "ne"):
        return f"{path}{'==' if form == 'eq' else '!='}{literal(draw(SCALARS))}"
    if form == "order":
        value = draw(st.one_of(st.integers(-5, 5), WORDS))
        return f"{path}{draw(st.sampled_from(['>', '>=', '<', '<=']))}{literal(value)}"
    if form == "list":
        values = draw(st.lists(SCALARS, min_size=2, max_size=3))
        return f"{path}{draw(st.sampled_from(['==', '!=']))}{','.join(literal(v) for v in values)}"
    if form == "range":
        low, high = sorted(draw(st.lists(st.integers(-5, 5), min_size=2, max_size=2)))
        return f"{path}{draw(st.sampled_from(['==', '!=']))}{low}..{high}"
    if form == "date":
        return f"{path}{draw(st.sampled_from(['>', '<', '==']))}{draw(DATES)[:19]}Z"
    return f"{path}~={draw(st.sampled_from(['a', '^b', '京', 'a$']))}"


@settings(max_examples=400, deadline=None)
@given(
    entities(),
    st.lists(statements(meta=False), min_size=1, max_size=3),
    st.lists(statements(meta=True), max_size=2),
)
def test_translation_matches_the_reference(
    body: dict[str, Any], qs: list[str], mqs: list[str]
) -> None:
    q = ";".join(qs)
    mq = ";".join(mqs) or None
    internal = MAPPER.entity(body, NOW, None)
    rendered = MAPPER.entity_out(internal)
    node = parse_v2_q(q, mq, expand)
    assert node is not None
    assert matches_q(node, internal) == matches_reference(q, mq, rendered), (q, mq, rendered)


def test_to_node_of_metadata_needs_two_tokens() -> None:
    with pytest.raises(BadRequestData):
        to_node(parse_statements("temp>1", "mq"), expand, meta=True)
