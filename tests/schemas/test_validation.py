# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""Messages from pydantic's errors: file, key as written in the file, Japanese and English."""

from __future__ import annotations

from typing import Annotated, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from schemas.validation import At, Msg, problems, tolerant, validate


class Problems(ValueError):
    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


class Room(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invalid: ClassVar[Msg] = Msg("部屋の定義です", "must be a room")

    名前: Annotated[StrictStr, Msg("部屋の名前が必要です", "a room name is required")]
    定員: Annotated[
        StrictInt,
        Field(gt=0),
        Msg("定員は正の整数です（{input}）", "capacity must be positive ({input})"),
    ] = 10


class Shelter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Msg("名称が必要です", "a name is required")]
    rooms: Annotated[list[Room], tolerant(), Msg("部屋のリストです", "must be a list of rooms")]

    @field_validator("rooms")
    @classmethod
    def _unique(cls, rooms: list[Room]) -> list[Room]:
        names = [r.名前 for r in rooms]
        found = [
            At((i, "名前"), f"{n} が重複しています", f"{n} is used twice")
            for i, n in enumerate(names)
            if n in names[:i]
        ]
        found += [At(("name",), "部屋の確認", "checked with the rooms", root=True)] if found else []
        if found:
            raise problems(found)
        return rooms


def messages(doc: object) -> list[str]:
    with pytest.raises(Problems) as exc:
        validate(Shelter, doc, source="避難所.yaml", error=Problems)
    return exc.value.messages


def test_every_problem_at_its_key_in_both_languages() -> None:
    got = messages(
        {
            "name": 5,
            "colour": "red",
            "rooms": [{"名前": "体育館", "定員": -3}, 7, {"定員": 2}, {"名前": "体育館"}],
        }
    )
    assert set(got) == {
        "避難所.yaml: rooms[0].定員: 定員は正の整数です（-3） / capacity must be positive (-3)",
        "避難所.yaml: rooms[1]: 部屋の定義です / must be a room",
        "避難所.yaml: rooms[2].名前: 部屋の名前が必要です / a room name is required",
        "避難所.yaml: name: 名称が必要です / a name is required",
        "避難所.yaml: colour: 不明なキーです / unknown key (expected one of ['name', 'rooms'])",
    }


def test_checks_across_items_run_on_the_valid_ones() -> None:
    got = messages({"name": "狛江第一小学校", "rooms": [{"名前": "体育館"}, {"名前": "体育館"}, 3]})
    assert got == [
        "避難所.yaml: rooms[2]: 部屋の定義です / must be a room",
        "避難所.yaml: rooms[1].名前: 体育館 が重複しています / 体育館 is used twice",
        "避難所.yaml: name: 部屋の確認 / checked with the rooms",
    ]


def test_valid_document_and_top_level() -> None:
    shelter = validate(
        Shelter,
        {"name": "狛江第一小学校", "rooms": [{"名前": "体育館"}]},
        source="s",
        error=Problems,
    )
    assert shelter.rooms[0].定員 == 10
    with pytest.raises(Problems, match="top level must be a mapping"):
        validate(Shelter, ["x"], source="s", error=Problems)
