# ruff: noqa: RUF001
"""Rendering: machine-readable CSV, RFC 7946 GeoJSON, the standard-dataset layout."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from connectors.csv.layout import load_dataset
from opendata.datasets import ColumnSpec, ResourceSpec
from opendata.render import (
    clean_cell,
    csv_bytes,
    entity_table,
    is_platform_dependent,
    render_resource,
    simplify,
)

SITE: dict[str, Any] = {
    "id": "urn:ngsi-ld:EvacuationSite:132195-0001",
    "type": "EvacuationSite",
    "name": {
        "type": "LanguageProperty",
        "languageMap": {"ja": "狛江第一小学校", "en": "Komae Daiichi Elementary School"},
    },
    "address": {
        "type": "Property",
        "value": {"addressRegion": "東京都", "addressLocality": "狛江市"},
    },
    "capacity": {"type": "Property", "value": 850, "unitCode": "IE"},
    "hazards": {"type": "Property", "value": ["flood", "earthquake"]},
    "refCity": {"type": "Relationship", "object": "urn:ngsi-ld:City:komae"},
    "location": {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [139.5785, 35.6348]},
    },
}


def spec(fmt: str = "csv", **extra: Any) -> ResourceSpec:
    return ResourceSpec(key=fmt, format=fmt, name={"ja": fmt}, **extra)


def parse_csv(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))


def test_simplify_takes_plain_values() -> None:
    s = simplify(SITE)
    assert s["name"] == "狛江第一小学校"
    assert simplify(SITE, "en")["name"] == "Komae Daiichi Elementary School"
    assert s["capacity"] == 850
    assert s["refCity"] == "urn:ngsi-ld:City:komae"
    assert s["location"] == {"type": "Point", "coordinates": [139.5785, 35.6348]}
    # keyValues input is already plain
    assert simplify({"id": "x", "type": "T", "capacity": 3})["capacity"] == 3


def test_csv_has_bom_crlf_and_one_header_row() -> None:
    r = render_resource(spec(), [simplify(SITE)])
    assert r.content.startswith(b"\xef\xbb\xbf")
    body = r.content[3:]
    assert body.count(b"\r\n") == 2
    assert b"\n" not in body.replace(b"\r\n", b"")
    rows = parse_csv(r.content)
    assert rows[0] == [
        "id",
        "type",
        "name",
        "address.addressRegion",
        "address.addressLocality",
        "capacity",
        "hazards",
        "refCity",
        "latitude",
        "longitude",
    ]
    assert rows[1][2] == "狛江第一小学校"
    assert rows[1][6] == "flood;earthquake"
    assert rows[1][8:] == ["35.6348", "139.5785"]
    assert r.media_type == "text/csv"
    assert len(r.sha256) == 64


def test_csv_with_declared_columns() -> None:
    cols = (
        ColumnSpec("名称", "name"),
        ColumnSpec("都道府県", "address", "addressRegion"),
        ColumnSpec("緯度", "location", "latitude"),
        ColumnSpec("経度", "location", "longitude"),
        ColumnSpec("なし", "missing"),
    )
    table = entity_table([simplify(SITE)], cols)
    assert table.headers == ["名称", "都道府県", "緯度", "経度", "なし"]
    assert table.rows == [["狛江第一小学校", "東京都", "35.6348", "139.5785", ""]]


def test_platform_dependent_characters_are_replaced_and_reported() -> None:
    ent = {
        "id": "urn:ngsi-ld:Facility:1",
        "type": "Facility",
        "name": "㈱狛江①号館 Ⅱ期",
        "note": "ｶﾞｽ設備\r\n2階",
        "owner": "髙島屋",
    }
    r = render_resource(spec(), [ent])
    rows = parse_csv(r.content)
    assert rows[1][2] == "(株)狛江1号館 II期"
    assert rows[1][3] == "ガス設備 2階"
    assert rows[1][4] == "髙島屋"  # no standard equivalent: kept, and said so
    assert r.replacements[("㈱", "(株)")] == 1
    assert r.replacements[("①", "1")] == 1
    assert r.replacements[("Ⅱ", "II")] == 1
    assert r.replacements[("ｶﾞｽ", "ガス")] == 1
    assert r.replacements[("\r\n", " ")] == 1
    assert r.kept["髙"] == 1
    notes = "\n".join(r.notes())
    assert "㈱ を (株) に置き換えました（1件）" in notes
    assert "replaced ① with 1 (1x)" in notes
    assert "髙 (U+9AD9)" in notes


def test_ordinary_japanese_text_is_untouched() -> None:
    from collections import Counter

    reps: Counter[tuple[str, str]] = Counter()
    kept: Counter[str] = Counter()
    text = "狛江市和泉本町一丁目１番１号（市役所）～ー・"
    assert clean_cell(text, reps, kept) == text
    assert not reps
    assert not kept
    assert is_platform_dependent("①")
    assert not is_platform_dependent("一")
    assert not is_platform_dependent("A")


def test_csv_bytes_quotes_commas_and_quotes() -> None:
    from opendata.render import Table

    content, *_ = csv_bytes(Table(["a", "b"], [["x,y", 'say "hi"']]))
    assert content == '\ufeffa,b\r\n"x,y","say ""hi"""\r\n'.encode()


