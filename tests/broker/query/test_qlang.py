"""Parsing, printing and resolving ``q`` (NGSI-LD clause 4.9)."""

from __future__ import annotations

import pytest

from broker.errors import BadRequestData
from broker.model.query import (
    URI,
    And,
    AttrPath,
    Comparison,
    Date,
    DateTime,
    Exists,
    Or,
    QuerySyntaxError,
    Range,
    Time,
)
from broker.query.qlang import attribute_names, format_q, parse_q, resolve_q

T = AttrPath("temp")


def cmp(op: str, value: object, path: AttrPath = T) -> Comparison:
    return Comparison(path, op, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("temp==5", 5),
        ("temp==-5", -5),
        ("temp==0", 0),
        ("temp==2.5", 2.5),
        ("temp==-2.5", -2.5),
        ("temp==1e3", 1000.0),
        ("temp==1.5E-2", 0.015),
        ("temp==-4e+2", -400.0),
        ("temp==true", True),
        ("temp==false", False),
        ('temp=="hello"', "hello"),
        ('temp==""', ""),
        ('temp=="say \\"hi\\""', 'say "hi"'),
        ('temp=="back\\\\slash"', "back\\slash"),
        ('temp=="keep \\d"', "keep \\d"),
        ('temp=="a;b|c)(,"', "a;b|c)(,"),
        ("temp==hello", "hello"),
        ("temp==Komae-shi", "Komae-shi"),
        ("temp==5abc", "5abc"),
        ("temp==東京", "東京"),
        ("temp==2018-01-01T12:00:00Z", DateTime("2018-01-01T12:00:00Z")),
        ("temp==2018-01-01T12:00:00.123Z", DateTime("2018-01-01T12:00:00.123Z")),
        ("temp==2018-01-01T12:00:00+09:00", DateTime("2018-01-01T12:00:00+09:00")),
        ("temp==2018-01-01T12:00-0530", DateTime("2018-01-01T12:00-0530")),
        ("temp==2018-01-01T12:00:00", DateTime("2018-01-01T12:00:00")),
        ("temp==2018-01-01", Date("2018-01-01")),
        ("temp==12:00:00Z", Time("12:00:00Z")),
        ("temp==12:00", Time("12:00")),
        ("temp==12:00:00.5+09:00", Time("12:00:00.5+09:00")),
        ("temp==urn:ngsi-ld:Building:1", URI("urn:ngsi-ld:Building:1")),
        ("temp==http://example.org/a.b?c=d#e", URI("http://example.org/a.b?c=d#e")),
        ("temp==ex:Thing", URI("ex:Thing")),
        ("temp==1..5", Range(1, 5)),
        ("temp==-5..-1.5", Range(-5, -1.5)),
        ("temp==1e2..2e2", Range(100.0, 200.0)),
        ('temp=="a".."b"', Range("a", "b")),
        ("temp==2018-01-01..2018-12-31", Range(Date("2018-01-01"), Date("2018-12-31"))),
        (
            "temp==2018-01-01T00:00:00Z..2018-01-02T00:00:00Z",
            Range(DateTime("2018-01-01T00:00:00Z"), DateTime("2018-01-02T00:00:00Z")),
        ),
        ("temp==08:00..17:00", Range(Time("08:00"), Time("17:00"))),
        ("temp==urn:a..b", URI("urn:a..b")),
        ("temp==a..b", "a..b"),
        ("temp==1,2,3", (1, 2, 3)),
        ('temp=="a",b,true,urn:x:y,2.5', ("a", "b", True, URI("urn:x:y"), 2.5)),
        ("temp==2018-01-01,12:00Z", (Date("2018-01-01"), Time("12:00Z"))),
    ],
)
def test_values(text: str, value: object) -> None:
    node = parse_q(text)
    assert node == cmp("==", value)
    assert repr(node) == repr(cmp("==", value))


@pytest.mark.parametrize("op", ["==", "!=", ">", ">=", "<", "<=", "~=", "!~="])
def test_operators(op: str) -> None:
    value = "x" if "~" in op else 3
    assert parse_q(f"temp{op}{'x' if '~' in op else '3'}") == cmp(op, value)


