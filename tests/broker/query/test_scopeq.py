"""scopeQ parsing, printing and matching."""

from __future__ import annotations

import pytest

from broker.errors import BadRequestData
from broker.model.query import QuerySyntaxError, ScopeAnd, ScopeOr, ScopePattern
from broker.query.evaluate import matches_scope
from broker.query.scopeq import format_scope_q, parse_scope_q, scope_matches


def P(*segments: str) -> ScopePattern:
    return ScopePattern(segments)


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("/a", P("a")),
        ("/a/b", P("a", "b")),
        ("/a/+", P("a", "+")),
        ("/a/+/c", P("a", "+", "c")),
        ("/a/#", P("a", "#")),
        ("/#", P("#")),
        ("/+", P("+")),
        ("/", P()),
        ("/東京/狛江市", P("東京", "狛江市")),
        ("/a;/b", ScopeAnd((P("a"), P("b")))),
        ("/a|/b", ScopeOr((P("a"), P("b")))),
        ("/a;/b|/c", ScopeOr((ScopeAnd((P("a"), P("b"))), P("c")))),
        ("/a;(/b|/c)", ScopeAnd((P("a"), ScopeOr((P("b"), P("c")))))),
        ("(/a;/b);/c", ScopeAnd((P("a"), P("b"), P("c")))),
        (" /a ; ( /b | / ) ", ScopeAnd((P("a"), ScopeOr((P("b"), P()))))),
    ],
)
def test_parse(text: str, node: object) -> None:
    assert parse_scope_q(text) == node
    assert parse_scope_q(format_scope_q(parse_scope_q(text))) == node


def test_format() -> None:
    assert format_scope_q(parse_scope_q(" ( /a | /b/# ) ; /c/+ ")) == "(/a|/b/#);/c/+"
    assert format_scope_q(parse_scope_q("/a;/b|/")) == "/a;/b|/"


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 1, "empty scope query"),
        ("a", 1, "unexpected 'a', expected '/'"),
        ("/a/", 4, "unexpected end of input, expected a scope segment"),
        ("/a//b", 4, "unexpected '/', expected a scope segment"),
        ("/a/#/b", 5, "# must be the last segment"),
        ("/a+", 3, "unexpected '+'"),
        ("/a/b#", 5, "unexpected '#'"),
        ("/a;", 4, "unexpected end of input, expected '/'"),
        ("/a||/b", 4, "unexpected '|', expected '/'"),
        ("(/a", 4, "unexpected end of input"),
        ("/a)", 3, "unexpected ')'"),
        ("/a /b", 4, "unexpected '/'"),
    ],
)
def test_syntax_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(BadRequestData) as info:
        parse_scope_q(text)
    err = info.value
    assert isinstance(err, QuerySyntaxError)
    assert err.position == position
    assert (
        err.detail == f"scopeQ: {message} at position {position}: {text}\n{' ' * (position - 1)}^"
    )


@pytest.mark.parametrize(
    ("query", "scope", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "a/b", True),
        ("/a/b", "/a", False),
        ("/a/b", "/a/b/c", False),
        ("/a/+", "/a/b", True),
        ("/a/+", "/a", False),
        ("/a/+", "/a/b/c", False),
        ("/+/b", "/x/b", True),
        ("/a/#", "/a", True),
        ("/a/#", "/a/b", True),
        ("/a/#", "/a/b/c/d", True),
        ("/a/#", "/ab", False),
        ("/a/#", "/b/a", False),
        ("/a/+/#", "/a", False),
        ("/a/+/#", "/a/b", True),
        ("/a/+/#", "/a/b/c", True),
        ("/#", "/anything/at/all", True),
        ("/#", "/", True),
        ("/", "/", True),
        ("/", "/a", False),
    ],
)
def test_pattern_matching(query: str, scope: str, expected: bool) -> None:
    assert scope_matches(parse_scope_q(query), [scope]) is expected


def test_boolean_matching_over_several_scopes() -> None:
    scopes = ["/Tokyo/Komae", "/Kanagawa/Kawasaki"]
    assert scope_matches(parse_scope_q("/Tokyo/#"), scopes)
    assert scope_matches(parse_scope_q("/Tokyo/#;/Kanagawa/+"), scopes)  # different scopes
    assert not scope_matches(parse_scope_q("/Tokyo/#;/Osaka"), scopes)
    assert scope_matches(parse_scope_q("/Osaka|/Tokyo/Komae"), scopes)
    assert not scope_matches(parse_scope_q("/Osaka|/Tokyo"), scopes)
    assert not scope_matches(parse_scope_q("/#"), [])


def test_matches_scope_on_entities() -> None:
    query = parse_scope_q("/Tokyo/#")
    assert matches_scope(query, {"id": "urn:x:1", "scope": ["/Tokyo/Komae"]})
    assert matches_scope(query, {"id": "urn:x:1", "scope": "/Tokyo"})
    assert not matches_scope(query, {"id": "urn:x:1", "scope": ["/Osaka"]})
    assert not matches_scope(query, {"id": "urn:x:1"})
