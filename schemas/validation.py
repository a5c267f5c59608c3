"""Bilingual, key-precise messages from pydantic's errors, for the YAML files Renkei reads.

CSV layouts and mapping files (:mod:`connectors.csv.layout`) and dataset definitions
(:mod:`opendata.datasets`) are pydantic models. Their users are department staff who
write the YAML by hand, so every problem is reported at once, in Japanese and English,
as ``<file>: <key>: <ja> / <en>`` with the key written as in the file
(``columns.収容人数.type``, ``resources[0].format``). This module turns pydantic's
errors into those messages, in one place:

- a field declares its message with :class:`Msg` in its ``Annotated`` metadata; any
  error of the field (wrong type, pattern, literal, missing) gets it, at the field's key;
- a validator raises :func:`problem` (one message) or :func:`problems` (several, at keys
  of its own choosing) with the exact text;
- a key the model does not know is reported with the keys it does know;
- a model may name the message for a value that is not a mapping at all in a
  ``invalid: ClassVar[Msg]``.

Models validate with :func:`validate`. A list whose items are checked one by one
(:func:`tolerant`) keeps its valid items and records the errors of the others, so that
the checks across items (duplicates, pairs, references from other keys) still run and
every problem of a file is reported in one pass.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError, ValidationInfo, WrapValidator
from pydantic_core import ErrorDetails, PydanticCustomError

__all__ = ["At", "Msg", "load_yaml", "problem", "problems", "tolerant", "validate"]

M = TypeVar("M", bound=BaseModel)
Loc = tuple[int | str, ...]
_TYPE = "renkei"


@dataclass(frozen=True)
class Msg:
    """The message for any error of a field; ``{input}`` is replaced by the value's repr."""

    ja: str
    en: str


@dataclass(frozen=True)
class At:
    """One problem found by a validator: ``path`` is relative to the validated value, or
    from the top of the file when ``root``."""

    path: Loc
    ja: str
    en: str
    root: bool = False


def problem(ja: str, en: str) -> PydanticCustomError:
    """A problem of the value being validated, with its exact text."""
    return problems([At((), ja, en)])


def problems(found: Sequence[At]) -> PydanticCustomError:
    """Several problems at once, each at its own key."""
    return PydanticCustomError(_TYPE, "{en}", {"en": found[0].en, "problems": list(found)})


