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
    context: https://renkei.city/ns/renkei-v2.jsonld   # optional
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

The file is validated by the pydantic models :class:`LayoutDoc` and :class:`ColumnDoc`;
:mod:`schemas.validation` turns their errors into messages naming the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.csv.values import nfkc
from schemas import RENKEI_CONTEXT_URL, SCHEMAS_DIR
from schemas.validation import At, Msg, load_yaml, problem, problems, tolerant, validate

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
#: Renkei's own JSON-LD context (``schemas/contexts/renkei-v2.jsonld``), sent as the Link.
DEFAULT_CONTEXT = RENKEI_CONTEXT_URL

#: Kinds of column value. ``era-date`` is ``date`` (both read era and Gregorian dates).
Kind = Literal[
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
]
KINDS = frozenset(get_args(Kind))
GEO_KINDS = frozenset({"latitude", "longitude", "plane-x", "plane-y", "plane-zone"})
DEFAULT_TRUE = ("有", "あり", "はい", "可", "○", "〇", "1", "true", "yes")
DEFAULT_FALSE = ("無", "なし", "いいえ", "不可", "×", "0", "false", "no")

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
    doc = load_yaml(path, LayoutError)
    return parse_layout(doc, source=str(path), name=name or path.stem)


def parse_layout(doc: Any, *, source: str, name: str) -> Layout:
    """A layout from its parsed YAML; every problem is reported at once."""
    labels = _column_labels(doc.get("columns") if isinstance(doc, dict) else None)
    valid = validate(
        LayoutDoc,
        doc,
        source=source,
        error=LayoutError,
        context={"labels": {"columns": labels} if labels else {}},
    )
    return valid.layout(name=name, source=source)


# -- the file format, as pydantic models ----------------------------------------------------


