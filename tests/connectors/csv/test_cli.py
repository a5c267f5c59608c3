# ruff: noqa: RUF001, RUF002  (Japanese fixtures: full-width digits and brackets are intended)
"""``renkei import-csv`` through typer, and end to end against a real broker process."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from connectors.client import BrokerClient
from connectors.csv.cli import register
from connectors.csv.export import export_rows
from connectors.csv.layout import DEFAULT_CONTEXT, load_dataset
from tests.support import broker, free_port

from .helpers import canonical_rows, preload_file, write_csv

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Renkei."""

    register(app)
    return app


APP = make_app()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(APP, ["import-csv", *args], env=env)


def evacuation_csv(
    tmp_path: Path, count: int = 3, encoding: str = "cp932"
) -> tuple[Path, list[list[str]]]:
    rows = canonical_rows(load_dataset("evacuation-sites"), count)
    return write_csv(tmp_path / "092011_evacuation_space.csv", rows, encoding), rows


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    path, _ = evacuation_csv(tmp_path)
    result = invoke(
        str(path), "--dataset", "evacuation-sites", "--dry-run", "--broker-url", unused_url()
    )
    assert result.exit_code == 0, result.output
    assert "would write 3 entities" in result.output
    assert "urn:ngsi-ld:EvacuationSite:131016-0001" in result.output
    assert "①㈱髙" in result.output


def test_strict_refuses_the_whole_file(tmp_path: Path) -> None:
    path, rows = evacuation_csv(tmp_path)
    rows[2][rows[0].index("緯度")] = "北緯35度"
    write_csv(path, rows, "cp932")
    # An unreachable broker: if anything were sent, the exit status would be 3.
    result = invoke(
        str(path), "--dataset", "evacuation-sites", "--strict", "--broker-url", unused_url()
    )
    assert result.exit_code == 1, result.output
    assert (
        "3行目 「緯度」: 数値ではありません（北緯35度） / line 3, column 緯度: not a number"
        in result.output
    )
    assert "nothing written" in result.output


