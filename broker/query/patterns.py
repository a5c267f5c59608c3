"""Regular expressions from clients (``idPattern``, ``~=``), matched in linear time.

Patterns run on RE2 (google-re2), which never backtracks, so a hostile pattern cannot
stall the broker; its syntax is Perl's without backreferences and look-around. A
pattern RE2 refuses, or one longer than ``MAX_PATTERN``, is 400 BadRequestData.
Both the store backends and the reference evaluator match through :func:`search`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import re2

from broker.errors import BadRequestData

MAX_PATTERN: Final = 256

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def check_pattern(pattern: str) -> str:
    """Refuse patterns that are too long or not valid RE2 syntax; return the pattern."""
    if len(pattern) > MAX_PATTERN:
        raise BadRequestData(f"pattern longer than {MAX_PATTERN} characters")
    try:
        _compile(pattern)
    except re2.error as exc:
        raise BadRequestData(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` is found anywhere in ``text`` (like ``re.search``)."""
    try:
        return _compile(pattern).search(text) is not None
    except re2.error:
        return False
