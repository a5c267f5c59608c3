"""``scopeQ``: scope patterns (clause 4.18) combined with ``;`` (and) and ``|`` or ``,`` (or).

Grammar, as accepted here (``;`` binds tighter than ``|``; blanks around tokens skipped)::

    query   = and *( ( "|" / "," ) and )
    and     = term *( ";" term )
    term    = "(" query ")" / pattern
    pattern = "/" [ segment *( "/" segment ) ]      ; "#" only as the last segment
    segment = "+" / "#" / 1*<any character but blanks and / + # ; | , ( )>

Entity scopes are written with or without the leading ``/`` (``check_scope`` takes
both), so both sides are compared as lists of segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.model.query import (
    BLANKS,
    Cursor,
    QuerySyntaxError,
    ScopeAnd,
    ScopeOr,
    ScopePattern,
    ScopeQuery,
)

MAX_DEPTH: Final = 32
_SEGMENT_STOP = frozenset("/+#;|,()")
_BLANKS = BLANKS


def scope_all_of(items: list[ScopeQuery]) -> ScopeQuery:
    """ScopeAnd of ``items``, flattened; a single item is returned as is."""
    flat: list[ScopeQuery] = []
    for item in items:
        flat.extend(item.items if isinstance(item, ScopeAnd) else (item,))
    return flat[0] if len(flat) == 1 else ScopeAnd(tuple(flat))


def scope_any_of(items: list[ScopeQuery]) -> ScopeQuery:
    """ScopeOr of ``items``, flattened; a single item is returned as is."""
    flat: list[ScopeQuery] = []
    for item in items:
        flat.extend(item.items if isinstance(item, ScopeOr) else (item,))
    return flat[0] if len(flat) == 1 else ScopeOr(tuple(flat))


class _Parser(Cursor):
    def unexpected(self, expected: str = "") -> QuerySyntaxError:
        suffix = f", expected {expected}" if expected else ""
        if self.i >= len(self.text):
            return self.error("unexpected end of input" + suffix)
        return self.error(f"unexpected {self.text[self.i]!r}" + suffix)

    def parse(self) -> ScopeQuery:
        self.blanks()
        if self.i >= len(self.text):
            raise self.error("empty scope query")
        node = self.query()
        if self.i < len(self.text):
            raise self.unexpected()
        return node

    def query(self) -> ScopeQuery:
        items = [self.conjunction()]
        while self.peek() in ("|", ","):
            self.i += 1
            items.append(self.conjunction())
        return scope_any_of(items)

    def conjunction(self) -> ScopeQuery:
        items = [self.term()]
        while self.peek() == ";":
            self.i += 1
            items.append(self.term())
        return scope_all_of(items)

    def term(self) -> ScopeQuery:
        self.blanks()
        self.count_term()
        if self.peek() == "(":
            if self.depth >= MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}")
            self.i += 1
            self.depth += 1
            node = self.query()
            if self.peek() != ")":
                raise self.unexpected()
            self.i += 1
            self.depth -= 1
        else:
            node = self.pattern()
        self.blanks()
        return node

    def pattern(self) -> ScopePattern:
        if self.peek() != "/":
            raise self.unexpected("'/'")
        self.i += 1
        segments: list[str] = []
        if self.peek() in ("", ";", "|", ",", ")") or self.peek() in _BLANKS:
            return ScopePattern(())
        while True:
            c = self.peek()
            if c in ("+", "#"):
                segments.append(c)
                self.i += 1
            else:
                start = self.i
                while self.i < len(self.text) and not self._stops(self.text[self.i]):
                    self.i += 1
                if self.i == start:
                    raise self.unexpected("a scope segment")
                segments.append(self.text[start : self.i])
            if segments[-1] == "#" and self.peek() == "/":
                raise self.error("# must be the last segment")
            if self.peek() != "/":
                break
            self.i += 1
        c = self.peek()
        if c and c not in ";|,)" and c not in _BLANKS:
            raise self.unexpected()
        return ScopePattern(tuple(segments))

    @staticmethod
    def _stops(c: str) -> bool:
        return c in _SEGMENT_STOP or c.isspace() or not c.isprintable()


def parse_scope_q(text: str) -> ScopeQuery:
    """Parse ``scopeQ`` text; raise ``BadRequestData`` (with position) if invalid."""
    return _Parser(text, "scopeQ").parse()


def format_scope_q(node: ScopeQuery) -> str:
    """Canonical text: ``parse_scope_q(format_scope_q(n)) == n`` for every scope AST."""
    if isinstance(node, ScopePattern):
        return "/" + "/".join(node.segments)
    if isinstance(node, ScopeAnd):
        return ";".join(
            f"({format_scope_q(i)})" if isinstance(i, ScopeOr) else format_scope_q(i)
            for i in node.items
        )
    return "|".join(format_scope_q(i) for i in node.items)


def scope_segments(scope: str) -> tuple[str, ...]:
    """``/a/b`` and ``a/b`` -> ``("a", "b")``; ``/`` -> ``()``."""
    return tuple(s for s in scope.strip("/").split("/") if s) if scope.strip("/") else ()


def _pattern_matches(pattern: tuple[str, ...], scope: tuple[str, ...]) -> bool:
    for i, seg in enumerate(pattern):
        if seg == "#":
            return True  # this level and any below it, none included
        if i >= len(scope) or (seg != "+" and seg != scope[i]):
            return False
    return len(pattern) == len(scope)


def scope_matches(node: ScopeQuery, scopes: Sequence[str]) -> bool:
    """Whether an entity with ``scopes`` matches the scope query.

    A pattern matches when any one of the scopes matches it; ``;`` needs each of
    its items matched, not necessarily by the same scope. ``+`` is exactly one
    level, ``/a/#`` is ``/a`` and everything below it, ``/#`` is every scope. An
    entity without scopes matches nothing, ``/#`` included.
    """
    if isinstance(node, ScopePattern):
        return any(_pattern_matches(node.segments, scope_segments(s)) for s in scopes)
    if isinstance(node, ScopeAnd):
        return all(scope_matches(i, scopes) for i in node.items)
    return any(scope_matches(i, scopes) for i in node.items)
