"""JEXL expressions as iotagent-node-lib evaluates them: values, transformations, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.mqtt import expressions
from connectors.mqtt.expressions import Expression, ExpressionError, compile_expression

MEASURE = {
    "value": 6,
    "ts": 1637245214901,
    "name": "DevId629",
    "object": {"name": "John", "surname": "Doe"},
    "array": [1, 3],
    "location": "40.4165, -3.70256",
    "place": "狛江市役所",  # JEXL names are ASCII (as in JavaScript JEXL); values need not be
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # the examples iotagent-node-lib documents
        ("5 * value", 30),
        ("(6 + value) * 3", 36),
        ("value / 12 + 1", 1.5),
        ("(5 + 2) * (value + 7)", 91),
        ('"Pruebas " + "De Strings"', "Pruebas De Strings"),
        ('name + " value is " + value', "DevId629 value is 6"),
        ("{coordinates: [value,value], type: 'Point'}", {"coordinates": [6, 6], "type": "Point"}),
        ("ts|toisodate", "2021-11-18T14:20:14.901Z"),
        ('" a "| trim', "a"),
        ("name|length", 8),
        ('name|indexOf("e")', 1),
        ('name|substr(0,name|indexOf("e")+1)', "De"),
        ("location | split(', ')[1] | parsefloat()", -3.70256),
        ("'  hello world ' | trim | replacestr('hello','hi')", "hi world"),
        # more of the transformation table
        ("object.surname", "Doe"),
        ("array|addreduce", 4),
        ("array|lengtharray", 2),
        ("array|concatarr([5])", [1, 3, 5]),
        ("array|joinarrtostr('-')", "1-3"),
        ("value|mapper([1,6],['低','高'])", "高"),
        ("value|thmapper([5,10],['低','中'])", "中"),
        ("'0x1F'|replaceregexp('^0x', '')|hextostring", "\x1f"),
        ("'a-b-c'|replaceallstr('-', '/')", "a/b/c"),
        ("'1.2345'|tofixed(2)", "1.23"),
        ("'12abc'|parseint", 12),
        ("place|length", 5),
        ("place|substr(0, 2) + '駅'", "狛江駅"),
        ("'{\"a\": [1]}'|jsonparse", {"a": [1]}),
        ("object|jsonstringify", '{"name":"John","surname":"Doe"}'),
        ("value|typeof", "number"),
        ("'2024-05-01T12:00:00+09:00'|gettime", 1714532400000),
        ("2.5|round", 3),
        ("value > 5 ? '高' : '低'", "高"),
        ("'x' in name", False),
        # JavaScript gives NaN: the attribute is not sent
        ("name * 2", None),
        ("missing * 2", 0),
        ("name.length", None),  # no member access on strings: nothing, not Python's str
    ],
)
def test_values_as_iotagent_node_lib_computes_them(source: str, expected: Any) -> None:
    assert Expression(source).evaluate(MEASURE) == expected


def test_names_are_the_variables_read() -> None:
    assert Expression("(level * 0.897) / 100 + offset.value").names == {"level", "offset"}
    assert Expression("array[.x > 1]").names == {"array"}


@pytest.mark.parametrize(
    "source",
    ["a +* b", "value | nosuch", "'unterminated", "", "x" * 1001, "f(1)", 42],
)
def test_bad_expressions_are_refused_when_compiled(source: Any) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(source, "attribute t")


def test_evaluation_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # no operator can build a huge value: * does not repeat strings, ^ is bounded
    assert Expression('"x" * 1000000000').evaluate({}) is None
    assert Expression("10 ^ 100000").evaluate({}) is None
    with pytest.raises(ExpressionError, match="elements"):
        Expression("big|concatarr(big)").evaluate({"big": list(range(60_000))})
    # a step budget stops a long evaluation
    monkeypatch.setattr(expressions, "MAX_STEPS", 50)
    long = " + ".join(["value"] * 40)
    with pytest.raises(ExpressionError, match="steps"):
        Expression(long).evaluate(MEASURE)


def test_a_failing_transformation_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="not a date"):
        Expression("name|toisodate").evaluate(MEASURE)
    with pytest.raises(ExpressionError, match="jsonparse"):
        Expression("name|jsonparse").evaluate(MEASURE)