def test_unequal_takes_lists_and_ranges() -> None:
    assert parse_q("temp!=1,2") == cmp("!=", (1, 2))
    assert parse_q("temp!=1..2") == cmp("!=", Range(1, 2))


def test_an_unquoted_uri_with_an_ordering_operator_is_a_string() -> None:
    assert parse_q("name>urn:a") == cmp(">", "urn:a", AttrPath("name"))


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("temp", AttrPath("temp")),
        ("temp.value", AttrPath("temp")),
        ("rel.object", AttrPath("rel")),
        ("temp.accuracy", AttrPath("temp", ("accuracy",))),
        ("temp.accuracy.value", AttrPath("temp", ("accuracy",))),
        ("temp.a.b", AttrPath("temp", ("a", "b"))),
        ("temp.observedAt", AttrPath("temp", ("observedAt",))),
        ("temp.a.unitCode", AttrPath("temp", ("a", "unitCode"))),
        ("temp.datasetId", AttrPath("temp", ("datasetId",))),
        ("temp.createdAt", AttrPath("temp", ("createdAt",))),
        ("temp.modifiedAt", AttrPath("temp", ("modifiedAt",))),
        ("address[city]", AttrPath("address", (), ("city",))),
        # clause 4.9: TrailingPath = "[" AttrName *("." AttrName) "]"
        ("address[a][b.c]", AttrPath("address", (), ("a", "b", "c"))),
        ("address[a.b.c]", AttrPath("address", (), ("a", "b", "c"))),
        ("address[street-address.number]", AttrPath("address", (), ("street-address", "number"))),
        ("address.value[city]", AttrPath("address", (), ("city",))),
        ("address.sub[city]", AttrPath("address", ("sub",), ("city",))),
        ("ex:temp", AttrPath("ex:temp")),
        ("温度", AttrPath("温度")),
        ("_a-b/c#d@e", AttrPath("_a-b/c#d@e")),
    ],
)
def test_paths(text: str, path: AttrPath) -> None:
    assert parse_q(text) == Exists(path)
    assert parse_q(f"!{text}") == Exists(path, negated=True)
    assert parse_q(f"{text}==1") == Comparison(path, "==", 1)


def test_path_properties() -> None:
    path = AttrPath("temp", ("a", "observedAt"))
    assert path.meta == "observedAt"
    assert path.sub_attributes == ("a",)
    assert AttrPath("temp", ("a",)).meta is None


def test_precedence_and_grouping() -> None:
    a, b, c, d = (Exists(AttrPath(n)) for n in "abcd")
    assert parse_q("a;b|c") == Or((And((a, b)), c))
    assert parse_q("a|b;c") == Or((a, And((b, c))))
    assert parse_q("(a|b);c") == And((Or((a, b)), c))
    assert parse_q("a;(b;c);d") == And((a, b, c, d))
    assert parse_q("(a|(b|c))|d") == Or((a, b, c, d))
    assert parse_q("((a))") == a
    assert parse_q("!a;b") == And((Exists(AttrPath("a"), negated=True), b))
    assert parse_q(" a ; ( b | c ) ") == And((a, Or((b, c))))
    assert parse_q('temp > 5 ; name == "x"') == And((cmp(">", 5), cmp("==", "x", AttrPath("name"))))
    assert parse_q("temp==1 , 2") == cmp("==", (1, 2))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name~=^Ko.*e$", "^Ko.*e$"),
        ("name~=(?i)komae", "(?i)komae"),
        ("name~=(a|b)c", "(a|b)c"),
        ("name~=[;|)]x", "[;|)]x"),
        ("name~=[]a]", "[]a]"),
        ("name~=a\\)b", "a\\)b"),
        ("name~=a b", "a b"),
        ('name~="a;b|c\\)"', "a;b|c\\)"),
        ('name~="\\\\d+"', "\\d+"),
        ('name~= "x"', "x"),
        ('name~=a"b', 'a"b'),
    ],
)
def test_patterns(text: str, pattern: str) -> None:
    assert parse_q(text) == Comparison(AttrPath("name"), "~=", pattern)


