# ruff: noqa: RUF001  (Japanese fixtures: full-width digits and brackets are intended)
import codecs
from pathlib import Path

import pytest
from pyproj import Geod

from connectors.csv.export import export_rows
from connectors.csv.importer import batches, plan_import
from connectors.csv.layout import load_dataset, load_mapping

from .helpers import canonical_rows, csv_bytes

SLUGS = [
    "aed-locations",
    "childcare-facilities",
    "cultural-properties",
    "evacuation-sites",
    "population-by-area-age",
    "public-facilities",
]

MAPPING = """
type: Shelter
id: "urn:ngsi-ld:{type}:{cityCode}-{code}"
plane_zone: 9
columns:
  市コード: {attribute: cityCode, type: lg-code}
  番号: {attribute: code, nfkc: true}
  施設名: name
  収容人数: {attribute: capacity, type: integer, unit: IE}
  開設日: {attribute: openingDate, transform: era-date}
  駐車場: {attribute: parking, type: boolean, true: [有], false: [無]}
  種別: {attribute: category, type: code, values: {避難所: shelter, 避難場所: evacuationSpace}}
  X座標: {type: plane-x}
  Y座標: {type: plane-y}
"""


@pytest.fixture
def shelter_layout(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "shelter.yaml"
    path.write_text(MAPPING, encoding="utf-8")
    return load_mapping(path)


HEADER = ["市コード", "番号", "施設名", "収容人数", "開設日", "駐車場", "種別", "X座標", "Y座標"]


@pytest.mark.parametrize("encoding", ["cp932", "utf-8", "utf-8-sig"])
def test_non_standard_csv_with_mapping(shelter_layout, encoding: str) -> None:  # type: ignore[no-untyped-def]
    rows = [
        HEADER,
        [
            "13101",
            "０１２",
            "㈱髙島屋①ホール",
            "１，２００",
            "令和元年5月1日",
            "有",
            "避難所",
            "0",
            "0",
        ],
        ["131016", "13", "公民館", "80", "H31.4.30", "無", "避難場所", "1000.5", "-250"],
    ]
    plan = plan_import(csv_bytes(rows, encoding), shelter_layout)
    assert plan.problems == []
    assert plan.encoding == encoding
    first, second = plan.entities
    assert first["id"] == "urn:ngsi-ld:Shelter:131016-012"
    assert first["name"]["value"] == "㈱髙島屋①ホール"  # text is kept as written
    assert first["capacity"] == {"type": "Property", "value": 1200, "unitCode": "IE"}
    assert first["openingDate"]["value"] == "2019-05-01"
    assert first["parking"]["value"] is True
    assert first["category"]["value"] == "shelter"
    lon, lat = first["location"]["value"]["coordinates"]
    dist = Geod(ellps="GRS80").inv(lon, lat, 139 + 50 / 60, 36.0)[2]
    assert dist < 0.01  # the zone IX origin, within 1 cm
    assert second["openingDate"]["value"] == "2019-04-30"
    assert second["parking"]["value"] is False
    assert second["location"]["value"]["coordinates"][1] > 36.0  # X is northing


def test_every_problem_with_line_and_column(shelter_layout) -> None:  # type: ignore[no-untyped-def]
    rows = [
        HEADER,
        ["131016", "1", "a", "abc", "平成31年5月1日", "有", "避難所", "0", "0"],
        ["131016", "2", "複数行の\n名前", "10", "R6.2.30", "たぶん", "学校", "0", ""],
        ["131017", "", "c", "10", "", "", "", "", ""],
        ["131016", "1", "dup", "", "", "", "", "", ""],
        ["131016", "5", "ok", "", "", "", "", "", "", "extra"],
        ["131016", "6", "fine", "5", "S64.1.7", "無", "避難場所", "", ""],
    ]
    plan = plan_import(csv_bytes(rows), shelter_layout)
    got = [str(p) for p in plan.problems]
    assert got == [
        "2行目 「収容人数」: 整数ではありません（abc） / line 2, column 収容人数: not an integer (abc)",
        "2行目 「開設日」: 平成の期間外の日付です（平成31年5月1日; 平成は1989-01-08〜2019-04-30）"
        " / line 2, column 開設日: date outside the 平成 era"
        " (平成31年5月1日; 平成 is 1989-01-08〜2019-04-30)",
        "3行目 「開設日」: 存在しない日付です（R6.2.30） / line 3, column 開設日: no such date (R6.2.30)",
        "3行目 「駐車場」: はい/いいえの値として読めません（たぶん; 使える値: 有 または 無）"
        " / line 3, column 駐車場: not a yes/no value (たぶん; use 有 or 無)",
        "3行目 「種別」: 使えない値です（学校; 使える値: 避難所 / 避難場所）"
        " / line 3, column 種別: not one of the allowed values (学校; allowed: 避難所 / 避難場所)",
        "3行目 「Y座標」: X座標とY座標は両方必要です / line 3, column Y座標: X and Y go together",
        "5行目 「市コード」: 全国地方公共団体コードの検査数字が正しくありません（131017、正しくは131016）"
        " / line 5, column 市コード: wrong check digit in local government code 131017"
        " (expected 131016)",
        "5行目 「番号」: IDを作れません: 値が空です / line 5, column 番号:"
        " cannot make the entity id: the value is empty",
        "6行目: ID urn:ngsi-ld:Shelter:131016-1 は2行目と重複しています"
        " / line 6: id urn:ngsi-ld:Shelter:131016-1 is the same as on line 2",
        "7行目: 項目数が10で、見出しの9と違います / line 7: 10 fields, the header has 9",
    ]
    assert [e["id"] for e in plan.entities] == ["urn:ngsi-ld:Shelter:131016-6"]
    assert plan.rows == 6
    assert plan.rows_with_errors == 5


@pytest.mark.parametrize("slug", SLUGS)
def test_standard_round_trip(slug: str) -> None:
    layout = load_dataset(slug)
    rows = canonical_rows(layout, 5)
    plan = plan_import(csv_bytes(rows, "utf-8-sig"), layout)
    assert plan.problems == []
    assert len(plan.entities) == 5
    assert list(export_rows(layout, plan.entities)) == rows


def test_old_layout_header_and_spellings() -> None:
    layout = load_dataset("evacuation-sites")
    rows = [
        ["NO", "名称", "住所", "方書", "緯度", "経度", "電話番号", "市区町村コード",
         "災害種別_洪水", "災害種別_崖崩れ、土石流及び地滑り", "災害種別_高潮", "災害種別_地震",
         "災害種別_津波", "災害種別_大規模な火事", "災害種別_内水氾濫", "災害種別_火山現象",
         "指定避難所との重複", "想定収容人数"],
        ["１", "狛江第一小学校", "東京都狛江市和泉本町一丁目1番1号", "", "３５．６３４８",
         "139.5785", "03-3430-1111", "13219", "1", "0", "", "1", "", "1", "", "", "1", "８５０"],
    ]  # fmt: skip
    plan = plan_import(csv_bytes(rows, "cp932"), layout)
    assert plan.errors == []
    (ent,) = plan.entities
    assert ent["id"] == "urn:ngsi-ld:EvacuationSite:132195-1"
    assert ent["location"]["value"]["coordinates"] == [139.5785, 35.6348]
    assert ent["maxCapacity"] == {"type": "Property", "value": 850, "unitCode": "IE"}
    assert ent["typeOfDisasterLandslide"]["value"] is False
    row = list(export_rows(layout, plan.entities))[1]
    cells = dict(zip(layout.headers, row, strict=True))
    assert cells["所在地_連結表記"] == "東京都狛江市和泉本町一丁目1番1号"
    assert cells["災害種別_崖崩れ、土石流及び地滑り"] == ""  # 0 is written back as empty
    assert cells["市区町村コード"] == "132195"


def test_yes_no_old_spelling_becomes_canonical() -> None:
    layout = load_dataset("public-facilities")
    rows = canonical_rows(layout, 1)
    col = layout.headers.index("授乳室")
    rows[1][col] = "有"
    plan = plan_import(csv_bytes(rows), layout)
    assert plan.entities[0]["nursery"]["value"] == "あり"


def test_missing_id_column_refuses_file() -> None:
    layout = load_dataset("aed-locations")
    plan = plan_import(csv_bytes([["名称"], ["x"]]), layout)
    assert plan.entities == []
    assert any("ID" in str(p) and not p.warning for p in plan.problems)


def test_bom_header_and_blank_lines() -> None:
    layout = load_dataset("evacuation-sites")
    rows = canonical_rows(layout, 2)
    data = codecs.BOM_UTF8 + csv_bytes(rows)[:-2] + b"\r\n\r\n"
    plan = plan_import(data, layout)
    assert plan.problems == []
    assert plan.rows == 2


def test_batches_split_by_count_and_size() -> None:
    ents = [
        {"id": f"urn:x:{i}", "type": "T", "p": {"type": "Property", "value": "a" * 100}}
        for i in range(1200)
    ]
    assert [len(b) for b in batches(ents, 500)] == [500, 500, 200]
    big = [
        {"id": f"urn:x:{i}", "type": "T", "p": {"type": "Property", "value": "a" * 600_000}}
        for i in range(8)
    ]
    assert all(len(b) <= 3 for b in batches(big, 500))


def test_oversized_fields_anywhere_in_the_file() -> None:
    layout = load_dataset("evacuation-sites")
    rows = canonical_rows(layout, 3)
    remarks = rows[0].index("備考")
    rows[1][remarks] = '引用符 "" と\n改行のある備考'
    rows[3][remarks] = '"' + "長" * (130 * 1024) + '"'  # the last record, without a newline
    data = csv_bytes(rows)[:-2]
    plan = plan_import(data, layout)
    (problem,) = plan.problems
    assert (problem.line, problem.column) == (5, "備考")
    assert "128 KiB" in problem.en
    assert len(plan.entities) == 2
    assert plan.entities[0]["remarks"]["value"] == '引用符 "" と\n改行のある備考'

    rows[0][remarks] = "備" * (129 * 1024)  # in the header itself
    plan = plan_import(csv_bytes(rows), layout)
    assert [(p.line, p.column) for p in plan.problems] == [(1, "39")]  # no header: its number
    assert plan.entities == []


def test_blank_required_values_are_counted_warnings_unless_strict() -> None:
    layout = load_dataset("aed-locations")
    rows = canonical_rows(layout, 3)
    for row in rows[1:]:
        row[rows[0].index("URL")] = ""
    rows[2][rows[0].index("電話番号")] = ""
    plan = plan_import(csv_bytes(rows, "cp932"), layout)
    assert plan.errors == []
    assert len(plan.entities) == 3
    assert plan.blank_counts() == {"電話番号": 1, "URL": 3}
    strict = plan_import(csv_bytes(rows, "cp932"), layout, strict=True)
    assert strict.entities == []
    assert strict.rows_with_errors == 3
    assert strict.blank_counts() == {"電話番号": 1, "URL": 3}
