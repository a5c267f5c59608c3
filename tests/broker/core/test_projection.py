"""pick/omit expressions (NGSI-LD v1.8): nested members, and 400 with the position.

Names follow the NGSI-LD attribute-name grammar (they start with an ASCII letter, ``_``
or ``@``), so the terms here are romanised."""

from __future__ import annotations

import pytest

from broker.core.projection import parse_projection
from broker.errors import BadRequestData


def test_flat_and_nested_members() -> None:
    assert parse_projection("meisho,shuyoNinzu", "pick") == {"meisho": None, "shuyoNinzu": None}
    tree = parse_projection("id,shozaiChiku{meisho,jinko}", "omit")
    assert tree == {"id": None, "shozaiChiku": {"meisho": None, "jinko": None}}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("meisho,,shuyoNinzu", "position 8"),
        ("shozaiChiku{meisho", "unclosed '{'"),
        ("meisho}", "position 7"),
        ("", "position 1"),
    ],
)
def test_syntax_errors_are_400_and_say_where(text: str, where: str) -> None:
    with pytest.raises(BadRequestData) as err:
        parse_projection(text, "pick")
    assert err.value.detail.startswith("pick: ")
    assert where in err.value.detail
