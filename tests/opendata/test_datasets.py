# ruff: noqa: RUF001
"""Dataset definitions: loading, validation with file and key, tag normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opendata.datasets import (
    DefinitionError,
    load_definition,
    load_definitions,
    normalize_tag,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "opendata" / "examples"


def write(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def minimal(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "komae-aed",
        "organization": "komae-city",
        "title": {"ja": "AED設置箇所一覧", "en": "AED locations"},
        "query": {"type": "AEDLocation"},
        "resources": ["csv"],
    }
    doc.update(extra)
    return doc


def test_minimal_definition_gets_defaults(tmp_path: Path) -> None:
    d = load_definition(write(tmp_path, "aed.yaml", minimal()))
    assert d.name == "komae-aed"
    assert d.license == "cc-by-4.0"
    assert d.organization.name == "komae-city"
    assert d.organization.create is True
    assert [r.key for r in d.resources] == ["csv"]
    assert d.query.params() == {"type": "AEDLocation"}


def test_shipped_examples_are_valid() -> None:
    defs = load_definitions(EXAMPLES)
    names = {d.name for d in defs}
    assert {"komae-evacuation-sites", "komae-air-quality"} <= names
    evac = next(d for d in defs if d.name == "komae-evacuation-sites")
    std = evac.resource("standard-evacuation-sites")
    assert std.layout is not None
    assert std.layout.entity_type == "EvacuationSite"
    assert evac.datastore is not None
    assert evac.datastore.primary_key == ("ID",)


def test_japanese_title_never_becomes_the_name(tmp_path: Path) -> None:
    doc = minimal()
    del doc["name"]
    with pytest.raises(DefinitionError) as exc:
        load_definition(write(tmp_path, "aed.yaml", doc))
    (message,) = exc.value.messages
    assert message.startswith(f"{tmp_path / 'aed.yaml'}: name: ")
    assert "a-z 0-9" in message


@pytest.mark.parametrize("name", ["公共施設一覧", "Komae", "a", "komae city", "x" * 101])
def test_names_ckan_refuses_are_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(DefinitionError, match=r"aed\.yaml: name: "):
        load_definition(write(tmp_path, "aed.yaml", minimal(name=name)))


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    doc = minimal(
        licence="cc-by",  # misspelt key
        tags=["防災", "・"],
        query={
            "type": "AEDLocation",
            "geo": {"georel": "near;maxDistance==10", "geometry": "Circle"},
        },
        resources=[{"format": "xlsx"}, {"format": "standard-csv", "standard": "no-such"}],
        datastore={"resource": "geojson"},
    )
    with pytest.raises(DefinitionError) as exc:
        load_definition(write(tmp_path, "bad.yaml", doc))
    keys = [m.split(": ")[1] for m in exc.value.messages]
    assert "licence" in keys
    assert "tags[1]" in keys
    assert "query.geo.geometry" in keys
    assert "query.geo.coordinates" in keys
    assert "resources[0].format" in keys
    assert "resources[1].standard" in keys
    assert "datastore.resource" in keys
    assert all(m.startswith(f"{tmp_path / 'bad.yaml'}: ") for m in exc.value.messages)


def test_tags_are_normalised_for_ckan_and_the_change_is_noted(tmp_path: Path) -> None:
    d = load_definition(
        write(
            tmp_path,
            "aed.yaml",
            minimal(tags=["子育て・教育", "避難所（指定）", "ＡＥＤ", "防災", "防災"]),
        )
    )
    assert d.tags == ("子育て 教育", "避難所 指定", "AED", "防災")
    assert len(d.tag_notes) == 3
    assert any("子育て・教育" in n and "子育て 教育" in n for n in d.tag_notes)


def test_normalize_tag() -> None:
    assert normalize_tag("子育て・教育") == "子育て 教育"
    assert normalize_tag("（仮称）公園") == "仮称 公園"
    assert normalize_tag("bus/train") == "bus train"
    assert normalize_tag("open-data_v1.0") == "open-data_v1.0"
    assert normalize_tag("・") == ""


def test_one_character_tag_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"tags\[0\]: .*'水'"):
        load_definition(write(tmp_path, "aed.yaml", minimal(tags=["水"])))


def test_extras_cannot_shadow_ckan_fields(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"extras\.title: "):
        load_definition(write(tmp_path, "aed.yaml", minimal(extras={"title": "x"})))


def test_duplicate_names_across_files_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", minimal())
    write(tmp_path, "b.yaml", minimal())
    with pytest.raises(DefinitionError, match=r"b\.yaml: name: komae-aed .*a\.yaml"):
        load_definitions(tmp_path)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(DefinitionError, match=r"broken\.yaml: YAML"):
        load_definitions(tmp_path)


def test_query_parameters(tmp_path: Path) -> None:
    d = load_definition(
        write(
            tmp_path,
            "aed.yaml",
            minimal(
                query={
                    "type": "AEDLocation",
                    "q": "availableHours==24",
                    "attrs": ["name", "location"],
                    "tenant": "komae",
                    "geo": {
                        "georel": "near;maxDistance==500",
                        "geometry": "Point",
                        "coordinates": [139.578, 35.634],
                    },
                }
            ),
        )
    )
    assert d.query.tenant == "komae"
    assert d.query.params() == {
        "type": "AEDLocation",
        "q": "availableHours==24",
        "attrs": "name,location",
        "georel": "near;maxDistance==500",
        "geometry": "Point",
        "coordinates": "[139.578,35.634]",
    }


def test_resource_keys_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"resources\[1\]\.key: csv"):
        load_definition(write(tmp_path, "aed.yaml", minimal(resources=["csv", "csv"])))
    d = load_definition(
        write(tmp_path, "aed.yaml", minimal(resources=["csv", {"format": "csv", "key": "csv-en"}]))
    )
    assert [r.filename for r in d.resources] == ["csv.csv", "csv-en.csv"]
