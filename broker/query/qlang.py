"""The NGSI-LD query language (``q``, clause 4.9): parsing, canonical printing, resolution.

Grammar, as accepted here (``;`` binds tighter than ``|``; parentheses group)::

    query      = and *( "|" and )
    and        = term *( ";" term )
    term       = "(" query ")" / "!" path / path [ op value ] / path pattern-op pattern
    path       = name *( "." name ) *( "[" key *( "." key ) "]" )   ; [a.b] is [a][b]
    op         = "==" / "!=" / ">=" / ">" / "<=" / "<"
    pattern-op = "~=" / "!~="
    value      = scalar [ ".." scalar ] / scalar 1*( "," scalar )     ; ranges, lists: == != only
    scalar     = quoted-string / number / "true" / "false" / date-time / date / time / uri / word

Where peers are lenient, so is this parser: blanks around tokens are skipped, and
an unquoted word that is nothing else is a string (``name==Komae``). A pattern
after ``~=`` is either a quoted string or the raw rest of the term, up to the next
``;``, ``|`` or ``)`` outside parentheses and brackets of the pattern itself, so
regular expressions need no escaping in the common case.

Every syntax error is a :class:`~broker.model.query.QuerySyntaxError` (a
``BadRequestData``) naming the 1-based position and showing a caret under it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Final

from broker.model.query import (
    BLANKS,
    DATE_RE,
    DATETIME_RE,
    EQUALITY_OPS,
    META_MEMBERS,
    ORDER_OPS,
    PATTERN_OPS,
    TIME_RE,
    URI,
    VALUE_MEMBERS,
    And,
    AttrPath,
    Comparison,
    Cursor,
    Date,
    DateTime,
    Exists,
    Node,
    Or,
    QuerySyntaxError,
    Range,
    Scalar,
    Time,
    Value,
    all_of,
    any_of,
    comparable_kind,
)

#: Deeper nesting is refused: it is never needed, and it bounds recursion everywhere.
MAX_DEPTH: Final = 32

_NAME_STOP = frozenset(".[]()<>=!~;|,\"'\\")
_KEY_STOP = frozenset(".[]()<>=!~;|,\"'\\")
_ATOM_STOP = frozenset(';|(),"')
_OPERATOR_CHARS = frozenset("<>=!~")
_BLANKS = BLANKS

NUMBER_RE: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
URI_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`;(),]+")

_OPS_BY_LENGTH = ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<")


def _is_name_char(c: str, stop: frozenset[str]) -> bool:
    return c not in stop and not c.isspace() and c.isprintable()


def classify_word(word: str) -> Scalar:
    """What an unquoted word means: number, boolean, date-time, date, time, URI, or string.

    A word shaped like a date, date-time or time that is not a real one (``2018-02-30``)
    raises ``ValueError`` rather than silently becoming a string.
    """
    if NUMBER_RE.fullmatch(word):
        if "." in word or "e" in word or "E" in word:
            number = float(word)
            if math.isinf(number):
                raise ValueError(f"number {word!r} out of range")
            return number
        return int(word)  # a ValueError past Python's digit limit
    if word == "true":
        return True
    if word == "false":
        return False
    if DATETIME_RE.fullmatch(word):
        return DateTime(word)
    if DATE_RE.fullmatch(word):
        return Date(word)
    if TIME_RE.fullmatch(word):
        return Time(word)
    if URI_RE.fullmatch(word):
        return URI(word)
    return word


# -- parsing --------------------------------------------------------------------------------


class _Parser(Cursor):
    def unexpected(self, at: int | None = None) -> QuerySyntaxError:
        at = self.i if at is None else at
        if at >= len(self.text):
            return self.error("unexpected end of input", at)
        return self.error(f"unexpected {self.text[at]!r}", at)

    def parse(self) -> Node:
        self.blanks()
        if self.i >= len(self.text):
            raise self.error("empty query")
        node = self.query()
        self.blanks()
        if self.i < len(self.text):
            raise self.unexpected()
        return node

    def query(self) -> Node:
        items = [self.conjunction()]
        while self.peek() == "|":
            self.i += 1
            self.blanks()
            items.append(self.conjunction())
        return any_of(items)

    def conjunction(self) -> Node:
        items = [self.term()]
        while self.peek() == ";":
            self.i += 1
            self.blanks()
            items.append(self.term())
        return all_of(items)

    def term(self) -> Node:
        self.blanks()
        self.count_term()
        if self.peek() == "(":
            if self.depth >= MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}")
            self.i += 1
            self.depth += 1
            self.blanks()
            node = self.query()
            self.blanks()
            if self.peek() != ")":
                raise self.unexpected()
            self.i += 1
            self.depth -= 1
            self.blanks()
            return node
        if self.peek() == "!" and not self.text.startswith(("!=", "!~="), self.i):
            self.i += 1
            self.blanks()
            path = self.path()
            self.blanks()
            return Exists(path, negated=True)
        path = self.path()
        self.blanks()
        op = next((o for o in _OPS_BY_LENGTH if self.text.startswith(o, self.i)), None)
        if op is None:
            return Exists(path)
        op_at = self.i
        self.i += len(op)
        if op in PATTERN_OPS:
            pattern = self.pattern()
            self.blanks()
            return Comparison(path, op, pattern)
        self.blanks()
        value = self.value(op, op_at)
        self.blanks()
        return Comparison(path, op, value)

    # -- paths ------------------------------------------------------------------------------

    def name(self, stop: frozenset[str], what: str) -> str:
        start = self.i
        while self.i < len(self.text) and _is_name_char(self.text[self.i], stop):
            self.i += 1
        if self.i == start:
            if self.i < len(self.text):
                raise self.error(f"unexpected {self.text[self.i]!r}, expected {what}")
            raise self.error(f"unexpected end of input, expected {what}")
        return self.text[start : self.i]

    def path(self) -> AttrPath:
        attr = self.name(_NAME_STOP, "an attribute name")
        sub: list[str] = []
        meta_at: int | None = None
        while self.peek() == ".":
            self.i += 1
            at = self.i
            name = self.name(_NAME_STOP, "a sub-attribute name")
            if meta_at is not None:
                raise self.error(f"nothing may follow {sub[-1]}", meta_at)
            if name in VALUE_MEMBERS:
                if self.peek() == ".":
                    raise self.error(f"{name} must be the last element of a path", at)
                continue
            if name in META_MEMBERS:
                meta_at = self.i
            sub.append(name)
        keys: list[str] = []
        while self.peek() == "[":
            # a trailing path: "[" AttrName *("." AttrName) "]", so [a.b] is [a][b]
            if meta_at is not None:
                raise self.error(f"{sub[-1]} has no JSON keys")
            self.i += 1
            keys.append(self.name(_KEY_STOP, "a key"))
            while self.peek() == ".":
                self.i += 1
                keys.append(self.name(_KEY_STOP, "a key"))
            if self.peek() != "]":
                raise self.unexpected()
            self.i += 1
        if self.peek() == ".":
            raise self.error("sub-attributes must come before [keys]")
        return AttrPath(attr, tuple(sub), tuple(keys))

    # -- values -----------------------------------------------------------------------------

    def quoted(self) -> str:
        """A double-quoted string; ``\\"`` and ``\\\\`` are escapes, other backslashes stay."""
        start = self.i
        self.i += 1
        out: list[str] = []
        text = self.text
        while self.i < len(text):
            c = text[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "\\" and self.i + 1 < len(text) and text[self.i + 1] in '"\\':
                out.append(text[self.i + 1])
                self.i += 2
                continue
            out.append(c)
            self.i += 1
        raise self.error("unterminated string", start)

    def word(self) -> str:
        """An unquoted word; it cannot start with an operator character (``temp>>5``)."""
        start = self.i
        if self.peek() in _OPERATOR_CHARS:
            return ""
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in _ATOM_STOP or c.isspace():
                break
            self.i += 1
        return self.text[start : self.i]

    def classify(self, word: str, at: int) -> Scalar:
        try:
            return classify_word(word)
        except ValueError as exc:
            raise self.error(str(exc), at) from exc

    def scalar(self) -> tuple[str, int, bool]:
        """The text of one scalar (unescaped if quoted), its start, and whether it was quoted."""
        start = self.i
        if self.peek() == '"':
            return self.quoted(), start, True
        word = self.word()
        if not word:
            if start < len(self.text):
                raise self.error(f"unexpected {self.text[start]!r}, expected a value")
            raise self.error("unexpected end of input, expected a value")
        return word, start, False

    def bound(self) -> tuple[Scalar | Range, int]:
        """A scalar or ``low..high``; word ranges are split here, as words swallow dots.

        A word is a range when the part before its first ``..`` is a number, date,
        date-time or time; otherwise the dots belong to the word (``urn:a..b``).
        """
        text, start, quoted = self.scalar()
        if quoted:
            if self.text.startswith("..", self.i):
                self.i += 2
                high, high_at, high_quoted = self.scalar()
                if not high_quoted:
                    raise self.error("range bounds must be of the same type", high_at)
                return Range(text, high), start
            return text, start
        cut = text.find("..")
        if cut > 0:
            low = self.classify(text[:cut], start)
            if comparable_kind(low) not in (None, "string"):
                high_at = start + cut + 2
                if cut + 2 == len(text):
                    raise self.unexpected(high_at)
                high_bound = self.classify(text[cut + 2 :], high_at)
                if comparable_kind(high_bound) != comparable_kind(low):
                    raise self.error("range bounds must be of the same type", high_at)
                return Range(low, high_bound), start
        return self.classify(text, start), start

    def value(self, op: str, op_at: int) -> Value:
        first, start = self.bound()
        self.blanks()
        if self.peek() == ",":
            if op not in EQUALITY_OPS:
                raise self.error(f"value lists need == or !=, not {op}")
            if isinstance(first, Range):
                raise self.error("a value list cannot hold ranges", start)
            items: list[Scalar] = [first]
            while self.peek() == ",":
                self.i += 1
                self.blanks()
                item, at = self.bound()
                if isinstance(item, Range):
                    raise self.error("a value list cannot hold ranges", at)
                items.append(item)
                self.blanks()
            return tuple(items)
        if isinstance(first, Range):
            if op not in EQUALITY_OPS:
                raise self.error(f"ranges need == or !=, not {op}", op_at)
            return first
        if op in ORDER_OPS:
            if isinstance(first, URI):
                return first.text
            if comparable_kind(first) is None:
                raise self.error(f"{op} cannot compare booleans", start)
        return first

    def pattern(self) -> str:
        start = self.i
        self.blanks()
        if self.peek() == '"':
            at = self.i
            pattern = self.quoted()
        else:
            self.i = start
            at = start
            pattern, self.i = scan_pattern(self.text, start)
        if not pattern:
            raise self.error("expected a pattern", at)
        try:
            re.compile(pattern)
        except re.error as exc:
            offset = exc.pos if exc.pos is not None and self.text[at] != '"' else 0
            raise self.error(f"invalid pattern ({exc.msg})", at + offset) from exc
        return pattern


def scan_pattern(text: str, start: int) -> tuple[str, int]:
    """The raw pattern from ``start`` up to the next ``;``/``|``/``)`` outside its own groups.

    Backslash escapes, character classes and balanced parentheses of the pattern
    itself do not end it, so ``(a|b)[;)]\\)`` is a single pattern.
    """
    i, depth, n = start, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i += 1
            if i < n and text[i] == "^":
                i += 1
            if i < n and text[i] == "]":
                i += 1
            while i < n and text[i] != "]":
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                break
            depth -= 1
        elif c in ";|" and depth == 0:
            break
        i += 1
    i = min(i, n)
    return text[start:i], i


def parse_q(text: str) -> Node:
    """Parse ``q`` text into an AST; raise ``BadRequestData`` (with position) if invalid."""
    parser = _Parser(text)
    try:
        return parser.parse()
    except ValueError as exc:
        # The parser checks what the node constructors check; this only keeps a missed
        # case a client error (400) rather than a server error.
        raise parser.error(str(exc)) from exc


# -- printing -------------------------------------------------------------------------------


def quote(text: str) -> str:
    """A double-quoted string literal: only ``"`` and ``\\`` are escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_path(path: AttrPath) -> str:
    return path.attr + "".join("." + s for s in path.sub) + "".join(f"[{k}]" for k in path.json)


def format_scalar(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    return value.text


def format_value(value: Value) -> str:
    if isinstance(value, tuple):
        return ",".join(format_scalar(v) for v in value)
    if isinstance(value, Range):
        return f"{format_scalar(value.low)}..{format_scalar(value.high)}"
    return format_scalar(value)


def format_pattern(pattern: str) -> str:
    """Raw when the raw form reads back as the same pattern, quoted otherwise.

    Patterns with leading or trailing blanks are quoted too, so that they show.
    """
    if pattern and pattern.strip(_BLANKS) == pattern and not pattern.startswith('"'):
        for follower in ";|)":
            if scan_pattern(pattern + follower, 0) != (pattern, len(pattern)):
                break
        else:
            return pattern
    return quote(pattern)


def format_q(node: Node) -> str:
    """Canonical text of an AST: no blanks, strings quoted, parentheses only where needed.

    ``parse_q(format_q(node)) == node`` for every AST whose names are valid in the
    text form (an AST resolved to IRIs prints for diagnostics only: IRIs hold dots).
    """
    if isinstance(node, Comparison):
        if node.op in PATTERN_OPS:
            assert isinstance(node.value, str)
            return format_path(node.path) + node.op + format_pattern(node.value)
        return format_path(node.path) + node.op + format_value(node.value)
    if isinstance(node, Exists):
        return ("!" if node.negated else "") + format_path(node.path)
    if isinstance(node, And):
        return ";".join(
            f"({format_q(i)})" if isinstance(i, Or) else format_q(i) for i in node.items
        )
    return "|".join(format_q(i) for i in node.items)


# -- resolution and inspection --------------------------------------------------------------


def resolve_path(path: AttrPath, expand: Callable[[str], str]) -> AttrPath:
    """Expand the attribute and sub-attribute names of a path (meta members, keys stay)."""
    sub = tuple(s if s in META_MEMBERS else expand(s) for s in path.sub)
    return AttrPath(expand(path.attr), sub, path.json)


def resolve_q(node: Node, expand: Callable[[str], str]) -> Node:
    """The same query with attribute and sub-attribute terms mapped through ``expand``.

    Backends match expanded IRIs (the internal form), so the services resolve a query
    once against the request's ``@context``; JSON keys and meta members are not terms.
    """
    if isinstance(node, Comparison):
        return Comparison(resolve_path(node.path, expand), node.op, node.value)
    if isinstance(node, Exists):
        return Exists(resolve_path(node.path, expand), node.negated)
    items = tuple(resolve_q(i, expand) for i in node.items)
    return And(items) if isinstance(node, And) else Or(items)


def paths(node: Node) -> list[AttrPath]:
    """Every path of the query, in text order (duplicates kept)."""
    if isinstance(node, Comparison | Exists):
        return [node.path]
    return [p for item in node.items for p in paths(item)]


def attribute_names(node: Node) -> list[str]:
    """The attribute names the query refers to, in first-use order, without duplicates."""
    return list(dict.fromkeys(p.attr for p in paths(node)))


def expand_q_values(node: Node, attrs: set[str], expand: Callable[[str], str]) -> Node:
    """The query with the string values compared with the attributes ``attrs`` (expanded
    IRIs) expanded as terms too: ``expandValues`` (clause 4.9), for attributes such as
    VocabProperties whose values are IRIs. Patterns, keys and members are left alone."""
    if isinstance(node, Exists):
        return node
    if isinstance(node, Comparison):
        path = node.path
        if path.attr not in attrs or path.json or path.meta is not None or node.op in PATTERN_OPS:
            return node
        return Comparison(path, node.op, _expanded(node.value, expand))
    items = tuple(expand_q_values(i, attrs, expand) for i in node.items)
    return And(items) if isinstance(node, And) else Or(items)


def _expanded(value: Value, expand: Callable[[str], str]) -> Value:
    if isinstance(value, tuple):
        return tuple(_expanded_scalar(v, expand) for v in value)
    if isinstance(value, Range):
        return value
    return _expanded_scalar(value, expand)


def _expanded_scalar(value: Scalar, expand: Callable[[str], str]) -> Scalar:
    if isinstance(value, str):
        return expand(value)
    if isinstance(value, URI):
        return URI(expand(value.text))
    return value