def _strings(value: Any) -> Any:
    """A word or a list of words (numbers are read as their text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _yaml_bool_keys(value: Any) -> Any:
    """YAML 1.1 reads the keys ``true:`` and ``false:`` as booleans."""
    if isinstance(value, dict):
        return {
            ({True: "true", False: "false"}.get(k, k) if isinstance(k, bool) else k): v
            for k, v in value.items()
        }
    return value


def _columns_list(value: Any) -> Any:
    """The mapping form (header -> column object or attribute name) as the list form."""
    if not isinstance(value, dict):
        return value
    return [
        {"header": str(h), "attribute": item}
        if isinstance(item, str)
        else {"header": str(h), **item}
        if isinstance(item, dict)
        else item
        for h, item in value.items()
    ]


def _column_labels(value: Any) -> list[str | int] | None:
    """How each column is named in messages: its header, else its position."""
    if isinstance(value, dict):
        return [str(h) for h in value]
    if isinstance(value, list):
        return [
            item["header"] if isinstance(item, dict) and isinstance(item.get("header"), str) else i
            for i, item in enumerate(value)
        ]
    return None


Name = Annotated[StrictStr, Field(pattern=f"^{_ATTR_RE.pattern}$")]
Words = Annotated[list[StrictStr], BeforeValidator(_strings)]
YesNo = Msg("true か false です", "must be true or false")


class ColumnDoc(BaseModel):
    """One column of a layout file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    header: Annotated[
        StrictStr, Msg("header を持つマッピングです", "must be a mapping with a header")
    ]
    aliases: Annotated[Words, Msg("文字列のリストです", "must be a list of strings")] = []
    attribute: Annotated[
        Name | None,
        Msg("属性名（英数字）が必要です", "an attribute name (letters, digits, _) is required"),
    ] = None
    kind: Annotated[
        Kind | None,
        Field(alias="type"),
        Msg(
            "不明な型 {input} です",
            f"unknown type {{input}} (expected one of {sorted(KINDS)})",
        ),
    ] = None
    transform: Annotated[
        Kind | None,
        Msg(
            "不明な型 {input} です",
            f"unknown type {{input}} (expected one of {sorted(KINDS)})",
        ),
    ] = None
    key: Annotated[
        Name | None, Msg("英数字の名前です", "must be a name of letters, digits and _")
    ] = None
    required: Annotated[StrictBool, YesNo] = False
    nfkc: Annotated[StrictBool | None, YesNo] = None
    unit: Annotated[
        StrictStr | None,
        Msg(
            "単位コード（UN/CEFACT、例: IE, MTK）です",
            "must be a UN/CEFACT unit code, e.g. IE or MTK",
        ),
    ] = None
    values: Annotated[
        list[StrictStr | StrictInt] | dict[str | int, Any] | None,
        Msg(
            "コード値のリストかマッピングが必要です",
            "a list (or text -> value mapping) of codes is required",
        ),
    ] = None
    value_aliases: Annotated[
        dict[Any, Any],
        Msg("表記 -> コード値 のマッピングです", "must map spellings to code values"),
    ] = {}
    true: Annotated[
        Annotated[Words, Field(min_length=1)] | None,
        Msg("真を表す語のリストです", "must be a list of words meaning yes"),
    ] = None
    false: Annotated[
        Words | None, Msg("偽を表す語のリストです", "must be a list of words meaning no")
    ] = None
    notes: Any = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_keys(cls, value: Any) -> Any:
        return _yaml_bool_keys(value)

    @field_validator("attribute")
    @classmethod
    def _not_reserved(cls, attribute: str | None) -> str | None:
        if attribute in _RESERVED:
            raise problem(f"{attribute} は予約語です", f"{attribute} is reserved in NGSI-LD")
        return attribute

    @property
    def kind_name(self) -> str:
        kind = self.kind or self.transform or "string"
        return "date" if kind == "era-date" else kind

    @model_validator(mode="after")
    def _consistent(self) -> ColumnDoc:
        kind = self.kind_name
        found: list[At] = []
        if self.attribute is None and kind not in GEO_KINDS:
            found.append(
                At(
                    ("attribute",),
                    "属性名（英数字）が必要です",
                    "an attribute name (letters, digits, _) is required",
                )
            )
        if kind == "code":
            if self.values is None:
                found.append(
                    At(
                        ("values",),
                        "コード値のリストかマッピングが必要です",
                        "a list (or text -> value mapping) of codes is required",
                    )
                )
            else:
                stored = {str(v) for v in self._pairs().values()}
                for text, value in self.value_aliases.items():
                    if str(value) not in stored:
                        found.append(
                            At(
                                ("value_aliases", str(text)),
                                f"{value} はコード値ではありません",
                                f"{value} is not one of the values",
                            )
                        )
        elif self.values is not None:
            found.append(
                At(
                    ("values",),
                    "values は type: code の列だけです",
                    "values is only for columns of type code",
                )
            )
        if kind == "boolean" and set(self.true_words) & set(self.false_words):
            found.append(
                At(
                    ("true",),
                    "true と false に同じ語があります",
                    "a word is in both true and false",
                )
            )
        if found:
            raise problems(found)
        return self

    def _pairs(self) -> dict[str, str]:
        """Cell text -> stored code value, canonical spellings first."""
        if isinstance(self.values, list):
            return {str(v): str(v) for v in self.values}
        if isinstance(self.values, dict):
            return {str(k): str(v) for k, v in self.values.items()}
        return {}

    @property
    def true_words(self) -> tuple[str, ...]:
        return DEFAULT_TRUE if self.true is None else tuple(self.true)

    @property
    def false_words(self) -> tuple[str, ...]:
        return DEFAULT_FALSE if self.false is None else tuple(self.false)

    def column(self) -> Column:
        kind = self.kind_name
        norm = self.nfkc if self.nfkc is not None else kind != "string"
        codes: dict[str, str] = {}
        export_codes: dict[str, str] = {}
        if kind == "code":
            for text, stored in self._pairs().items():
                codes[nfkc(text) if norm else text] = stored
                export_codes.setdefault(stored, text)
            for text, stored in self.value_aliases.items():
                codes[nfkc(str(text)) if norm else str(text)] = str(stored)
        boolean = kind == "boolean"
        return Column(
            header=self.header,
            attribute=self.attribute or "location",
            kind=kind,
            aliases=tuple(self.aliases),
            key=self.key,
            required=self.required,
            nfkc=norm,
            unit=self.unit,
            codes=codes,
            export_codes=export_codes,
            true_words=self.true_words if boolean else DEFAULT_TRUE,
            false_words=self.false_words if boolean else DEFAULT_FALSE,
        )


