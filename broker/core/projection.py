"""``pick``/``omit`` projections (NGSI-LD v1.8): ``id,name,locatedAt{id,name}``.

A projection is a tree: member or attribute name -> sub-projection (for the entity a
Relationship links to, when linked entities are joined) or None.
"""

from __future__ import annotations

import re

from broker.errors import BadRequestData

Tree = dict[str, "Tree | None"]

_NAME = re.compile(r"[A-Za-z_@][^,{}\s;=<>\"'()\[\]]*")


#: Deeper nesting of ``{...}`` is refused: entities are never that deep, and it bounds
#: recursion here and wherever the tree is walked.
MAX_DEPTH = 32


def parse_projection(text: str, what: str) -> Tree:
    """Parse a pick/omit expression; every syntax error is 400 with its position."""
    tree, pos = _items(text, 0, what, nested=False)
    if pos != len(text):
        raise BadRequestData(f"{what}: unexpected {text[pos]!r} at position {pos + 1}")
    return tree


def _items(text: str, pos: int, what: str, *, nested: bool, depth: int = 0) -> tuple[Tree, int]:
    if depth > MAX_DEPTH:
        raise BadRequestData(f"{what}: '{{' nested deeper than {MAX_DEPTH} at position {pos}")
    tree: Tree = {}
    while True:
        match = _NAME.match(text, pos)
        if match is None:
            found = repr(text[pos]) if pos < len(text) else "end of text"
            raise BadRequestData(f"{what}: expected a name at position {pos + 1}, found {found}")
        name = match.group(0)
        pos = match.end()
        sub: Tree | None = None
        if pos < len(text) and text[pos] == "{":
            sub, pos = _items(text, pos + 1, what, nested=True, depth=depth + 1)
            if pos >= len(text) or text[pos] != "}":
                raise BadRequestData(f"{what}: unclosed '{{' after {name!r}")
            pos += 1
        tree[name] = sub
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if nested and pos < len(text) and text[pos] == "}":
            return tree, pos
        if pos < len(text) and not nested:
            raise BadRequestData(f"{what}: unexpected {text[pos]!r} at position {pos + 1}")
        return tree, pos