def test_geojson_is_rfc7946() -> None:
    district = {
        "id": "urn:ngsi-ld:District:1",
        "type": "District",
        "name": "和泉本町一丁目",
        "location": {
            "type": "Polygon",
            "coordinates": [
                [[139.576, 35.633], [139.581, 35.633], [139.581, 35.637], [139.576, 35.633]]
            ],
        },
    }
    no_geo = {"id": "urn:ngsi-ld:Thing:2", "type": "Thing", "name": "位置なし"}
    r = render_resource(spec("geojson"), [simplify(SITE), district, no_geo])
    assert r.media_type == "application/geo+json"
    doc = json.loads(r.content)
    assert doc["type"] == "FeatureCollection"
    assert "crs" not in doc
    first, second, third = doc["features"]
    assert first["type"] == "Feature"
    assert first["id"] == SITE["id"]
    assert first["geometry"] == {"type": "Point", "coordinates": [139.5785, 35.6348]}
    assert first["properties"]["name"] == "狛江第一小学校"
    assert "location" not in first["properties"]
    assert second["geometry"]["type"] == "Polygon"
    assert third["geometry"] is None
    # deterministic: the same entities give the same bytes
    assert render_resource(spec("geojson"), [simplify(SITE), district, no_geo]).sha256 == r.sha256


def test_standard_dataset_layout() -> None:
    layout = load_dataset("evacuation-sites")
    ent = {
        "id": "urn:ngsi-ld:EvacuationSite:132195-0001",
        "type": "EvacuationSite",
        "localGovernmentCode": "132195",
        "identifier": "0001",
        "name": "狛江第一小学校",
        "address": {"addressRegion": "東京都", "addressLocality": "狛江市"},
        "maxCapacity": 850,
        "location": {"type": "Point", "coordinates": [139.5785, 35.6348]},
    }
    r = render_resource(
        ResourceSpec(
            key="standard-evacuation-sites",
            format="standard-csv",
            name={"ja": "x"},
            standard="evacuation-sites",
            layout=layout,
        ),
        [ent],
    )
    rows = parse_csv(r.content)
    assert rows[0] == layout.headers
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["全国地方公共団体コード"] == "132195"
    assert row["名称"] == "狛江第一小学校"
    assert row["所在地_都道府県"] == "東京都"
    assert row["想定収容人数"] == "850"
    assert row["緯度"] == "35.6348"
    assert r.content.startswith(b"\xef\xbb\xbf")
    assert r.table is not None
    assert r.table.records()[0]["名称"] == "狛江第一小学校"


def aed(n: int, **attrs: Any) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:132195-{n:04d}",
        "type": "AEDLocation",
        "localGovernmentCode": "132195",
        "identifier": f"{n:04d}",
        "name": f"狛江市役所 AED {n}",
        "height": 12.5,
        "startTime": "09:00",
        "location": {"type": "Point", "coordinates": [139.5785, 35.6348]},
        **attrs,
    }


def test_standard_layout_reports_blank_required_columns_per_column() -> None:
    layout = load_dataset("aed-locations")
    entities = [aed(1, url="https://www.city.komae.tokyo.jp/aed1"), aed(2), aed(3)]
    r = render_resource(
        ResourceSpec(
            key="aed",
            format="standard-csv",
            name={"ja": "AED"},
            standard="aed-locations",
            layout=layout,
        ),
        entities,
    )
    # every row is published: blank 値必須 columns are warnings, counted per column
    assert len(parse_csv(r.content)) == 4
    assert r.blank_required["URL"] == 2
    assert r.blank_required["画像URL（配列）"] == 3
    assert "名称" not in r.blank_required
    assert "備考" not in r.blank_required  # not required: no warning
    notes = r.notes()
    assert (
        "aed: 値必須の項目 URL: 2 行が空欄です / URL: 2 rows blank (required by the standard)"
        in notes
    )
    assert any("画像URL（配列）: 3 rows blank" in n for n in notes)


def test_datastore_types_follow_the_layout() -> None:
    layout = load_dataset("aed-locations")
    spec_ = ResourceSpec(
        key="aed",
        format="standard-csv",
        name={"ja": "AED"},
        standard="aed-locations",
        layout=layout,
    )
    r = render_resource(spec_, [aed(1), aed(2, height=None)])
    assert r.table is not None
    types = dict(zip(r.table.headers, r.table.field_types(), strict=True))
    assert types["緯度"] == types["経度"] == types["高度の値"] == "numeric"
    assert types["開始時間"] == "time"
    assert types["名称"] == types["ID"] == "text"
    # municipality codes keep their leading zeros: text
    assert types["全国地方公共団体コード"] == "text"
    assert r.untyped == {}

    # a value the hub holds that does not read as the column's type: that column is
    # published as text (CKAN would refuse every row otherwise), and the report says so
    r = render_resource(spec_, [aed(1, startTime="午前9時")])
    assert r.table is not None
    types = dict(zip(r.table.headers, r.table.field_types(), strict=True))
    assert types["開始時間"] == "text"
    assert types["緯度"] == "numeric"
    assert r.untyped == {"開始時間": "午前9時"}
    assert any("開始時間" in n and "as text" in n for n in r.notes())


def test_datastore_types_of_declared_columns_follow_the_values() -> None:
    columns = (
        ColumnSpec(header="ID", attribute="id"),
        ColumnSpec(header="名称", attribute="name"),
        ColumnSpec(header="収容人数", attribute="capacity"),
        ColumnSpec(header="緯度", attribute="location", key="latitude"),
        ColumnSpec(header="経度", attribute="location", key="longitude"),
    )
    other = {**SITE, "id": "urn:ngsi-ld:EvacuationSite:132195-0002"}
    del other["capacity"]
    table = entity_table([simplify(SITE), simplify(other)], columns)
    assert table.field_types() == ["text", "text", "numeric", "numeric", "numeric"]
    auto = entity_table([simplify(SITE)])
    types = dict(zip(auto.headers, auto.field_types(), strict=True))
    assert types["capacity"] == types["latitude"] == "numeric"
    assert types["name"] == types["address.addressRegion"] == "text"
