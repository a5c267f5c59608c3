"""Property tests: printing then parsing gives back the same AST (q and scopeQ)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model.query import Node, QuerySyntaxError, ScopeQuery
from broker.query.evaluate import matches_q
from broker.query.qlang import format_q, parse_q
from broker.query.scopeq import format_scope_q, parse_scope_q, scope_matches
from tests.broker.query.strategies import nodes, scope_queries, scope_segments

SETTINGS = settings(max_examples=150, deadline=None, database=None)


@SETTINGS
@given(nodes)
def test_q_round_trip(node: Node) -> None:
    text = format_q(node)
    parsed = parse_q(text)
    assert parsed == node
    # repr tells 1 from 1.0 from True, which == does not.
    assert repr(parsed) == repr(node)
    assert format_q(parsed) == text
    if "~=" not in text and '"' not in text:
        # Blanks around logical operators and parentheses are skipped (raw patterns and
        # quoted strings keep theirs, hence the guard).
        spaced = text.replace(";", " ; ").replace("|", " | ").replace("(", "( ").replace(")", " )")
        assert parse_q(f" {spaced} ") == node


@settings(max_examples=100, deadline=None, database=None)
@given(scope_queries)
def test_scope_q_round_trip(node: ScopeQuery) -> None:
    text = format_scope_q(node)
    assert parse_scope_q(text) == node
    assert format_scope_q(parse_scope_q(text)) == text


@settings(max_examples=50, deadline=None, database=None)
@given(nodes)
def test_evaluation_does_not_fail_on_any_query(node: Node) -> None:
    entity = {
        "id": "urn:ngsi-ld:T:1",
        "type": ["https://example.org/T"],
        "a": [
            {"type": "Property", "value": [1, "x", {"b": 2}], "observedAt": "2020-01-01T00:00:00Z"}
        ],
    }
    assert matches_q(node, entity) in (True, False)


@settings(max_examples=50, deadline=None, database=None)
@given(
    scope_queries, st.lists(st.lists(scope_segments, max_size=3).map(lambda s: "/" + "/".join(s)))
)
def test_scope_matching_is_total(node: ScopeQuery, scopes: list[str]) -> None:
    assert scope_matches(node, scopes) in (True, False)


QUERYISH = 'ab1.[]()<>=!~;|,"\\ -:eT0Z+#/'


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=QUERYISH, max_size=20))
def test_any_text_parses_or_fails_with_a_syntax_error(text: str) -> None:
    position = None
    try:
        node = parse_q(text)
    except QuerySyntaxError as err:
        position = err.position
    if position is not None:
        assert 1 <= position <= len(text) + 1
    else:
        assert parse_q(format_q(node)) == node


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="ab/+#;|() ", max_size=16))
def test_any_scope_text_parses_or_fails_with_a_syntax_error(text: str) -> None:
    position = None
    try:
        node = parse_scope_q(text)
    except QuerySyntaxError as err:
        position = err.position
    if position is not None:
        assert 1 <= position <= len(text) + 1
    else:
        assert parse_scope_q(format_scope_q(node)) == node
