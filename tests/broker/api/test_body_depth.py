"""The JSON nesting bound: counting brackets first must reject exactly what walking the
parsed body rejects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.api.common import _depth, check_depth
from broker.errors import BadRequestData

_text = st.text(alphabet='ab{}[]"\\:,', max_size=6)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)


def _rejected(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except BadRequestData:
        return True
    return False


@settings(max_examples=400)
@given(body=_json, limit=st.integers(min_value=1, max_value=8))
def test_counting_brackets_rejects_what_the_walk_rejects(body: Any, limit: int) -> None:
    raw = orjson.dumps(body)
    assert _rejected(check_depth, raw, body, limit) == _rejected(_depth, body, limit)


@pytest.mark.parametrize(("levels", "rejected"), [(4, False), (5, True)])
def test_the_limit_counts_the_scalar_inside(levels: int, rejected: bool) -> None:
    body: Any = 1
    for _ in range(levels):
        body = {"v": body}  # `levels` objects, and the scalar as one more level
    raw = orjson.dumps(body)
    assert _rejected(check_depth, raw, body, 5) is rejected


def test_brackets_inside_strings_do_not_reject_a_flat_body() -> None:
    body = {"note": "{[{[{[{[{["}
    assert not _rejected(check_depth, orjson.dumps(body), body, 3)
