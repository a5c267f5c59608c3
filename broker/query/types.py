"""Entity type expressions: ``A,B`` and ``A|B`` are alternatives, ``A;B`` a conjunction."""

from __future__ import annotations

from broker.errors import BadRequestData
from broker.model.query import MAX_TERMS


def type_alternatives(value: str | None) -> list[list[str]]:
    """Parse a type expression into alternatives of conjunctions (parentheses group).

    ``(A;B)|C`` is ``[["A", "B"], ["C"]]``. Used wherever NGSI-LD takes a type:
    the ``type`` parameter, query bodies and subscription entity selectors.
    """
    if value is None:
        return []
    if not value.strip():
        raise BadRequestData("type must not be empty")
    cleaned = value.replace("(", "").replace(")", "")
    alternatives = [part for chunk in cleaned.split("|") for part in chunk.split(",")]
    if sum(alt.count(";") + 1 for alt in alternatives) > MAX_TERMS:
        raise BadRequestData(f"a type expression names at most {MAX_TERMS} types")
    if any(not a.strip() for a in alternatives):
        raise BadRequestData(f"malformed type expression {value!r}")
    return [[t.strip() for t in alt.split(";")] for alt in alternatives]