class LayoutDoc(BaseModel):
    """A layout or mapping file. Fields are declared in the order their checks need:
    ``columns`` sees ``plane_zone``, ``id`` sees the columns."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    slug: Any = None
    title: Annotated[
        dict[Any, Any] | None, Msg("ja/en のマッピングです", "must map ja/en to text")
    ] = None
    source: Any = None
    notes: Any = None
    entity_type: Annotated[
        Name,
        Field(alias="type"),
        Msg("エンティティ型（英数字）が必要です", "an entity type name is required"),
    ]
    context: Annotated[
        StrictStr,
        Field(pattern=r"^https?://"),
        Msg("http(s) URL が必要です", "must be an http(s) URL"),
    ] = DEFAULT_CONTEXT
    plane_zone: Annotated[
        Annotated[StrictInt, Field(ge=1, le=19)] | None,
        Msg("1〜19の整数です", "must be an integer 1..19"),
    ] = None
    encoding: Annotated[StrictStr | None, Msg("文字列です", "must be a string")] = None
    columns: Annotated[
        list[
            Annotated[
                ColumnDoc,
                Msg(
                    "属性名か、header を持つマッピングです",
                    "must be an attribute name or a mapping with a header",
                ),
            ]
        ],
        tolerant(),
        BeforeValidator(_columns_list),  # runs first: before-validators run right to left
        Msg("列の定義が必要です", "a list or mapping of columns is required"),
    ]
    id: Annotated[
        StrictStr,
        Field(pattern=r"\{"),
        Msg(
            "IDテンプレートが必要です（例: urn:ngsi-ld:{type}:{code}）",
            "an id template is required, e.g. urn:ngsi-ld:{type}:{code}",
        ),
    ]

    @field_validator("columns")
    @classmethod
    def _columns_agree(cls, columns: list[ColumnDoc], info: ValidationInfo) -> list[ColumnDoc]:
        found: list[At] = []
        built = [c.column() for c in columns]
        attrs: dict[str, list[Column]] = {}
        for col in built:
            attrs.setdefault(col.attribute, []).append(col)
        for attr, cols in attrs.items():
            geo = all(c.kind in GEO_KINDS for c in cols)
            keyed = all(c.key is not None for c in cols)
            if len(cols) > 1 and not geo and not keyed:
                found.append(
                    At(
                        (cols[1].header, "attribute"),
                        f"属性 {attr} が複数の列に割り当てられています",
                        f"attribute {attr} is given to more than one column",
                    )
                )
        seen: dict[str, str] = {}
        for col in built:
            for n in col.names:
                if n in seen and seen[n] != col.header:
                    found.append(
                        At(
                            (col.header, "aliases"),
                            f"見出し {n} は列 {seen[n]} と重複しています",
                            f"header {n} is also a name of column {seen[n]}",
                        )
                    )
                seen.setdefault(n, col.header)
        kinds = {c.kind for c in built}
        if ("latitude" in kinds) != ("longitude" in kinds):
            found.append(
                At(
                    (),
                    "緯度と経度の列は対で指定します",
                    "latitude and longitude columns come in pairs",
                )
            )
        if ("plane-x" in kinds) != ("plane-y" in kinds):
            found.append(
                At(
                    (),
                    "X座標とY座標の列は対で指定します",
                    "plane-x and plane-y columns come in pairs",
                )
            )
        if "plane-x" in kinds and "plane-zone" not in kinds and info.data.get("plane_zone") is None:
            found.append(
                At(
                    ("plane_zone",),
                    "平面直角座標系の系番号が必要です",
                    "plane-x/plane-y need plane_zone or a plane-zone column",
                    root=True,
                )
            )
        if found:
            raise problems(found)
        return columns

    @field_validator("id")
    @classmethod
    def _id_names_columns(cls, template: str, info: ValidationInfo) -> str:
        found: list[At] = []
        if not template.startswith("urn:") and ":" not in template.split("{", 1)[0]:
            found.append(
                At(
                    (),
                    "IDはURIです（urn:ngsi-ld:... など）",
                    "the id must be a URI (urn:ngsi-ld:...)",
                )
            )
        columns: list[ColumnDoc] = info.data.get("columns", [])
        plain = {c.column().attribute for c in columns if c.key is None}
        keyed = {c.column().attribute for c in columns if c.key is not None}
        for m in _PLACEHOLDER_RE.finditer(template):
            for alt in m.group(1).split("|"):
                alt = alt.strip()
                if alt != "type" and (alt not in plain or alt in keyed):
                    found.append(
                        At(
                            (),
                            f"{{{alt}}} は列の属性ではありません",
                            f"{{{alt}}} is not the attribute of a column",
                        )
                    )
        if found:
            raise problems(found)
        return template

    def layout(self, *, name: str, source: str) -> Layout:
        return Layout(
            name=name,
            source=source,
            entity_type=self.entity_type,
            id_template=self.id,
            columns=tuple(c.column() for c in self.columns),
            context=self.context,
            plane_zone=self.plane_zone,
            encoding=self.encoding,
            title={str(k): str(v) for k, v in (self.title or {}).items()},
        )