def test_pattern_ends_at_top_level_delimiters() -> None:
    name = AttrPath("name")
    assert parse_q("name~=ab;temp>1") == And((Comparison(name, "~=", "ab"), cmp(">", 1)))
    assert parse_q("name~=ab|temp>1") == Or((Comparison(name, "~=", "ab"), cmp(">", 1)))
    assert parse_q("(name!~=a(b|c))") == Comparison(name, "!~=", "a(b|c)")


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("temp>>5", 6, "unexpected '>'"),
        ("", 1, "empty query"),
        ("   ", 4, "empty query"),
        ("temp==", 7, "unexpected end of input"),
        ("temp==;a", 7, "unexpected ';'"),
        ("(temp", 6, "unexpected end of input"),
        ("temp)", 5, "unexpected ')'"),
        ("a;;b", 3, "unexpected ';'"),
        ("a||b", 3, "unexpected '|'"),
        (";a", 1, "unexpected ';'"),
        ("a;", 3, "unexpected end of input"),
        ("a b", 3, "unexpected 'b'"),
        ("temp==5 6", 9, "unexpected '6'"),
        ('temp=="abc', 7, "unterminated string"),
        ("temp==1..", 10, "unexpected end of input"),
        ("temp==1..abc", 10, "range bounds must be of the same type"),
        ("temp==1..2018-01-01", 10, "range bounds must be of the same type"),
        ('temp=="a"..b', 12, "range bounds must be of the same type"),
        ("temp==2018-02-30", 7, "invalid date '2018-02-30'"),
        ("temp==2018-01-01T25:00:00Z", 7, "invalid date-time"),
        ("temp==25:00", 7, "invalid time"),
        ("temp==1..2018-13-01", 10, "invalid date"),
        ("temp>true", 6, "cannot compare booleans"),
        ("temp>1,2", 7, "value lists need == or !="),
        ("temp>=1..2", 5, "ranges need == or !="),
        ("temp==1..2,3", 7, "a value list cannot hold ranges"),
        ("temp==1,2..3", 9, "a value list cannot hold ranges"),
        ("temp==1,", 9, "unexpected end of input"),
        ("temp.observedAt.x", 16, "nothing may follow observedAt"),
        ("temp.observedAt[x]", 16, "observedAt has no JSON keys"),
        ("temp.value.x", 6, "value must be the last element"),
        ("temp[a].b", 8, "sub-attributes must come before [keys]"),
        ("temp[a", 7, "unexpected end of input"),
        ("temp[]", 6, "unexpected ']', expected a key"),
        ("temp[a.]", 8, "unexpected ']', expected a key"),
        ("temp[.a]", 6, "unexpected '.', expected a key"),
        ("temp[a..b]", 8, "unexpected '.', expected a key"),
        ("temp.", 6, "expected a sub-attribute name"),
        ("temp..a", 6, "unexpected '.'"),
        ("!", 2, "expected an attribute name"),
        ("!(a)", 2, "unexpected '('"),
        ("==5", 1, "unexpected '='"),
        ("name~=", 7, "expected a pattern"),
        ("name~=;a", 7, "expected a pattern"),
        ("name~=a(b", 8, "invalid pattern"),
        ("name~=ab)c", 9, "unexpected ')'"),
        ('name~="(x"', 7, "invalid pattern"),
        ("temp==(1)", 7, "unexpected '('"),
        ("(" * 40 + "a" + ")" * 40, 33, "nested deeper than 32"),
    ],
)
def test_syntax_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(BadRequestData) as info:
        parse_q(text)
    err = info.value
    assert isinstance(err, QuerySyntaxError)
    assert err.position == position
    first, caret = err.detail.split("\n")
    assert first.startswith("q: ")
    assert message in first
    assert first.endswith(f" at position {position}: {text}")
    assert caret == " " * (position - 1) + "^"


