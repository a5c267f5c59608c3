# ruff: noqa: RUF001, RUF002  (Japanese text: full-width brackets are intended)
"""CSV -> NGSI-LD entities, validated in one pass, then sent in batch upserts.

:func:`plan_import` reads the whole file and returns the entities to write together with
every problem found, each with its file line and column, so that the user fixes a file
once rather than once per error. Rows with errors are left out of the plan; the caller
decides whether to send the rest or (``--strict``) nothing at all.

A row is an error only when its entity cannot be built: no id, no name, coordinates that
cannot be read or are out of range, a value that cannot be parsed. A blank value in
another required (値必須) column is a warning, counted per column
(:meth:`ImportPlan.blank_counts`): published city files often leave ``URL`` or
``画像URL（配列）`` empty, and the standard's 値必須 says what a publisher should fill, not
what makes a record unusable. ``strict=True`` makes those blanks errors again. A header
that does not fit the layout at all (see :mod:`connectors.csv.detect`) refuses the file.

A field longer than the csv module's field limit (:data:`FIELD_LIMIT`) is an error of
its row, reported with its line and column; the rows after it are read as usual.

:func:`send` writes a
plan with ``/entityOperations/upsert``: entity ids come from the data (the standard ID
column and the local government code), so importing the same file again replaces the
same entities instead of adding new ones.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from connectors.client import BrokerClient
from connectors.csv.detect import fit, mismatch_message
from connectors.csv.encoding import decode
from connectors.csv.geo import to_wgs84
from connectors.csv.layout import GEO_KINDS, Column, Layout
from connectors.csv.values import (
    CellError,
    nfkc,
    parse_date,
    parse_integer,
    parse_lg_code,
    parse_number,
    parse_time,
)

__all__ = [
    "FIELD_LIMIT",
    "ImportPlan",
    "ImportResult",
    "Problem",
    "plan_import",
    "read_header",
    "send",
]

BATCH_SIZE = 500
#: Batches are also cut by size, well under the broker's default 4 MiB request bound.
BATCH_BYTES = 2 * 1024 * 1024

#: Longest field read, in characters: the csv module's own limit (128 KiB), which this
#: module never raises (the limit is process-wide). Cell text longer than this is not a
#: value a city system exports; a multi-megabyte cell would also outgrow a batch.
FIELD_LIMIT = 128 * 1024

_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_ROMAN_NUMERALS = "I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX"
_ROMAN = {r: i for i, r in enumerate(_ROMAN_NUMERALS.split(" "), 1)}


@dataclass(frozen=True)
class Problem:
    """One problem in the file; ``line`` is the physical line where the record starts."""

    line: int
    column: str | None
    ja: str
    en: str
    warning: bool = False
    #: a blank value in a required column (a warning unless strict), counted per column
    blank: bool = False

    def __str__(self) -> str:
        if self.column is None:
            return f"{self.line}行目: {self.ja} / line {self.line}: {self.en}"
        return (
            f"{self.line}行目 「{self.column}」: {self.ja} / "
            f"line {self.line}, column {self.column}: {self.en}"
        )


@dataclass
class ImportPlan:
    entities: list[dict[str, Any]] = field(default_factory=list)
    #: entity id -> line of its row, to report what the broker refused.
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    encoding: str = ""
    #: why the whole file was refused because of its header (the wrong layout)
    refused: Problem | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    @property
    def rows_with_errors(self) -> int:
        return len({p.line for p in self.errors})

    def blank_counts(self) -> dict[str, int]:
        """Required column header -> number of rows where it is blank, in file order."""
        counts: dict[str, int] = {}
        for p in self.problems:
            if p.blank and p.column is not None:
                counts[p.column] = counts.get(p.column, 0) + 1
        return counts


@dataclass
class ImportResult:
    written: int = 0
    #: (line, entity id, message) for entities the broker refused.
    refused: list[tuple[int, str, str]] = field(default_factory=list)


# -- reading -------------------------------------------------------------------------------


class _Oversized(Exception):
    def __init__(self, line: int, field: int, next_line: int, rest: int) -> None:
        self.line, self.field, self.next_line, self.rest = line, field, next_line, rest


def _records(text: str) -> Iterator[tuple[int, list[str] | _Oversized]]:
    """(line where the record starts, fields); quoted fields may span lines. A record
    with a field over the csv module's limit comes as an :class:`_Oversized` and reading
    goes on after it."""
    offset, base = 0, 1
    while True:
        reader = csv.reader(io.StringIO(text[offset:], newline=""))
        start = base
        try:
            for row in reader:
                yield start, row
                start = base + reader.line_num
            return
        except csv.Error:
            found = _find_oversized(text, _line_offset(text, offset, start - base), start)
            if found is None:
                raise
            yield start, found
            offset, base = found.rest, found.next_line


def _line_offset(text: str, offset: int, lines: int) -> int:
    """The offset in ``text`` of the physical line ``lines`` lines after ``offset``."""
    for line in io.StringIO(text[offset:], newline=""):
        if lines == 0:
            break
        offset += len(line)
        lines -= 1
    return offset


def _find_oversized(text: str, pos: int, line: int) -> _Oversized | None:
    """Scan the record at ``pos`` as the csv module's excel dialect reads it: the first
    field longer than the limit, and where the next record starts."""
    limit = csv.field_size_limit()
    n = len(text)
    field = length = 0
    field_line = line
    field_start = pos
    quoted = False
    found: tuple[int, int] | None = None
    i = pos
    while i < n:
        c = text[i]
        if quoted:
            if c == '"':
                if text.startswith('"', i + 1):
                    i += 1
                else:
                    quoted = False
                    i += 1
                    continue
            elif c == "\n" or (c == "\r" and not text.startswith("\n", i + 1)):
                line += 1
        elif c == '"' and i == field_start:
            quoted = True
            i += 1
            continue
        elif c in ",\r\n":
            if found is None and length > limit:
                found = (field_line, field)
            if c == ",":
                field, length = field + 1, 0
                i += 1
                field_start, field_line = i, line
                continue
            i += 2 if text.startswith("\r\n", i) else 1
            line += 1
            if found is not None:
                return _Oversized(found[0], found[1], line, i)
            return None  # a record without an oversized field: some other csv error
        length += 1
        i += 1
    if found is None and length > limit:
        found = (field_line, field)
    return None if found is None else _Oversized(found[0], found[1], line + 1, n)


def read_header(data: bytes, encoding: str | None = None) -> list[str]:
    """The header row of a CSV file (empty when there is none)."""
    text, _ = decode(data, encoding)
    for _, row in _records(text):
        return row if isinstance(row, list) else []
    return []


def _oversized(line: int, header: list[str], found: _Oversized) -> Problem:
    column = header[found.field] if found.field < len(header) else str(found.field + 1)
    kib = csv.field_size_limit() // 1024
    return Problem(
        found.line,
        column,
        f"項目が長すぎます（{kib} KiB まで）。{line}行目から始まる行は読み込みません",
        f"field longer than {kib} KiB: the record starting on line {line} is skipped",
    )


def plan_import(
    data: bytes,
    layout: Layout,
    *,
    encoding: str | None = None,
    strict: bool = False,
) -> ImportPlan:
    """Parse and validate ``data`` (the bytes of a CSV file) into entities; with
    ``strict``, blank required values are errors rather than warnings."""
    text, used = decode(data, encoding or layout.encoding)
    plan = ImportPlan(encoding=used)
    records = _records(text)
    first = next(records, None)
    if first is not None and isinstance(first[1], _Oversized):
        plan.problems.append(_oversized(first[0], [], first[1]))
        return plan
    header = first[1] if first is not None else []
    if isinstance(header, _Oversized) or not any(h.strip() for h in header):
        plan.problems.append(Problem(1, None, "見出し行がありません", "no header row"))
        return plan
    index = _match_header(header, layout, plan.problems)
    match = fit(layout, header)
    if not match.fits:
        ja, en = mismatch_message(match, header)
        plan.refused = Problem(1, None, ja, en)
        plan.problems = [plan.refused, *(p for p in plan.problems if not p.warning)]
        return plan
    if any(not p.warning for p in plan.problems):
        return plan
    width = len(header)
    seen: dict[str, int] = {}
    for line, row in records:
        if isinstance(row, _Oversized):
            plan.rows += 1
            plan.problems.append(_oversized(line, header, row))
            continue
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        plan.rows += 1
        if len(row) != width:
            plan.problems.append(
                Problem(
                    line,
                    None,
                    f"項目数が{len(row)}で、見出しの{width}と違います",
                    f"{len(row)} fields, the header has {width}",
                )
            )
            continue
        entity_id, entity, problems = _build(layout, index, row, line, strict)
        plan.problems.extend(problems)
        if entity_id is None:
            continue
        first_line = seen.get(entity_id)
        if first_line is not None:
            plan.problems.append(
                Problem(
                    line,
                    None,
                    f"ID {entity_id} は{first_line}行目と重複しています",
                    f"id {entity_id} is the same as on line {first_line}",
                )
            )
            continue
        seen[entity_id] = line
        if entity is not None:
            plan.lines[entity_id] = line
            plan.entities.append(entity)
    return plan


def _match_header(headers: list[str], layout: Layout, problems: list[Problem]) -> dict[Column, int]:
    index: dict[Column, int] = {}
    for i, h in enumerate(headers):
        col = layout.column_for(h)
        if col is None:
            if h.strip():
                problems.append(
                    Problem(
                        1,
                        h,
                        "定義にない列です（読み込みません）",
                        "not a column of the layout (ignored)",
                        warning=True,
                    )
                )
            continue
        if col in index:
            problems.append(
                Problem(
                    1,
                    h,
                    f"列「{headers[index[col]]}」と同じ項目です（最初の列を使います）",
                    f"same column as {headers[index[col]]} (the first one is used)",
                    warning=True,
                )
            )
            continue
        index[col] = i
    for col in layout.columns:
        if col not in index and col.required and col.attribute == "name" and col.key is None:
            problems.append(
                Problem(
                    1,
                    col.header,
                    "名称の列がありません（エンティティを作れません）",
                    "the name column is missing (entities cannot be built without a name)",
                )
            )
        elif col not in index and col.required:
            problems.append(
                Problem(
                    1,
                    col.header,
                    "必須の列がありません（値は空として扱います）",
                    "required column is missing (its values are taken as empty)",
                    warning=True,
                )
            )
    present = {c.attribute for c in index}
    for alts in layout.id_fields():
        if not any(a in present for a in alts):
            names = " / ".join(
                c.header for c in layout.columns if c.attribute in alts and c.key is None
            )
            problems.append(
                Problem(
                    1,
                    names,
                    "エンティティIDを作るための列がありません",
                    "the column that entity ids are made from is missing",
                )
            )
    return index


def _convert(col: Column, cell: str) -> Any:
    """The stored value of a non-empty cell (NFKC already applied where asked)."""
    kind = col.kind
    if kind == "string":
        return cell
    text = cell.strip()
    if kind in ("number", "latitude", "longitude", "plane-x", "plane-y"):
        return parse_number(text)
    if kind == "integer":
        return parse_integer(text)
    if kind == "date":
        return parse_date(text)
    if kind == "time":
        return parse_time(text)
    if kind == "lg-code":
        return parse_lg_code(text)
    if kind == "code":
        try:
            return col.codes[text]
        except KeyError:
            allowed = " / ".join(dict.fromkeys(col.codes))
            raise CellError(
                f"使えない値です（{text}; 使える値: {allowed}）",
                f"not one of the allowed values ({text}; allowed: {allowed})",
            ) from None
    if kind == "boolean":
        folded = text.lower()
        if folded in (w.lower() for w in col.true_words):
            return True
        if folded in (w.lower() for w in col.false_words):
            return False
        raise CellError(
            f"はい/いいえの値として読めません（{text}; 使える値: {'/'.join(col.true_words)} または {'/'.join(col.false_words)}）",
            f"not a yes/no value ({text}; use {'/'.join(col.true_words)} or {'/'.join(col.false_words)})",
        )
    if kind == "plane-zone":
        zone = _ROMAN.get(text.upper())
        if zone is None and text.isdigit():
            zone = int(text)
        if zone is None or not 1 <= zone <= 19:
            raise CellError(
                f"平面直角座標系の系番号（1〜19）ではありません（{text}）",
                f"not a plane rectangular zone 1..19 ({text})",
            )
        return zone
    raise AssertionError(f"unknown kind {kind}")


def _build(
    layout: Layout, index: dict[Column, int], row: list[str], line: int, strict: bool = False
) -> tuple[str | None, dict[str, Any] | None, list[Problem]]:
    """(entity id, entity or None when the row has errors, problems of the row)."""
    problems: list[Problem] = []
    id_attrs = {a for alts in layout.id_fields() for a in alts}
    values: dict[str, Any] = {}
    objects: dict[str, dict[str, Any]] = {}
    geo: dict[str, tuple[Column, Any]] = {}
    failed: set[str] = set()
    for col in layout.columns:
        i = index.get(col)
        cell = row[i] if i is not None else ""
        if col.nfkc:
            cell = nfkc(cell)
        empty = not cell.strip() if col.kind != "string" else cell == ""
        if empty and not (col.kind == "boolean" and "" in col.false_words):
            if not col.required or i is None or (col.attribute in id_attrs and col.key is None):
                continue  # a blank id is reported when the id is made
            if col.attribute == "name" and col.key is None:
                problems.append(
                    Problem(
                        line,
                        col.header,
                        "名称が空です（エンティティを作れません）",
                        "the name is empty (the entity cannot be built)",
                    )
                )
            else:
                problems.append(
                    Problem(
                        line,
                        col.header,
                        "必須項目が空です",
                        "a value is required",
                        warning=not strict,
                        blank=True,
                    )
                )
            continue
        try:
            value = _convert(col, cell) if not empty else False
        except CellError as exc:
            problems.append(Problem(line, col.header, exc.ja, exc.en))
            failed.add(col.attribute)
            continue
        if col.kind in GEO_KINDS:
            geo[col.kind] = (col, value)
        elif col.key is not None:
            objects.setdefault(col.attribute, {})[col.key] = value
        else:
            values[col.attribute] = value
    location = _location(layout, geo, line, problems)
    entity_id = _entity_id(layout, values, line, problems, failed)
    if entity_id is None or any(not p.warning for p in problems):
        return entity_id, None, problems
    entity: dict[str, Any] = {"id": entity_id, "type": layout.entity_type}
    for col in layout.columns:
        attr = col.attribute
        if attr in entity:
            continue
        if col.key is not None and attr in objects:
            entity[attr] = {"type": "Property", "value": objects[attr]}
        elif col.kind not in GEO_KINDS and attr in values:
            prop: dict[str, Any] = {"type": "Property", "value": values[attr]}
            if col.unit:
                prop["unitCode"] = col.unit
            entity[attr] = prop
    if location is not None:
        entity["location"] = {"type": "GeoProperty", "value": location}
    return entity_id, entity, problems


def _location(
    layout: Layout,
    geo: dict[str, tuple[Column, Any]],
    line: int,
    problems: list[Problem],
) -> dict[str, Any] | None:
    lat, lon = geo.get("latitude"), geo.get("longitude")
    x, y, z = geo.get("plane-x"), geo.get("plane-y"), geo.get("plane-zone")
    if lat or lon:
        if not (lat and lon):
            missing = next(
                c for c in layout.columns if c.kind == ("longitude" if lat else "latitude")
            )
            problems.append(
                Problem(
                    line,
                    missing.header,
                    "緯度と経度は両方必要です",
                    "latitude and longitude go together",
                )
            )
            return None
        ok = True
        if not -90 <= lat[1] <= 90:
            problems.append(
                Problem(
                    line,
                    lat[0].header,
                    f"緯度の範囲外です（{lat[1]}）",
                    f"latitude out of range ({lat[1]})",
                )
            )
            ok = False
        if not -180 <= lon[1] <= 180:
            problems.append(
                Problem(
                    line,
                    lon[0].header,
                    f"経度の範囲外です（{lon[1]}）",
                    f"longitude out of range ({lon[1]})",
                )
            )
            ok = False
        return {"type": "Point", "coordinates": [lon[1], lat[1]]} if ok else None
    if x or y:
        if not (x and y):
            missing = next(c for c in layout.columns if c.kind == ("plane-y" if x else "plane-x"))
            problems.append(
                Problem(line, missing.header, "X座標とY座標は両方必要です", "X and Y go together")
            )
            return None
        zone = z[1] if z else layout.plane_zone
        if zone is None:
            col = next(c for c in layout.columns if c.kind == "plane-zone")
            problems.append(Problem(line, col.header, "系番号が空です", "the zone is empty"))
            return None
        try:
            lon_, lat_ = to_wgs84(float(x[1]), float(y[1]), zone)
        except Exception:  # pyproj reports points it cannot project as ProjError
            problems.append(
                Problem(line, x[0].header, "座標を変換できません", "cannot convert the coordinates")
            )
            return None
        if not (-90 <= lat_ <= 90 and -180 <= lon_ <= 180):
            problems.append(
                Problem(line, x[0].header, "座標を変換できません", "cannot convert the coordinates")
            )
            return None
        return {"type": "Point", "coordinates": [lon_, lat_]}
    return None


def _entity_id(
    layout: Layout,
    values: dict[str, Any],
    line: int,
    problems: list[Problem],
    failed: set[str],
) -> str | None:
    missing: list[str] = []

    def fill(m: re.Match[str]) -> str:
        alts = [a.strip() for a in m.group(1).split("|")]
        if alts == ["type"]:
            return layout.entity_type
        for a in alts:
            v = values.get(a)
            if v is not None and v != "":
                return quote(str(v), safe="-._~")
        if not failed.intersection(alts):  # an unreadable value is reported already
            missing.extend(alts)
        return ""

    entity_id = _PLACEHOLDER_RE.sub(fill, layout.id_template)
    if failed.intersection(a for alts in layout.id_fields() for a in alts) and not missing:
        return None
    if missing:
        headers = " / ".join(
            c.header for c in layout.columns if c.attribute in missing and c.key is None
        )
        problems.append(
            Problem(
                line,
                headers,
                "IDを作れません: 値が空です",
                "cannot make the entity id: the value is empty",
            )
        )
        return None
    return entity_id


# -- sending -------------------------------------------------------------------------------


def batches(
    entities: list[dict[str, Any]], size: int = BATCH_SIZE
) -> Iterator[list[dict[str, Any]]]:
    """Slices of at most ``size`` entities and about ``BATCH_BYTES`` of JSON."""
    batch: list[dict[str, Any]] = []
    nbytes = 0
    for ent in entities:
        n = len(orjson.dumps(ent))
        if batch and (len(batch) >= size or nbytes + n > BATCH_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(ent)
        nbytes += n
    if batch:
        yield batch


async def send(
    client: BrokerClient,
    plan: ImportPlan,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> ImportResult:
    """Upsert the planned entities; ``on_batch(n)`` is called after each batch of n."""
    result = ImportResult()
    for batch in batches(plan.entities, batch_size):
        outcome = await client.upsert(batch)
        result.written += len(outcome.success)
        for eid, problem in outcome.errors:
            detail = problem.get("detail") or problem.get("title") or str(problem)
            result.refused.append((plan.lines.get(eid, 0), eid, str(detail)))
        if on_batch is not None:
            on_batch(len(batch))
    return result
