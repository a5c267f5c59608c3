"""Entities -> rows of the layout's CSV: the inverse of the import.

For a file in canonical form (6-digit codes, ISO dates, ``hh:mm`` times, the canonical
code spellings, shortest decimal numbers) import followed by export gives the same rows.
Other spellings come back canonical: ``R6.4.1`` as ``2024-04-01``, ``有`` as ``あり``,
``0`` in a hazard column as empty, an old header as the current one.

Entities may be in any NGSI-LD representation: normalized, concise or keyValues.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from connectors.csv.geo import from_wgs84
from connectors.csv.layout import Column, Layout
from connectors.csv.values import format_number

__all__ = ["entity_to_row", "export_rows", "write_csv"]


def _value(attr: Any) -> Any:
    """The value of an attribute in normalized, concise or keyValues form."""
    if isinstance(attr, dict):
        if "value" in attr:
            return attr["value"]
        if attr.get("type") in ("Point", "Polygon", "LineString"):
            return attr
        if "@value" in attr:
            return attr["@value"]
    return attr


def _cell(col: Column, value: Any) -> str:
    if value is None:
        return ""
    kind = col.kind
    if kind == "boolean":
        return col.true_words[0] if value else col.false_words[0]
    if kind == "code":
        return col.export_codes.get(str(value), str(value))
    if kind in ("number", "integer"):
        return format_number(value)
    return str(value)


def entity_to_row(layout: Layout, entity: dict[str, Any]) -> list[str]:
    row: list[str] = []
    point: list[float] | None = None
    loc = _value(entity.get("location"))
    if isinstance(loc, dict) and loc.get("type") == "Point":
        coords = loc.get("coordinates")
        if isinstance(coords, list) and len(coords) >= 2:
            point = [float(coords[0]), float(coords[1])]
    plane: tuple[float, float] | None = None
    if point is not None and layout.plane_zone is not None:
        plane = from_wgs84(point[0], point[1], layout.plane_zone)
    for col in layout.columns:
        if col.kind == "latitude":
            row.append(format_number(point[1]) if point else "")
        elif col.kind == "longitude":
            row.append(format_number(point[0]) if point else "")
        elif col.kind == "plane-x":
            row.append(format_number(plane[0]) if plane else "")
        elif col.kind == "plane-y":
            row.append(format_number(plane[1]) if plane else "")
        elif col.kind == "plane-zone":
            row.append(str(layout.plane_zone) if plane else "")
        elif col.key is not None:
            obj = _value(entity.get(col.attribute))
            row.append(_cell(col, obj.get(col.key) if isinstance(obj, dict) else None))
        else:
            row.append(_cell(col, _value(entity.get(col.attribute))))
    return row


def export_rows(layout: Layout, entities: Iterable[dict[str, Any]]) -> Iterator[list[str]]:
    """The header row, then one row per entity."""
    yield layout.headers
    for entity in entities:
        yield entity_to_row(layout, entity)


def write_csv(layout: Layout, entities: Iterable[dict[str, Any]], out: io.TextIOBase | Any) -> None:
    """Write CSV text to ``out`` (open it with ``encoding="utf-8-sig", newline=""``)."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(export_rows(layout, entities))