def tolerant(
    label: Callable[[int, Any], int | str] | None = None,
    choose: Callable[[Any], type[BaseModel]] | None = None,
) -> WrapValidator:
    """A list validator keeping the items that validate; the errors of the others are
    recorded (at ``<field>.<label>``, by default the index) and reported by
    :func:`validate` with the rest. ``choose`` picks the model of each item (items of
    several kinds) in place of the field's own item type. The positions of the kept
    items are in ``context["positions"][field]``. Only for fields of the top-level model.
    """

    def validator(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        if not isinstance(value, list):
            return handler(value)
        assert info.field_name is not None
        assert isinstance(info.context, dict)
        labels = info.context.get("labels", {}).get(info.field_name)
        out = []
        positions = info.context.setdefault("positions", {})[info.field_name] = []
        for i, item in enumerate(value):
            model = choose(item) if choose else None
            try:
                if model is not None:
                    valid = model.model_validate(item, context=info.context)
                else:
                    (valid,) = handler([item])
            except ValidationError as exc:
                where = labels[i] if labels else label(i, item) if label else i
                for e in exc.errors():
                    rest = e["loc"] if model is not None else e["loc"][1:]
                    e["loc"] = (info.field_name, where, *rest)
                    info.context["errors"].append((model, 2, e))
                continue
            out.append(valid)
            positions.append(i)
        return out

    return WrapValidator(validator)


def load_yaml(path: Path, error: Callable[[list[str]], Exception]) -> Any:
    """The parsed YAML of ``path`` (UTF-8, with or without BOM); a syntax error is
    reported with PyYAML's own line and column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise error([f"{path}: 読めません / cannot read: {exc}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error([f"{path}: YAMLとして読めません / not valid YAML: {exc}"]) from exc


def validate(
    model: type[M],
    doc: Any,
    *,
    source: str,
    error: Callable[[list[str]], Exception],
    context: dict[str, Any] | None = None,
) -> M:
    """``model`` from ``doc``, or ``error(messages)`` raised with every problem found."""
    ctx: dict[str, Any] = {"errors": [], "labels": {}, **(context or {})}
    if not isinstance(doc, dict):
        raise error([f"{source}: YAMLの最上位はマッピングです / top level must be a mapping"])
    recorded: list[tuple[type[BaseModel] | None, int, ErrorDetails]] = ctx["errors"]
    try:
        result = model.model_validate(doc, context=ctx)
    except ValidationError as exc:
        errors = [*recorded, *((None, 0, e) for e in exc.errors())]
    else:
        errors = recorded
        if not errors:
            return result
    messages = (
        m
        for owner, skip, e in errors
        for m in _messages(owner or model, 0 if owner is None else skip, e, source)
    )
    raise error(list(dict.fromkeys(messages)))


# -- turning one pydantic error into messages ----------------------------------------------


def _key(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _messages(model: type[BaseModel], skip: int, e: ErrorDetails, source: str) -> list[str]:
    """The messages of one error; ``model`` is the type at ``loc[skip:]``."""
    loc: Loc = tuple(e["loc"])
    if e["type"] == _TYPE:
        found: list[At] = (e.get("ctx") or {})["problems"]
        return [
            f"{source}: {_key(p.path if p.root else loc + p.path)}: {p.ja} / {p.en}" for p in found
        ]
    if e["type"] == "extra_forbidden":
        owner = _walk(model, loc[skip:-1])[0]
        known = sorted(_field_names(owner))
        return [f"{source}: {_key(loc)}: 不明なキーです / unknown key (expected one of {known})"]
    _, msg, depth = _walk(model, loc[skip:])
    if msg is None:
        return [f"{source}: {_key(loc)}: 値が正しくありません / {e['msg']}"]
    text = repr(e["input"])
    return [
        f"{source}: {_key(loc[: skip + depth])}: "
        f"{msg.ja.replace('{input}', text)} / {msg.en.replace('{input}', text)}"
    ]


def _field_names(owner: Any) -> list[str]:
    if isinstance(owner, type) and issubclass(owner, BaseModel):
        return [f.alias or name for name, f in owner.model_fields.items()]
    return []


def _unwrap(tp: Any) -> tuple[Any, Msg | None]:
    """The type under ``Annotated`` and ``X | None``, and the message declared on it."""
    msg = None
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            base, *meta = typing.get_args(tp)
            msg = next((m for m in meta if isinstance(m, Msg)), msg)
            tp = base
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(models) == 1:
                tp = models[0]
                continue
        return tp, msg


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Any, Msg | None, int]:
    """Follow ``loc`` through the model's types: (type reached, deepest message declared
    on the way, the length of ``loc`` up to that message)."""
    tp: Any = model
    invalid = getattr(model, "invalid", None)  # a ClassVar[Msg]: the model as a whole
    best: Msg | None = invalid if isinstance(invalid, Msg) else None
    depth = 0
    for i, part in enumerate(loc):
        tp, msg = _unwrap(tp)
        if msg is not None:
            best, depth = msg, i
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            invalid = getattr(tp, "invalid", None)
            if i and isinstance(invalid, Msg):
                best, depth = invalid, i
            field = tp.model_fields.get(str(part)) or next(
                (f for f in tp.model_fields.values() if f.alias == part), None
            )
            if field is None:
                return tp, best, depth
            msg = next((m for m in field.metadata if isinstance(m, Msg)), None)
            if msg is not None:
                best, depth = msg, i + 1
            tp = field.annotation
        elif typing.get_origin(tp) in (list, tuple, dict, set, frozenset):
            tp = typing.get_args(tp)[-1]
        else:
            return tp, best, depth
    tp, msg = _unwrap(tp)
    invalid = getattr(tp, "invalid", None) if isinstance(tp, type) else None
    msg = msg or (invalid if isinstance(invalid, Msg) else None)
    if msg is not None:
        best, depth = msg, len(loc)
    return tp, best, depth
