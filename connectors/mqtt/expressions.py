"""JEXL expressions of provisioning, evaluated as iotagent-node-lib evaluates them.

Expressions appear as an attribute's ``expression`` (the value sent is the expression's
result), a group's ``entityNameExp`` (the entity id of its devices) and ``explicitAttrs``
given as a string (which attributes go to the broker). The language is JEXL, parsed and
evaluated by pyjexl (PyPI ``pyjexl-extended``); the transformations are the ones
iotagent-node-lib documents (``toisodate``, ``substr``, ``replacestr``, ``mapper`` ...).

Expressions come from whoever may provision devices, and run on every measure, so they
are sandboxed and bounded:

- an expression reads only the values it is given (JSON values: the measure, the
  device's id, entity, service, static attributes); there is no attribute access to
  Python objects, no function beyond the table below;
- operators follow JavaScript where iotagent-node-lib users rely on it (``"a" + 1`` is
  ``"a1"``) and give nothing (the attribute is not sent) where JavaScript gives ``NaN``;
  ``*`` never repeats a string and ``^`` has a bounded exponent, so no operator can
  build a huge value;
- an expression is at most ``MAX_LENGTH`` characters, and its evaluation stops with an
  error after ``MAX_STEPS`` evaluation steps or ``TIME_LIMIT`` seconds.

Expressions are compiled when provisioned: one that does not parse, or uses an unknown
transformation, is refused then with its error.
"""

from __future__ import annotations

import functools
import math
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import re2
from pyjexl import JEXL
from pyjexl.evaluator import Context, Evaluator
from pyjexl.operators import Operator
from pyjexl.parser import Identifier, Node

MAX_LENGTH = 1000
MAX_STEPS = 20_000
TIME_LIMIT = 0.05
#: Longest string or list a transformation may build.
MAX_SIZE = 100_000


class ExpressionError(ValueError):
    """An expression that cannot be compiled or evaluated; the message says why."""


# -- JavaScript-like values and operators --------------------------------------------------------


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else 0
        except ValueError:
            return None
    if value is None:
        return 0
    return None


def js_str(value: Any) -> str:
    """``String(value)`` as JavaScript writes it (``6``, ``1.5``, ``true``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, list):
        return ",".join("" if v is None else js_str(v) for v in value)
    return str(value)


def _tidy(value: Any) -> Any:
    """Integral floats as ints (JavaScript has one number type), NaN/inf as nothing."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str) or isinstance(b, str) or isinstance(a, dict | list):
        return _sized(js_str(a) + js_str(b))
    x, y = _number(a), _number(b)
    return None if x is None or y is None else _tidy(x + y)