def test_usage_errors(tmp_path: Path) -> None:
    path, _ = evacuation_csv(tmp_path)
    result = invoke(str(path), "--dataset", "evacuation-sites", "--mapping", str(path))
    assert result.exit_code == 2
    assert "exactly one of --dataset or --mapping" in result.output
    result = invoke(str(path), "--dataset", "parks")
    assert result.exit_code == 2
    assert "unknown dataset" in result.output
    bad = tmp_path / "m.yaml"
    bad.write_text("type: X\nid: 'urn:ngsi-ld:X:{a}'\ncolumns: {A: {attribute: a, type: float}}\n")
    result = invoke(str(path), "--mapping", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: columns.A.type:" in result.output
    result = invoke(str(path), "--dataset", "evacuation-sites", "--encoding", "utf-8", "--dry-run")
    assert result.exit_code == 2
    assert "not valid utf-8" in result.output


def query_all(url: str, entity_type: str, tenant: str | None = None) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        client = BrokerClient(url, tenant=tenant, context=DEFAULT_CONTEXT)
        try:
            return [e async for e in client.query(type=entity_type)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_end_to_end_import_reimport_and_round_trip(tmp_path: Path) -> None:
    path, rows = evacuation_csv(tmp_path, count=4, encoding="cp932")
    layout = load_dataset("evacuation-sites")
    with broker(tmp_path / "b.db", "--context-preload", str(preload_file(tmp_path))) as url:
        result = invoke(str(path), "--dataset", "evacuation-sites", "--broker-url", url)
        assert result.exit_code == 0, result.output
        assert "wrote 4 entities" in result.output
        entities = query_all(url, "EvacuationSite")
        assert len(entities) == 4
        ent = next(e for e in entities if e["id"].endswith("131016-0002"))
        assert ent["name"]["value"] == "名称2①㈱髙"
        assert ent["maxCapacity"]["unitCode"] == "IE"
        assert ent["location"]["value"]["type"] == "Point"
        assert ent["address"]["value"]["addressRegion"] == rows[2][rows[0].index("所在地_都道府県")]

        # Export from the broker gives the same rows back.
        by_id = sorted(entities, key=lambda e: e["id"])
        assert list(export_rows(layout, by_id)) == rows

        # The terms are the NGSI-LD default vocabulary: a client without a Link header
        # finds the imported entities under the same short names the README shows.
        plain = httpx.get(
            f"{url}/ngsi-ld/v1/entities",
            params={"type": "EvacuationSite", "limit": 1000},
        ).json()
        assert {e["id"] for e in plain} == {e["id"] for e in entities}
        assert plain[0]["maxCapacity"]["unitCode"] == "IE"

        # Re-import a corrected file (env var for the URL): updates, never duplicates.
        rows[1][rows[0].index("名称")] = "訂正後の名称"
        write_csv(path, rows, "utf-8-sig")
        result = invoke(str(path), "--dataset", "evacuation-sites", env={"RENKEI_BROKER_URL": url})
        assert result.exit_code == 0, result.output
        entities = query_all(url, "EvacuationSite")
        assert len(entities) == 4
        names = {e["id"].rsplit("-", 1)[1]: e["name"]["value"] for e in entities}
        assert names["0001"] == "訂正後の名称"


def test_end_to_end_errors_skip_rows_and_tenant(tmp_path: Path) -> None:
    path, rows = evacuation_csv(tmp_path, count=3, encoding="utf-8")
    rows[2][rows[0].index("想定収容人数")] = "多数"
    rows[3][rows[0].index("市区町村コード")] = "131017"
    write_csv(path, rows, "utf-8")
    with broker(tmp_path / "b.db", "--context-preload", str(preload_file(tmp_path))) as url:
        args = [
            str(path),
            "--dataset",
            "evacuation-sites",
            "--broker-url",
            url,
            "--tenant",
            "komae",
        ]
        result = invoke(*args, "--strict")
        assert result.exit_code == 1
        assert query_all(url, "EvacuationSite", tenant="komae") == []
        result = invoke(*args)
        assert result.exit_code == 1
        assert "3行目 「想定収容人数」: 整数ではありません（多数）" in result.output
        assert "4行目 「市区町村コード」" in result.output
        assert "wrote 1 entities (2 of 3 rows skipped for errors)" in result.output
        assert [e["id"] for e in query_all(url, "EvacuationSite", tenant="komae")] == [
            "urn:ngsi-ld:EvacuationSite:131016-0001"
        ]
        assert query_all(url, "EvacuationSite") == []


def test_type_override_and_mapping_with_plane_coordinates(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "type: Shelter\nid: 'urn:ngsi-ld:{type}:{code}'\nplane_zone: 9\n"
        "columns:\n  番号: {attribute: code, nfkc: true}\n  X: {type: plane-x}\n  Y: {type: plane-y}\n",
        encoding="utf-8",
    )
    path = write_csv(tmp_path / "s.csv", [["番号", "X", "Y"], ["１", "０", "0"]], "cp932")
    result = invoke(str(path), "--mapping", str(mapping), "--type", "Refuge", "--dry-run")
    assert result.exit_code == 0, result.output
    body = result.output[result.output.index("[") :]
    (ent,) = json.loads(body)
    assert ent["id"] == "urn:ngsi-ld:Refuge:1"
    lon, lat = ent["location"]["value"]["coordinates"]
    assert lon == pytest.approx(139 + 50 / 60, abs=1e-7)
    assert lat == pytest.approx(36.0, abs=1e-7)


# -- the department clerk's journeys: real files, blank required columns, wrong layouts --


def aed_rows(count: int) -> list[list[str]]:
    """An AED list as cities publish it: URL and 画像URL（配列） left blank."""
    rows = canonical_rows(load_dataset("aed-locations"), count)
    url, picture = rows[0].index("URL"), rows[0].index("画像URL（配列）")
    for n, row in enumerate(rows[1:], 1):
        row[url] = ""
        if n % 2:
            row[picture] = ""
    return rows


def test_real_aed_file_with_blank_required_columns_imports_every_row(tmp_path: Path) -> None:
    rows = aed_rows(5)
    path = write_csv(tmp_path / "132195_aed.csv", rows, "cp932")
    with broker(tmp_path / "b.db", "--context-preload", str(preload_file(tmp_path))) as url:
        # No --dataset: the layout is chosen from the header.
        result = invoke(str(path), "--broker-url", url)
        assert result.exit_code == 0, result.output
        assert "reading as aed-locations (AED locations list)" in result.output
        assert "wrote 5 entities (0 of 5 rows skipped for errors)" in result.output
        assert "URL: 5行が空です / URL: 5 rows blank" in result.output
        assert "画像URL（配列）: 3 rows blank" in result.output
        assert "a value is required" not in result.output  # listed only with --verbose
        entities = query_all(url, "AEDLocation")
        assert len(entities) == 5
        ent = next(e for e in entities if e["id"].endswith("131016-0002"))
        assert ent["name"]["value"] == "名称2①㈱髙"
        assert "url" not in ent

        result = invoke(str(path), "--dataset", "aed-locations", "--dry-run", "--verbose")
        assert result.exit_code == 0, result.output
        assert (
            "警告 / warning: 2行目 「URL」: 必須項目が空です / line 2, column URL: a value is required"
            in result.output
        )
        assert "line 6, column 画像URL（配列）: a value is required" in result.output


def test_strict_makes_blank_required_columns_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "aed.csv", aed_rows(3), "cp932")
    result = invoke(str(path), "--strict", "--broker-url", unused_url())
    assert result.exit_code == 1, result.output
    assert (
        "2行目 「URL」: 必須項目が空です / line 2, column URL: a value is required" in result.output
    )
    assert "URL: 3 rows blank" in result.output
    assert "3 rows have errors: nothing written" in result.output


def test_a_row_without_a_name_or_id_is_refused_the_others_import(tmp_path: Path) -> None:
    rows = aed_rows(4)
    rows[2][rows[0].index("名称")] = ""
    rows[3][rows[0].index("ID")] = ""
    rows[4][rows[0].index("緯度")] = "91.5"
    path = write_csv(tmp_path / "aed.csv", rows, "utf-8-sig")
    result = invoke(str(path), "--dataset", "aed-locations", "--dry-run")
    assert result.exit_code == 1, result.output
    assert (
        "3行目 「名称」: 名称が空です（エンティティを作れません） / "
        "line 3, column 名称: the name is empty (the entity cannot be built)" in result.output
    )
    assert "line 4, column ID: cannot make the entity id: the value is empty" in result.output
    assert "line 5, column 緯度: latitude out of range (91.5)" in result.output
    assert "would write 1 entities" in result.output
    assert "3 rows would be skipped" in result.output
    assert "名称1①㈱髙" in result.output  # the UTF-8 (BOM) file's Japanese values


def test_wrong_layout_is_refused_naming_the_right_one(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "aed.csv", aed_rows(5), "cp932")
    # An unreachable broker: if anything were sent, the exit status would be 3.
    result = invoke(str(path), "--dataset", "evacuation-sites", "--broker-url", unused_url())
    assert result.exit_code == 2, result.output
    assert "見出しがレイアウト evacuation-sites に合いません" in result.output
    assert "only 3 of its 13 required columns are there" in result.output
    assert "it matches aed-locations (AED locations list): use --dataset aed-locations" in (
        result.output
    )
    assert "EvacuationSite" not in result.output


def test_auto_detection_picks_the_layout_or_refuses(tmp_path: Path) -> None:
    path, _ = evacuation_csv(tmp_path, count=2, encoding="utf-8-sig")
    result = invoke(str(path), "--dataset", "auto", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "見出しから evacuation-sites（指定緊急避難場所一覧）として読み込みます" in result.output
    assert "urn:ngsi-ld:EvacuationSite:131016-0002" in result.output

    other = write_csv(tmp_path / "bus.csv", [["停留所名", "系統"], ["狛江駅北口", "狛11"]], "cp932")
    result = invoke(str(other), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "the header fits no standard dataset: give --dataset or --mapping" in result.output


def test_an_oversized_field_is_reported_with_line_and_column(tmp_path: Path) -> None:
    rows = canonical_rows(load_dataset("evacuation-sites"), 4)
    remarks = rows[0].index("備考")
    rows[1][remarks] = "一行目\n二行目"  # a quoted field over two lines: record 2 ends on line 3
    rows[2][remarks] = "長" * (200 * 1024)
    path = write_csv(tmp_path / "evac.csv", rows, "utf-8")
    result = invoke(str(path), "--dataset", "evacuation-sites", "--dry-run")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert (
        "4行目 「備考」: 項目が長すぎます（128 KiB まで）。4行目から始まる行は読み込みません / "
        "line 4, column 備考: field longer than 128 KiB: the record starting on line 4 is skipped"
        in result.output
    )
    assert "would write 3 entities" in result.output  # the rows after it are read
    assert "1 rows would be skipped" in result.output
