# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""Layouts: how the columns of a CSV become the attributes of NGSI-LD entities.

A layout is read from YAML. Renkei ships one per standard dataset
(``schemas/datasets/<slug>.yaml``, the 自治体標準オープンデータセット columns), and users
write the same format as *mapping files* for their own CSVs. A layout gives the entity
type, the id template and, per column, the Japanese header and its older spellings, the
English attribute name, the kind of value, whether a value is required, the unit, the
code list and whether to NFKC-normalise the text first.

Format (``columns`` is a list of column objects, or a mapping of header -> column object,
or header -> attribute name)::

    type: EvacuationSite                       # NGSI-LD entity type
    id: "urn:ngsi-ld:{type}:{localGovernmentCode}-{identifier}"
    context: https://renkei.city/ns/renkei-v1.jsonld   # optional
    plane_zone: 9                              # optional: zone of plane-x / plane-y columns
    columns:
      - header: 想定収容人数
        aliases: [収容人数]
        attribute: maxCapacity
        type: integer                          # see KINDS
        unit: IE                               # unitCode (UN/CEFACT common code)
        required: false
        nfkc: true                             # default: true except for kind string

Id templates name attributes in braces; ``{a|b}`` takes ``a`` or, when it is empty, ``b``;
``{type}`` is the entity type. Values are percent-encoded, so any text makes a valid URI.
Columns with ``key`` fill one member of an object-valued attribute (``address``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from connectors.csv.values import nfkc
from schemas import RENKEI_CONTEXT_URL, SCHEMAS_DIR

__all__ = [
    "DATASETS_DIR",
    "DEFAULT_CONTEXT",
    "KINDS",
    "Column",
    "Layout",
    "LayoutError",
    "dataset_slugs",
    "load_dataset",
    "load_mapping",
    "parse_layout",
]

DATASETS_DIR = SCHEMAS_DIR / "datasets"
#: Renkei's own JSON-LD context (``schemas/contexts/renkei-v1.jsonld``), sent as the Link.
DEFAULT_CONTEXT = RENKEI_CONTEXT_URL

#: Kinds of column value. ``era-date`` is ``date`` (both read era and Gregorian dates).
KINDS = frozenset(
    {
        "string",
        "number",
        "integer",
        "boolean",
        "code",
        "date",
        "era-date",
        "time",
        "lg-code",
        "latitude",
        "longitude",
        "plane-x",
        "plane-y",
        "plane-zone",
    }
)
GEO_KINDS = frozenset({"latitude", "longitude", "plane-x", "plane-y", "plane-zone"})
DEFAULT_TRUE = ("有", "あり", "はい", "可", "○", "〇", "1", "true", "yes")
DEFAULT_FALSE = ("無", "なし", "いいえ", "不可", "×", "0", "false", "no")

_COLUMN_KEYS = frozenset(
    {
        "header",
        "aliases",
        "attribute",
        "type",
        "transform",
        "key",
        "required",
        "nfkc",
        "unit",
        "values",
        "value_aliases",
        "true",
        "false",
        "notes",
    }
)
_LAYOUT_KEYS = frozenset(
    {
        "slug",
        "title",
        "source",
        "notes",
        "type",
        "id",
        "context",
        "plane_zone",
        "encoding",
        "columns",
    }
)
_ATTR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_RESERVED = frozenset({"id", "type", "@context", "scope", "createdAt", "modifiedAt"})


class LayoutError(ValueError):
    """A layout or mapping file is not valid; each message names the file and the key."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True, eq=False)  # identity: columns are dictionary keys
class Column:
    header: str
    attribute: str
    kind: str = "string"
    aliases: tuple[str, ...] = ()
    key: str | None = None
    required: bool = False
    nfkc: bool = False
    unit: str | None = None
    #: code kind: accepted cell text -> stored value (canonical spellings first).
    codes: Mapping[str, str] = field(default_factory=dict)
    #: code kind: stored value -> cell text written on export.
    export_codes: Mapping[str, str] = field(default_factory=dict)
    true_words: tuple[str, ...] = DEFAULT_TRUE
    false_words: tuple[str, ...] = DEFAULT_FALSE

    @property
    def names(self) -> tuple[str, ...]:
        """Header spellings recognised for this column, NFKC-normalised."""
        return tuple(dict.fromkeys(_header_key(h) for h in (self.header, *self.aliases)))


def _header_key(header: str) -> str:
    return nfkc(header).strip().replace(" ", "").replace("\u3000", "")


@dataclass(frozen=True)
class Layout:
    name: str
    source: str
    entity_type: str
    id_template: str
    columns: tuple[Column, ...]
    context: str = DEFAULT_CONTEXT
    plane_zone: int | None = None
    encoding: str | None = None
    title: Mapping[str, str] = field(default_factory=dict)

    def with_type(self, entity_type: str) -> Layout:
        return Layout(
            name=self.name,
            source=self.source,
            entity_type=entity_type,
            id_template=self.id_template,
            columns=self.columns,
            context=self.context,
            plane_zone=self.plane_zone,
            encoding=self.encoding,
            title=self.title,
        )

    def column_for(self, header: str) -> Column | None:
        key = _header_key(header)
        for col in self.columns:
            if key in col.names:
                return col
        return None

    @property
    def headers(self) -> list[str]:
        """The canonical header row, as export writes it."""
        return [c.header for c in self.columns]

    def id_fields(self) -> list[list[str]]:
        """Attributes named by the id template: one list of alternatives per placeholder."""
        return [
            [a.strip() for a in m.group(1).split("|")]
            for m in _PLACEHOLDER_RE.finditer(self.id_template)
            if m.group(1) != "type"
        ]


# -- loading -------------------------------------------------------------------------------


def dataset_slugs() -> list[str]:
    return sorted(p.stem for p in DATASETS_DIR.glob("*.yaml"))


def load_dataset(slug: str) -> Layout:
    """The layout of a standard dataset shipped in ``schemas/datasets``."""
    path = DATASETS_DIR / f"{slug}.yaml"
    if not re.fullmatch(r"[a-z0-9-]+", slug) or not path.is_file():
        raise LayoutError(
            [
                f"データセット {slug!r} はありません / unknown dataset {slug!r} "
                f"(known: {', '.join(dataset_slugs())})"
            ]
        )
    return load_mapping(path, name=slug)


def load_mapping(path: Path, *, name: str | None = None) -> Layout:
    """Read and validate a mapping file; every problem is reported, with file and key."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError([f"{path}: 読めません / cannot read: {exc}"]) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LayoutError([f"{path}: YAMLとして読めません / not valid YAML: {exc}"]) from exc
    return parse_layout(doc, source=str(path), name=name or path.stem)


def parse_layout(doc: Any, *, source: str, name: str) -> Layout:
    errors: list[str] = []

    def err(key: str, ja: str, en: str) -> None:
        errors.append(f"{source}: {key}: {ja} / {en}")

    if not isinstance(doc, dict):
        raise LayoutError([f"{source}: YAMLの最上位はマッピングです / top level must be a mapping"])
    for key in doc:
        if key not in _LAYOUT_KEYS:
            err(str(key), "不明なキーです", f"unknown key (expected one of {sorted(_LAYOUT_KEYS)})")
    entity_type = doc.get("type")
    if not isinstance(entity_type, str) or not _ATTR_RE.fullmatch(entity_type):
        err("type", "エンティティ型（英数字）が必要です", "an entity type name is required")
        entity_type = "Thing"
    context = doc.get("context", DEFAULT_CONTEXT)
    if not isinstance(context, str) or not context.startswith(("http://", "https://")):
        err("context", "http(s) URL が必要です", "must be an http(s) URL")
        context = DEFAULT_CONTEXT
    plane_zone = doc.get("plane_zone")
    if plane_zone is not None and (
        not isinstance(plane_zone, int) or isinstance(plane_zone, bool) or not 1 <= plane_zone <= 19
    ):
        err("plane_zone", "1〜19の整数です", "must be an integer 1..19")
        plane_zone = None
    encoding = doc.get("encoding")
    if encoding is not None and not isinstance(encoding, str):
        err("encoding", "文字列です", "must be a string")
        encoding = None
    title = doc.get("title") or {}
    if not isinstance(title, dict):
        err("title", "ja/en のマッピングです", "must map ja/en to text")
        title = {}

    columns = _parse_columns(doc.get("columns"), err)
    attrs: dict[str, list[Column]] = {}
    for col in columns:
        attrs.setdefault(col.attribute, []).append(col)
    for attr, cols in attrs.items():
        geo = all(c.kind in GEO_KINDS for c in cols)
        keyed = all(c.key is not None for c in cols)
        if len(cols) > 1 and not geo and not keyed:
            err(
                f"columns.{cols[1].header}.attribute",
                f"属性 {attr} が複数の列に割り当てられています",
                f"attribute {attr} is given to more than one column",
            )
    seen: dict[str, str] = {}
    for col in columns:
        for n in col.names:
            if n in seen and seen[n] != col.header:
                err(
                    f"columns.{col.header}.aliases",
                    f"見出し {n} は列 {seen[n]} と重複しています",
                    f"header {n} is also a name of column {seen[n]}",
                )
            seen.setdefault(n, col.header)
    kinds = {c.kind for c in columns}
    if ("latitude" in kinds) != ("longitude" in kinds):
        err(
            "columns",
            "緯度と経度の列は対で指定します",
            "latitude and longitude columns come in pairs",
        )
    if ("plane-x" in kinds) != ("plane-y" in kinds):
        err(
            "columns",
            "X座標とY座標の列は対で指定します",
            "plane-x and plane-y columns come in pairs",
        )
    if "plane-x" in kinds and "plane-zone" not in kinds and plane_zone is None:
        err(
            "plane_zone",
            "平面直角座標系の系番号が必要です",
            "plane-x/plane-y need plane_zone or a plane-zone column",
        )

    id_template = doc.get("id")
    if not isinstance(id_template, str) or "{" not in id_template:
        err(
            "id",
            "IDテンプレートが必要です（例: urn:ngsi-ld:{type}:{code}）",
            "an id template is required, e.g. urn:ngsi-ld:{type}:{code}",
        )
        id_template = "urn:ngsi-ld:{type}:?"
    else:
        if not id_template.startswith("urn:") and ":" not in id_template.split("{", 1)[0]:
            err(
                "id",
                "IDはURIです（urn:ngsi-ld:... など）",
                "the id must be a URI (urn:ngsi-ld:...)",
            )
        for m in _PLACEHOLDER_RE.finditer(id_template):
            for alt in m.group(1).split("|"):
                alt = alt.strip()
                if alt != "type" and (alt not in attrs or any(c.key for c in attrs[alt])):
                    err(
                        "id",
                        f"{{{alt}}} は列の属性ではありません",
                        f"{{{alt}}} is not the attribute of a column",
                    )
    if errors:
        raise LayoutError(errors)
    assert isinstance(entity_type, str)
    assert isinstance(id_template, str)
    return Layout(
        name=name,
        source=source,
        entity_type=entity_type,
        id_template=id_template,
        columns=tuple(columns),
        context=context,
        plane_zone=plane_zone,
        encoding=encoding,
        title={str(k): str(v) for k, v in title.items()},
    )


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return [str(v) for v in value]
    return None


def _parse_columns(raw: Any, err: Any) -> list[Column]:
    items: list[tuple[str, Any]] = []
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("header"), str):
                err(
                    f"columns[{i}]",
                    "header を持つマッピングです",
                    "must be a mapping with a header",
                )
                continue
            items.append((item["header"], item))
    elif isinstance(raw, dict):
        for header, item in raw.items():
            if isinstance(item, str):
                item = {"attribute": item}
            if not isinstance(item, dict):
                err(
                    f"columns.{header}",
                    "属性名かマッピングです",
                    "must be an attribute name or a mapping",
                )
                continue
            items.append((str(header), item))
    else:
        err("columns", "列の定義が必要です", "a list or mapping of columns is required")
    return [c for header, item in items if (c := _parse_column(header, item, err)) is not None]