def _arith(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        x, y = _number(a), _number(b)
        if x is None or y is None:
            return None
        try:
            return _tidy(op(x, y))
        except (ZeroDivisionError, OverflowError, ValueError):
            return None

    return run


def _pow(x: float, y: float) -> float:
    if abs(y) > 1024:
        raise OverflowError
    result: float = float(x) ** y
    return result


def _in(a: Any, b: Any) -> bool:
    if isinstance(b, str):
        return isinstance(a, str) and a in b
    if isinstance(b, list | dict):
        return a in b
    return False


_BINARY = {
    "+": Operator("+", 30, _add),
    "-": Operator("-", 30, _arith(lambda x, y: x - y)),
    "*": Operator("*", 40, _arith(lambda x, y: x * y)),
    "//": Operator("//", 40, _arith(lambda x, y: x // y)),
    "/": Operator("/", 40, _arith(lambda x, y: x / y)),
    "%": Operator("%", 50, _arith(math.fmod)),
    "^": Operator("^", 50, _arith(_pow)),
    "==": Operator("==", 20, lambda a, b: a == b),
    "!=": Operator("!=", 20, lambda a, b: a != b),
    ">=": Operator(">=", 20, lambda a, b: _compare(a, b, lambda x, y: x >= y)),
    ">": Operator(">", 20, lambda a, b: _compare(a, b, lambda x, y: x > y)),
    "<=": Operator("<=", 20, lambda a, b: _compare(a, b, lambda x, y: x <= y)),
    "<": Operator("<", 20, lambda a, b: _compare(a, b, lambda x, y: x < y)),
    "&&": Operator("&&", 10, lambda a, b: a() and b(), evaluate_lazy=True),
    "||": Operator("||", 10, lambda a, b: a() or b(), evaluate_lazy=True),
    "in": Operator("in", 20, _in),
}


def _compare(a: Any, b: Any, op: Callable[[Any, Any], bool]) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return op(a, b)
    x, y = _number(a), _number(b)
    return False if x is None or y is None else op(x, y)


# -- the transformations iotagent-node-lib documents ------------------------------------------


def _sized(value: Any) -> Any:
    if isinstance(value, str | list) and len(value) > MAX_SIZE:
        raise ExpressionError(f"a value of more than {MAX_SIZE} elements was built")
    return value


def _date(value: Any) -> datetime:
    """``new Date(value)``: epoch milliseconds, or an ISO 8601 string."""
    if isinstance(value, bool):
        raise ExpressionError(f"{value!r} is not a date")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ExpressionError(f"{value!r} is not a date") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ExpressionError(f"{value!r} is not a date")


def _iso(value: Any) -> str:
    d = _date(value).astimezone(UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _parse_int(value: Any) -> int | None:
    text = js_str(value).strip()
    match = re2.match(r"^[+-]?\d+", text)
    return int(match.group(0)) if match else None


def _parse_float(value: Any) -> float | int | None:
    text = js_str(value).strip()
    match = re2.match(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return _tidy(float(match.group(0))) if match else None


def _substr(value: Any, start: Any = 0, length: Any = None) -> str:
    text = js_str(value)
    begin = int(_number(start) or 0)
    if begin < 0:
        begin = max(len(text) + begin, 0)
    if length is None:
        return text[begin:]
    return text[begin : begin + max(int(_number(length) or 0), 0)]


def _replace(value: Any, old: Any, new: Any, count: int = 1) -> str:
    text = js_str(value).replace(js_str(old), js_str(new), count)
    _sized(text)
    return text


def _replace_regexp(value: Any, pattern: Any, new: Any, count: int = 1) -> str:
    try:
        compiled = re2.compile(js_str(pattern))
    except re2.error as exc:
        raise ExpressionError(f"bad regular expression {pattern!r}: {exc}") from None
    text: str = compiled.sub(js_str(new).replace("\\", "\\\\"), js_str(value), count=count)
    _sized(text)
    return text


def _typeof(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object"


def _mapper(value: Any, values: Any, choices: Any) -> Any:
    if not isinstance(values, list) or not isinstance(choices, list):
        return None
    for i, v in enumerate(values):
        if v == value and i < len(choices):
            return choices[i]
    return None


def _thmapper(value: Any, thresholds: Any, choices: Any) -> Any:
    if not isinstance(thresholds, list) or not isinstance(choices, list):
        return None
    x = _number(value)
    for i, limit in enumerate(thresholds):
        y = _number(limit)
        if x is not None and y is not None and x <= y:
            return choices[i] if i < len(choices) else None
    return None


def _bitwisemask(value: Any, mask: Any, op: Any, shift: Any) -> Any:
    i, m, s = _parse_int(value), int(_number(mask) or 0), int(_number(shift) or 0)
    if i is None or not 0 <= s < 64:
        return None
    ops = {"&": i & m, "|": i | m, "^": i ^ m}
    return ops.get(str(op), i) >> s


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ExpressionError(f"{value!r} is not an array")
    return value


def _addreduce(value: Any) -> Any:
    items = _list(value)
    if not items:
        return None
    total = items[0]
    for item in items[1:]:
        total = _add(total, item)
    return total


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _hextostring(value: Any) -> str:
    try:
        return bytes.fromhex(js_str(value)).decode("utf-8", errors="replace")
    except ValueError:
        raise ExpressionError(f"{value!r} is not hexadecimal") from None


def _tofixed(value: Any, decimals: Any = 0) -> str | None:
    x = _parse_float(value)
    digits = int(_number(decimals) or 0)
    if x is None or not 0 <= digits <= 100:
        return None
    return f"{x:.{digits}f}"


def _localestring(value: Any, zone: Any = None, _options: Any = None) -> str:
    d = _date(value)
    if isinstance(zone, str) and zone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            d = d.astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise ExpressionError(f"unknown time zone {zone!r}") from None
    return d.strftime("%Y/%m/%d %H:%M:%S")


def _timeoffset(value: Any) -> int:
    """``getTimezoneOffset()``: minutes to add to the date's local time to get UTC."""
    offset = _date(value).utcoffset()
    return -int(offset.total_seconds() // 60) if offset else 0


def _jsonparse(value: Any) -> Any:
    try:
        return orjson.loads(js_str(value))
    except orjson.JSONDecodeError as exc:
        raise ExpressionError(f"jsonparse: {exc}") from None


def _round(value: Any) -> Any:
    x = _number(value)
    return None if x is None else math.floor(x + 0.5)


#: iotagent-node-lib's transformation table (its ``jexlTransformsMap``), by name.
TRANSFORMS: dict[str, Callable[..., Any]] = {
    "jsonparse": _jsonparse,
    "jsonstringify": lambda v: orjson.dumps(v).decode(),
    "indexOf": lambda v, c: js_str(v).find(js_str(c)),
    "length": lambda v: len(js_str(v)),
    "trim": lambda v: js_str(v).strip(),
    "substr": _substr,
    "addreduce": _addreduce,
    "lengtharray": lambda v: len(_list(v)),
    "typeof": _typeof,
    "isarray": lambda v: isinstance(v, list),
    "isnan": lambda v: _number(v) is None,
    "parseint": _parse_int,
    "parsefloat": _parse_float,
    "toisodate": _iso,
    "timeoffset": _timeoffset,
    "tostring": js_str,
    "urlencode": lambda v: urllib.parse.quote(js_str(v), safe=";,/?:@&=+$-_.!~*'()#"),
    "urldecode": lambda v: urllib.parse.unquote(js_str(v)),
    "replacestr": lambda v, a, b: _replace(v, a, b),
    "replaceregexp": lambda v, r, b: _replace_regexp(v, r, b),
    "replaceallstr": lambda v, a, b: _replace(v, a, b, -1),
    "replaceallregexp": lambda v, r, b: _replace_regexp(v, r, b, 0),
    "split": lambda v, c: js_str(v).split(js_str(c)) if js_str(c) else list(js_str(v)),
    "joinarrtostr": lambda v, c: _sized(js_str(c).join(js_str(x) for x in _list(v))),
    "concatarr": lambda a, b: _sized(_list(a) + (b if isinstance(b, list) else [b])),
    "mapper": _mapper,
    "thmapper": _thmapper,
    "bitwisemask": _bitwisemask,
    "slice": lambda v, a, b=None: (_list(v) if isinstance(v, list) else js_str(v))[
        int(_number(a) or 0) : None if b is None else int(_number(b) or 0)
    ],
    "addset": lambda v, x: _sized(_unique([*_list(v), x])),
    "removeset": lambda v, x: [i for i in _unique(_list(v)) if i != x],
    "touppercase": lambda v: js_str(v).upper(),
    "tolowercase": lambda v: js_str(v).lower(),
    "round": _round,
    "floor": lambda v: None if (x := _number(v)) is None else math.floor(x),
    "ceil": lambda v: None if (x := _number(v)) is None else math.ceil(x),
    "tofixed": _tofixed,
    "gettime": lambda v: int(_date(v).timestamp() * 1000),
    "toisostring": _iso,
    "localestring": _localestring,
    "now": lambda *_: int(time.time() * 1000),
    "hextostring": _hextostring,
}


# -- compile and evaluate ---------------------------------------------------------------------


class _Bounded(Evaluator):  # type: ignore[misc]
    """pyjexl's evaluator with a step budget and a deadline."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.steps = 0
        self.deadline = time.monotonic() + TIME_LIMIT

    def evaluate(self, expression: Any, context: Any = None) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ExpressionError(f"the expression took more than {MAX_STEPS} steps")
        if self.steps % 64 == 0 and time.monotonic() > self.deadline:
            raise ExpressionError(f"the expression took more than {TIME_LIMIT * 1000:.0f} ms")
        return super().evaluate(expression, context)

    def visit_Transform(self, transform: Any, context: Any) -> Any:
        return _sized(super().visit_Transform(transform, context))

    def visit_Identifier(self, identifier: Any, context: Any) -> Any:
        if identifier.relative:
            subject = context.relative_value
        elif identifier.subject:
            subject = self.evaluate(identifier.subject, context)
        else:
            subject = context
        if isinstance(subject, list):
            subject = subject[0] if subject else None
        if isinstance(subject, Context | Mapping):
            return subject.get(identifier.value, None)
        return None  # a member of a string or number: nothing, as in JavaScript


def _engine() -> JEXL:
    engine = JEXL()
    engine.config.binary_operators.clear()
    engine.config.binary_operators.update(_BINARY)
    engine._grammar = None  # the grammar lists the operators: build it again
    for name, func in TRANSFORMS.items():
        engine.add_transform(name, func)
    return engine


_ENGINE = _engine()


_EMPTY_CALL = re2.compile(r"^([A-Za-z_$][A-Za-z0-9_$]*)\s*\(\s*\)")


def _normalize(source: str) -> str:
    """Spell ``a | t()`` as pyjexl's grammar wants it (``a|t``), outside string literals.

    JavaScript JEXL allows blanks around a transformation's ``|`` and empty argument
    lists (iotagent-node-lib's docs use both); pyjexl's grammar does not.
    """
    out: list[str] = []
    i, n = 0, len(source)
    quote: str | None = None
    while i < n:
        c = source[i]
        if quote is not None:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(source[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'":
            quote = c
        elif c == "|":
            if source.startswith("||", i):
                out.append("||")
                i += 2
                continue
            while out and out[-1].isspace():
                out.pop()
            out.append("|")
            i += 1
            while i < n and source[i].isspace():
                i += 1
            if match := _EMPTY_CALL.match(source[i:]):
                out.append(match.group(1))
                i += match.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for name in getattr(node, "fields", ()):
        if name == "parent":
            continue
        child = getattr(node, name, None)
        children = (
            child
            if isinstance(child, list)
            else list(child.values())
            if isinstance(child, dict)
            else [child]
        )
        for c in children:
            if isinstance(c, Node):
                yield from _walk(c)


class Expression:
    """A compiled JEXL expression; ``names`` are the top-level variables it reads."""

    __slots__ = ("_tree", "names", "source")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("an expression must be a non-empty string")
        if len(source) > MAX_LENGTH:
            raise ExpressionError(f"an expression is at most {MAX_LENGTH} characters")
        self.source = source
        try:
            self._tree = _ENGINE.parse(_normalize(source))
        except Exception as exc:  # pyjexl raises several kinds; all mean "does not parse"
            raise ExpressionError(f"expression {source!r} does not parse: {exc}") from None
        for node in _walk(self._tree):
            name = getattr(node, "name", None)
            if type(node).__name__ == "Transform" and name not in TRANSFORMS:
                raise ExpressionError(f"expression {source!r}: unknown transformation {name!r}")
            if type(node).__name__ == "Function":
                raise ExpressionError(f"expression {source!r}: functions are not available")
        self.names = frozenset(
            node.value
            for node in _walk(self._tree)
            if isinstance(node, Identifier) and not node.subject and not node.relative
        )

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The expression's value in ``context``; raises ExpressionError if it fails."""
        try:
            return _tidy(_Bounded(_ENGINE.config).evaluate(self._tree, Context(dict(context))))
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError(f"expression {self.source!r} nests too deeply") from None
        except Exception as exc:  # a transformation given the wrong kind of value, say
            raise ExpressionError(f"expression {self.source!r} failed: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Expression:
    return Expression(source)


def compile_expression(source: Any, where: str) -> Expression:
    """Compile (once per distinct source), or raise ExpressionError naming ``where``."""
    if not isinstance(source, str):
        raise ExpressionError(f"{where}: an expression must be a string")
    try:
        return _compiled(source)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc}") from None
