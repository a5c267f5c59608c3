"""Fixtures written by the tests themselves: CSV files in the encodings cities use."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from connectors.csv.layout import DEFAULT_CONTEXT, Column, Layout
from schemas import CONTEXTS_DIR

RENKEI_CONTEXT_FILE = CONTEXTS_DIR / "renkei-v2.jsonld"


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode(encoding)


def write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    path.write_bytes(csv_bytes(rows, encoding))
    return path


def preload_file(tmp_path: Path) -> Path:
    """A broker ``--context-preload`` file serving Renkei's context offline."""
    path = tmp_path / "contexts.json"
    path.write_text(json.dumps({DEFAULT_CONTEXT: str(RENKEI_CONTEXT_FILE)}))
    return path


def canonical_cell(col: Column, n: int) -> str:
    """A value in canonical form for the column (what export writes back unchanged)."""
    kind = col.kind
    if kind == "lg-code":
        return "131016"
    if kind == "number":
        return f"{n}.5"
    if kind == "integer":
        return str(100 + n)
    if kind == "date":
        return f"2024-04-{n % 28 + 1:02d}"
    if kind == "time":
        return "09:00"
    if kind == "code":
        return list(col.export_codes.values())[n % len(col.export_codes)]
    if kind == "boolean":
        return (col.true_words[0], col.false_words[0])[n % 2]
    if kind == "latitude":
        return f"35.63{n:02d}"
    if kind == "longitude":
        return f"139.57{n:02d}"
    if col.attribute == "identifier":
        return f"{n:04d}"
    if col.nfkc:  # half-width columns: NFKC would rewrite ① and ㈱
        return f"{col.attribute}-{n}"
    return f"{col.header}{n}①㈱髙"


def canonical_rows(layout: Layout, count: int) -> list[list[str]]:
    return [layout.headers] + [
        [canonical_cell(col, n) for col in layout.columns] for n in range(1, count + 1)
    ]