def _parse_column(header: str, item: dict[str, Any], err: Any) -> Column | None:
    where = f"columns.{header}"
    # YAML 1.1 reads the keys true: and false: as booleans.
    item = {
        ({True: "true", False: "false"}.get(k, k) if isinstance(k, bool) else k): v
        for k, v in item.items()
    }
    ok = True

    def bad(key: str, ja: str, en: str) -> None:
        nonlocal ok
        ok = False
        err(f"{where}.{key}" if key else where, ja, en)

    for name in item:
        if name not in _COLUMN_KEYS:
            bad(
                str(name), "不明なキーです", f"unknown key (expected one of {sorted(_COLUMN_KEYS)})"
            )
    kind = item.get("type", item.get("transform", "string"))
    if kind not in KINDS:
        bad(
            "type",
            f"不明な型 {kind!r} です",
            f"unknown type {kind!r} (expected one of {sorted(KINDS)})",
        )
        kind = "string"
    if kind == "era-date":
        kind = "date"
    attribute = item.get("attribute", "location" if kind in GEO_KINDS else None)
    if not isinstance(attribute, str) or not _ATTR_RE.fullmatch(attribute):
        bad(
            "attribute",
            "属性名（英数字）が必要です",
            "an attribute name (letters, digits, _) is required",
        )
        attribute = "_"
    elif attribute in _RESERVED:
        bad("attribute", f"{attribute} は予約語です", f"{attribute} is reserved in NGSI-LD")
    aliases = _strings(item.get("aliases", []))
    if aliases is None:
        bad("aliases", "文字列のリストです", "must be a list of strings")
        aliases = []
    key = item.get("key")
    if key is not None and (not isinstance(key, str) or not _ATTR_RE.fullmatch(key)):
        bad("key", "英数字の名前です", "must be a name of letters, digits and _")
    required = item.get("required", False)
    if not isinstance(required, bool):
        bad("required", "true か false です", "must be true or false")
        required = False
    norm = item.get("nfkc", kind != "string")
    if not isinstance(norm, bool):
        bad("nfkc", "true か false です", "must be true or false")
        norm = False
    unit = item.get("unit")
    if unit is not None and not isinstance(unit, str):
        bad(
            "unit",
            "単位コード（UN/CEFACT、例: IE, MTK）です",
            "must be a UN/CEFACT unit code, e.g. IE or MTK",
        )
        unit = None
    codes: dict[str, str] = {}
    export_codes: dict[str, str] = {}
    values = item.get("values")
    if kind == "code":
        if isinstance(values, list) and (vs := _strings(values)) is not None:
            pairs = [(v, v) for v in vs]
        elif isinstance(values, dict):
            pairs = [(str(k), str(v)) for k, v in values.items()]
        else:
            bad(
                "values",
                "コード値のリストかマッピングが必要です",
                "a list (or text -> value mapping) of codes is required",
            )
            pairs = []
        for text, stored in pairs:
            codes[nfkc(text) if norm else text] = stored
            export_codes.setdefault(stored, text)
        extra = item.get("value_aliases", {})
        if not isinstance(extra, dict):
            bad(
                "value_aliases",
                "表記 -> コード値 のマッピングです",
                "must map spellings to code values",
            )
            extra = {}
        for text, stored in extra.items():
            if str(stored) not in export_codes:
                bad(
                    f"value_aliases.{text}",
                    f"{stored} はコード値ではありません",
                    f"{stored} is not one of the values",
                )
            codes[nfkc(str(text)) if norm else str(text)] = str(stored)
    elif values is not None:
        bad(
            "values", "values は type: code の列だけです", "values is only for columns of type code"
        )
    true_words: tuple[str, ...] = DEFAULT_TRUE
    false_words: tuple[str, ...] = DEFAULT_FALSE
    if kind == "boolean":
        t, f = (
            _strings(item.get("true", list(DEFAULT_TRUE))),
            _strings(item.get("false", list(DEFAULT_FALSE))),
        )
        if not t:
            bad("true", "真を表す語のリストです", "must be a list of words meaning yes")
        if f is None:
            bad("false", "偽を表す語のリストです", "must be a list of words meaning no")
        if t and f is not None:
            if set(t) & set(f):
                bad("true", "true と false に同じ語があります", "a word is in both true and false")
            true_words, false_words = tuple(t), tuple(f)
    if kind in GEO_KINDS and attribute != "location" and item.get("attribute") is None:
        attribute = "location"
    if not ok:
        return None
    assert isinstance(attribute, str)
    assert isinstance(kind, str)
    assert key is None or isinstance(key, str)
    return Column(
        header=header,
        attribute=attribute,
        kind=kind,
        aliases=tuple(aliases),
        key=key,
        required=required,
        nfkc=norm,
        unit=unit,
        codes=codes,
        export_codes=export_codes,
        true_words=true_words,
        false_words=false_words,
    )
