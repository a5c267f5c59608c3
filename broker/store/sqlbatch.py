"""Many rows in few SQLite statements.

``executemany`` steps its statement once per row, and every step releases Python's
interpreter lock and takes it back. When the event loop thread is busy (parsing the
next request), taking it back can wait a whole switch interval (5 ms): the writer
thread then crawls through a group at a row per switch. One statement per few hundred
rows (multi-row ``VALUES``, ``IN (...)``) keeps the writer's hand-offs rare and also
saves the per-row call overhead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

#: rows per statement; SQLite takes up to 32,766 parameters
ROWS = 200


@lru_cache(maxsize=256)
def _values(width: int, count: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * count)


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """``{head} VALUES (...),(...) {tail}`` for all ``rows`` (all of one width), in order."""
    if not rows:
        return
    width = len(rows[0])
    for i in range(0, len(rows), ROWS):
        part = rows[i : i + ROWS]
        conn.execute(
            f"{head} VALUES {_values(width, len(part))} {tail}",
            list(chain.from_iterable(part)),
        )


@lru_cache(maxsize=64)
def _marks(count: int) -> str:
    return ",".join("?" * count)


def where_in(conn: sqlite3.Connection, statement: str, keys: Sequence[Any]) -> None:
    """Run ``statement`` (with one ``{}`` where the ``IN`` list goes) for all ``keys``."""
    for i in range(0, len(keys), ROWS):
        part = keys[i : i + ROWS]
        conn.execute(statement.format(_marks(len(part))), part)


def rows_in(
    conn: sqlite3.Connection, statement: str, keys: Sequence[Any], *leading: Any
) -> Iterator[Any]:
    """The rows of ``statement`` (``{}`` where the ``IN`` list goes, after the
    ``leading`` parameters) for all ``keys``, a few hundred keys per statement."""
    for i in range(0, len(keys), ROWS):
        part = keys[i : i + ROWS]
        yield from conn.execute(statement.format(_marks(len(part))), (*leading, *part))


def max_id(conn: sqlite3.Connection, table: str, column: str) -> int:
    """The largest number in ``column`` (0 for none): new rows are numbered after it,
    which is safe inside a write transaction (it holds SQLite's write lock)."""
    return int(conn.execute(f"SELECT coalesce(max({column}), 0) FROM {table}").fetchone()[0])
