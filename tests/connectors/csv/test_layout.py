# ruff: noqa: RUF001  (Japanese fixtures: full-width digits and brackets are intended)
import json
from pathlib import Path

import pytest

from connectors.csv.layout import LayoutError, dataset_slugs, load_dataset, load_mapping
from schemas import CORE_CONTEXT_FILE

from .helpers import RENKEI_CONTEXT_FILE

SLUGS = [
    "aed-locations",
    "childcare-facilities",
    "cultural-properties",
    "evacuation-sites",
    "population-by-area-age",
    "public-facilities",
]
COLUMN_COUNTS = {
    "public-facilities": 55,
    "evacuation-sites": 39,
    "population-by-area-age": 46,
    "aed-locations": 37,
    "childcare-facilities": 51,
    "cultural-properties": 39,
}


def test_all_standard_datasets_load() -> None:
    assert dataset_slugs() == SLUGS
    for slug in SLUGS:
        layout = load_dataset(slug)
        assert len(layout.columns) == COLUMN_COUNTS[slug]
        assert layout.id_template.startswith("urn:ngsi-ld:{type}:")


def test_context_defines_every_term_and_no_core_term() -> None:
    ctx = json.loads(RENKEI_CONTEXT_FILE.read_text())["@context"]
    core = json.loads(CORE_CONTEXT_FILE.read_text())["@context"]
    default_vocab = core["@vocab"]
    # Every term is the NGSI-LD default @vocab IRI: no Link header is needed to find it.
    assert all(ctx[t] == default_vocab + t for t in ctx if not t.startswith("@"))
    for slug in SLUGS:
        layout = load_dataset(slug)
        assert layout.entity_type in ctx
        for col in layout.columns:
            for term in (col.attribute, col.key):
                if term is not None:
                    assert term in ctx or term in core, (slug, term)
    clash = {t for t in ctx if not t.startswith("@") and t in core}
    assert not clash  # the core context is protected


def test_old_headers_and_alias_spellings() -> None:
    layout = load_dataset("public-facilities")
    assert layout.column_for("建物名等（方書）") is layout.column_for("建物名等(方書)")
    assert layout.column_for("方書") is layout.column_for("建物名等(方書)")
    assert layout.column_for("住所") is layout.column_for("所在地_連結表記")
    assert layout.column_for("所在地_連結標記") is layout.column_for("所在地_連結表記")
    assert layout.column_for("多目的トイレ") is layout.column_for("バリアフリートイレ")
    assert layout.column_for("都道府県コード又は市区町村コード") is layout.column_for(
        "全国地方公共団体コード"
    )
    assert layout.column_for("利用可能日時特記事項") is layout.column_for("利用可能時間特記事項")
    evac = load_dataset("evacuation-sites")
    assert evac.column_for("連絡先備考") is evac.column_for("連絡先備考（その他、SNSなど）")
    assert evac.column_for("NO") is evac.column_for("ID")


def test_unknown_dataset() -> None:
    with pytest.raises(LayoutError, match="unknown dataset"):
        load_dataset("parks")


def test_mapping_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
type: Shelter
id: "urn:ngsi-ld:{type}:{code}"
columns:
  施設名: name
  収容人数: {attribute: capacity, type: intger}
  駐車場: {attribute: parking, type: code}
  X: {type: plane-x}
  Y: {type: plane-y}
colour: red
""",
        encoding="utf-8",
    )
    with pytest.raises(LayoutError) as exc:
        load_mapping(path)
    text = "\n".join(exc.value.messages)
    assert f"{path}: columns.収容人数.type:" in text
    assert "unknown type 'intger'" in text
    assert f"{path}: columns.駐車場.values:" in text
    assert f"{path}: colour:" in text
    assert f"{path}: id:" in text  # {code} is no column's attribute
    assert f"{path}: plane_zone:" in text


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("type: [\n", encoding="utf-8")
    with pytest.raises(LayoutError, match="not valid YAML"):
        load_mapping(path)