def test_error_message_format() -> None:
    with pytest.raises(BadRequestData) as info:
        parse_q("temp>>5")
    assert info.value.detail == (
        "q: unexpected '>', expected a value at position 6: temp>>5\n     ^"
    )
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("temp == 5", "temp==5"),
        ("name==Komae", 'name=="Komae"'),
        ("temp==1e3", "temp==1000.0"),
        ("temp.value>1", "temp>1"),
        ("(a;b);c", "a;b;c"),
        ("(a|b);(c|d)", "(a|b);(c|d)"),
        ("a|(b;c)", "a|b;c"),
        ('n~="a;b"', 'n~="a;b"'),
        ('n~="ab"', "n~=ab"),
        ('n~=" a"', 'n~=" a"'),
        ('n~="\\"a"', 'n~="\\"a"'),
        ('n~="a\\\\\\\\"', "n~=a\\\\"),
        ('n~="a "', 'n~="a "'),
        ("r==urn:x:1,urn:x:2", "r==urn:x:1,urn:x:2"),
        (
            "t==2018-01-01T00:00Z..2018-01-02T00:00+09:00",
            "t==2018-01-01T00:00Z..2018-01-02T00:00+09:00",
        ),
    ],
)
def test_format(text: str, canonical: str) -> None:
    node = parse_q(text)
    assert format_q(node) == canonical
    assert parse_q(canonical) == node


def test_resolve_and_attribute_names() -> None:
    node = parse_q("temp.accuracy.observedAt>2018-01-01T00:00:00Z;(addr[city]==x|!temp|ex:b.c)")

    def expand(term: str) -> str:
        return (
            term.replace("ex:", "http://example.org/") if ":" in term else f"https://t.org/{term}"
        )

    resolved = resolve_q(node, expand)
    assert resolved == And(
        (
            Comparison(
                AttrPath("https://t.org/temp", ("https://t.org/accuracy", "observedAt")),
                ">",
                DateTime("2018-01-01T00:00:00Z"),
            ),
            Or(
                (
                    Comparison(AttrPath("https://t.org/addr", (), ("city",)), "==", "x"),
                    Exists(AttrPath("https://t.org/temp"), negated=True),
                    Exists(AttrPath("http://example.org/b", ("https://t.org/c",))),
                )
            ),
        )
    )
    assert attribute_names(node) == ["temp", "addr", "ex:b"]
    assert attribute_names(resolved) == [
        "https://t.org/temp",
        "https://t.org/addr",
        "http://example.org/b",
    ]


@pytest.mark.parametrize(
    "build",
    [
        lambda: AttrPath(""),
        lambda: AttrPath("a", ("value",)),
        lambda: AttrPath("a", ("observedAt", "b")),
        lambda: AttrPath("a", ("observedAt",), ("k",)),
        lambda: AttrPath("a", (), ("",)),
        lambda: Comparison(T, "=", 1),
        lambda: Comparison(T, ">", True),
        lambda: Comparison(T, ">", URI("urn:a")),
        lambda: Comparison(T, ">", (1, 2)),
        lambda: Comparison(T, "==", (1,)),
        lambda: Comparison(T, "<", Range(1, 2)),
        lambda: Comparison(T, "~=", 5),
        lambda: Comparison(T, "==", float("nan")),
        lambda: Comparison(T, "==", [1, 2]),  # type: ignore[arg-type]
        lambda: Range(1, "a"),
        lambda: Range(True, False),
        lambda: DateTime("2018-01-01"),
        lambda: Date("2018-1-1"),
        lambda: Time("25:00"),
        lambda: And((Exists(T),)),
        lambda: And((Exists(T), And((Exists(T), Exists(T))))),
        lambda: Or((Exists(T), "x")),  # type: ignore[arg-type]
    ],
)
def test_constructors_refuse_what_the_grammar_cannot_say(build: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the messages vary
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "message"), [("temp==1e999", "out of range"), ("temp==" + "9" * 5000, "digits")]
)
def test_numbers_out_of_range(text: str, message: str) -> None:
    with pytest.raises(QuerySyntaxError, match=message):
        parse_q(text)
