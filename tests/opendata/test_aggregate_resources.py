# ruff: noqa: RUF001
"""district_indicators resources: validation of the definition and rendering of the layer."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import orjson
import pytest
import yaml
from shapely.geometry import box

from broker.samples import DISTRICTS_FILE, GIS_SAMPLES_FILE, POPULATION_FILE
from opendata import gis
from opendata.datasets import DefinitionError, load_definition, load_definitions
from opendata.render import render_dataset, simplify
from tests.support import broker

EXAMPLES = Path(__file__).resolve().parents[2] / "opendata" / "examples"


def write(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A definitions folder with the sample districts and population beside it."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DISTRICTS_FILE, data / "districts.geojson")
    shutil.copy(POPULATION_FILE, data / "population.csv")
    return tmp_path


def aggregate(**extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": "district_indicators",
        "key": "aed-per-district",
        "districts": "data/districts.geojson",
        "id_column": "KEY_CODE",
    }
    item.update(extra)
    return item


def definition(*resources: Any, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "komae-aed-districts",
        "organization": "komae-city",
        "title": {"ja": "町丁目別AED", "en": "AEDs per district"},
        "query": {"type": "AEDLocation"},
        "resources": list(resources) or [aggregate()],
    }
    doc.update(extra)
    return doc


def aeds() -> list[dict[str, Any]]:
    raw = orjson.loads(GIS_SAMPLES_FILE.read_bytes())
    ents = [simplify(e) for e in raw if e["type"] == "AEDLocation"]
    return sorted(ents, key=lambda e: str(e["id"]))


def messages(path: Path) -> dict[str, str]:
    """key -> messages (one a line) of every problem reported for a definition file."""
    with pytest.raises(DefinitionError) as exc:
        load_definition(path)
    out: dict[str, str] = {}
    for m in exc.value.messages:
        assert m.startswith(f"{path}: "), m
        key, _, text = m[len(f"{path}: ") :].partition(": ")
        out[key] = f"{out[key]}\n{text}" if key in out else text
    return out


def test_shipped_example_is_valid_and_needs_nothing_outside_the_repository() -> None:
    d = next(d for d in load_definitions(EXAMPLES) if d.name == "komae-aed-per-district")
    assert [(r.key, r.format) for r in d.resources] == [
        ("aed-per-district-geojson", "geojson"),
        ("aed-per-district-csv", "csv"),
    ]
    (agg,) = d.aggregates
    assert agg.districts == DISTRICTS_FILE.resolve()
    assert agg.population == POPULATION_FILE.resolve()
    assert agg.layer == "komae-aed-per-district"
    assert d.resource("aed-per-district-csv").name["ja"] == "町丁目別AED設置状況（CSV）"
    assert "shared" not in (EXAMPLES / "aed-per-district.yaml").read_text(encoding="utf-8")


def test_defaults_follow_what_the_definition_gives(folder: Path) -> None:
    d = load_definition(write(folder, "aed.yaml", definition()))
    (agg,) = d.aggregates
    assert agg.districts == (folder / "data" / "districts.geojson").resolve()
    assert agg.prefix == "aed_location"  # from the query's entity type
    assert agg.indicators == ("count", "per_km2", "nearest")
    assert agg.formats == ("geojson", "csv")
    assert agg.layer == "aed-per-district"
    assert [r.key for r in d.resources] == ["aed-per-district-geojson", "aed-per-district-csv"]

    d = load_definition(
        write(
            folder,
            "aed.yaml",
            definition(
                aggregate(population="data/population.csv", attribute="units", formats="csv")
            ),
        )
    )
    (agg,) = d.aggregates
    assert agg.indicators == ("count", "per_km2", "sum", "mean", "per_capita", "nearest")
    assert agg.population_key == "地域コード"
    assert [r.key for r in d.resources] == ["aed-per-district-csv"]


def test_paths_are_relative_to_the_definition_file(folder: Path) -> None:
    sub = folder / "definitions"
    sub.mkdir()
    path = write(sub, "aed.yaml", definition(aggregate(districts="../data/districts.geojson")))
    assert load_definition(path).aggregates[0].districts.name == "districts.geojson"
    path = write(sub, "aed.yaml", definition(aggregate()))  # data/ is not beside it
    problems = messages(path)
    assert "no such file" in problems["resources[0].districts"]


def test_every_problem_of_an_aggregate_is_reported_with_its_key(folder: Path) -> None:
    doc = definition(
        aggregate(
            key="AED",
            districts="data/districts.txt",
            id_column=None,
            population={"file": "data/nope.csv", "colum": "x"},
            per=0,
            indicators=["count", "median"],
            formats=["xlsx"],
            layer="../escape",
            prefix="1st",
            colour="red",
        ),
        {"kind": "heatmap"},
    )
    problems = messages(write(folder, "bad.yaml", doc))
    assert set(problems) >= {
        "resources[0].key",
        "resources[0].districts",
        "resources[0].id_column",
        "resources[0].population.file",
        "resources[0].population.colum",
        "resources[0].per",
        "resources[0].indicators",
        "resources[0].formats",
        "resources[0].layer",
        "resources[0].prefix",
        "resources[0].colour",
        "resources[1].kind",
    }
    assert "data/districts.txt" in problems["resources[0].districts"]
    assert "median" not in problems["resources[0].indicators"].split("out of")[1]


def test_indicators_need_what_they_are_computed_from(folder: Path) -> None:
    problems = messages(
        write(folder, "aed.yaml", definition(aggregate(indicators=["sum", "per_capita"])))
    )
    assert "attribute" in problems["resources[0].indicators"]
    problems = messages(write(folder, "aed.yaml", definition(aggregate(indicators=["per_capita"]))))
    assert "population" in problems["resources[0].indicators"]


def test_query_attrs_must_keep_what_is_aggregated(folder: Path) -> None:
    doc = definition(aggregate(attribute="units"), query={"type": "AEDLocation", "attrs": ["name"]})
    problems = messages(write(folder, "aed.yaml", doc))
    assert "location" in problems["query.attrs"]
    assert "units" in problems["resources[0].attribute"]


def test_the_files_are_read_on_load(folder: Path) -> None:
    problems = messages(write(folder, "aed.yaml", definition(aggregate(id_column="CODE"))))
    assert "'CODE'" in problems["resources[0].id_column"]
    assert "KEY_CODE" in problems["resources[0].id_column"]  # the columns it has

    (folder / "data" / "population.csv").write_text("地域コード,人口\n1,2\n", encoding="utf-8")
    problems = messages(
        write(folder, "aed.yaml", definition(aggregate(population="data/population.csv")))
    )
    assert "総人口" in problems["resources[0].population"]

    # the same district code twice
    frame = gis.read_districts(DISTRICTS_FILE, key="KEY_CODE")
    codes = list(frame["KEY_CODE"])
    frame["KEY_CODE"] = [codes[0], *codes[:-1]]
    frame.to_file(folder / "data" / "districts.geojson", driver="GeoJSON")
    problems = messages(write(folder, "aed.yaml", definition()))
    assert "repeats" in problems["resources[0].id_column"]

    (folder / "data" / "districts.geojson").write_text("{not json", encoding="utf-8")
    problems = messages(write(folder, "aed.yaml", definition()))
    assert "cannot read districts.geojson" in problems["resources[0].districts"]


def test_a_cp932_shapefile_is_accepted(folder: Path) -> None:
    frame = gis.read_districts(DISTRICTS_FILE, key="KEY_CODE")
    frame.to_file(folder / "data" / "r2ka13219.shp", encoding="cp932")
    (folder / "data" / "r2ka13219.cpg").unlink(missing_ok=True)
    d = load_definition(
        write(folder, "aed.yaml", definition(aggregate(districts="data/r2ka13219.shp")))
    )
    _, (layer,) = render_dataset(d.resources, aeds())
    assert "猪方一丁目" in set(layer.frame["S_NAME"])


def test_layer_names_are_unique_across_definitions(folder: Path) -> None:
    write(folder, "a.yaml", definition())
    write(folder, "b.yaml", definition(name="komae-aed-other"))
    with pytest.raises(DefinitionError, match=r"b\.yaml: layer: aed-per-district .*a\.yaml"):
        load_definitions(folder)
    write(folder, "b.yaml", definition(aggregate(layer=False), name="komae-aed-other"))
    assert len(load_definitions(folder)) == 2


def test_layer_counts_match_district_indicators(folder: Path) -> None:
    d = load_definition(
        write(
            folder,
            "aed.yaml",
            definition(
                aggregate(
                    population="data/population.csv",
                    attribute="units",
                    prefix="aed",
                    indicators=["count", "sum", "per_capita"],
                ),
                "csv",
            ),
        )
    )
    entities = aeds()
    outside = {
        "id": "urn:ngsi-ld:AEDLocation:elsewhere",
        "type": "AEDLocation",
        "units": 1,
        "location": {"type": "Point", "coordinates": [139.40, 35.70]},
    }
    nowhere = {"id": "urn:ngsi-ld:AEDLocation:unplaced", "type": "AEDLocation", "units": 1}
    rendered, (layer,) = render_dataset(d.resources, [*entities, outside, nowhere])
    assert [r.spec.key for r in rendered] == [
        "aed-per-district-geojson",
        "aed-per-district-csv",
        "csv",
    ]
    expected = gis.district_indicators(
        gis.read_districts(DISTRICTS_FILE, key="KEY_CODE"),
        gis.entities_to_geodataframe(entities),
        key="KEY_CODE",
        prefix="aed",
        attribute="units",
        population=gis.read_population(POPULATION_FILE),
    )
    rows = list(csv.DictReader(io.StringIO(rendered[1].content.decode("utf-8-sig"))))
    assert {r["KEY_CODE"]: int(r["aed_count"]) for r in rows} == dict(
        zip(expected["KEY_CODE"], expected["aed_count"], strict=True)
    )
    assert {r["KEY_CODE"]: float(r["aed_units_sum"]) for r in rows} == dict(
        zip(expected["KEY_CODE"], expected["aed_units_sum"], strict=True)
    )
    assert {r["KEY_CODE"]: round(float(r["aed_per_1000"]), 4) for r in rows} == {
        k: round(v, 4) for k, v in zip(expected["KEY_CODE"], expected["aed_per_1000"], strict=True)
    }
    # only the indicators asked for
    assert "aed_per_km2" not in rows[0]
    assert "aed_units_mean" not in rows[0]
    assert "aed_nearest_m" not in rows[0]
    assert rendered[1].content.startswith(b"\xef\xbb\xbfKEY_CODE,")
    assert b"\r\n" in rendered[1].content
    geo = orjson.loads(rendered[0].content)
    assert [f["id"] for f in geo["features"]] == list(expected["KEY_CODE"])
    assert geo["title"] == "地区別集計 / District indicators"
    assert any("1 entities outside every district" in n for n in layer.notes)
    assert any("1 entities without a location" in n for n in layer.notes)
    # the same input gives the same bytes, so an unchanged layer is not uploaded again
    again, _ = render_dataset(d.resources, [*entities, outside, nowhere])
    assert [r.sha256 for r in again] == [r.sha256 for r in rendered]


def test_no_entities_gives_every_district_a_zero(folder: Path) -> None:
    d = load_definition(write(folder, "aed.yaml", definition(aggregate(attribute="units"))))
    rendered, (layer,) = render_dataset(d.resources, [])
    rows = list(csv.DictReader(io.StringIO(rendered[1].content.decode("utf-8-sig"))))
    assert len(rows) == 12
    assert {r["aed_location_count"] for r in rows} == {"0"}
    assert layer.notes == []


def test_platform_dependent_district_names_are_cleaned_in_the_csv(folder: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"KEY_CODE": ["1", "2"], "S_NAME": ["狛江①丁目", "ｺﾏｴ"]},
        geometry=[box(139.56, 35.62, 139.58, 35.64), box(139.58, 35.62, 139.60, 35.64)],
        crs="EPSG:4326",
    )
    frame.to_file(folder / "data" / "districts.geojson", driver="GeoJSON")
    d = load_definition(write(folder, "aed.yaml", definition()))
    rendered, _ = render_dataset(d.resources, aeds())
    text = rendered[1].content.decode("utf-8-sig")
    assert "狛江1丁目" in text
    assert "コマエ" in text
    notes = rendered[1].notes()
    assert any("①" in n for n in notes)


def test_dry_run_of_the_example_computes_and_writes_nothing(tmp_path: Path) -> None:
    raw = [e for e in orjson.loads(GIS_SAMPLES_FILE.read_bytes()) if e["type"] == "AEDLocation"]
    layers = tmp_path / "layers"
    with broker(tmp_path / "hub.db") as hub:
        r = httpx.post(
            f"{hub}/ngsi-ld/v1/entityOperations/upsert",
            json=raw,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text
        proc = subprocess.run(
            [
                sys.executable, "-m", "broker.cli", "publish", "--definitions", str(EXAMPLES),
                "--dataset", "komae-aed-per-district", "--dry-run", "--broker-url", hub,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("RENKEI_CKAN")},
                "RENKEI_OGC_LAYERS_DIR": str(layers),
            },
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (
        f"komae-aed-per-district: 作成のみ（CKAN と比較なし） / rendered ({len(raw)} entities)"
        in out
    )
    assert "aed-per-district-geojson: 作成のみ" in out
    assert "aed-per-district-csv: 作成のみ" in out
    assert "OGC layer~komae-aed-per-district: 作成 / created" in out
    assert not layers.exists()


def test_a_district_file_gone_since_loading_fails_only_its_dataset(folder: Path) -> None:
    from opendata.publish import Publisher

    d = load_definition(write(folder, "aed.yaml", definition()))
    (folder / "data" / "districts.geojson").unlink()
    publisher = Publisher(None, "http://127.0.0.1:9", dry_run=True, ogc_layers_dir=folder / "l")
    report = publisher.publish(d, aeds())
    assert report.status == "failed"
    assert report.error is not None
    assert report.error.startswith("aed-per-district: 地区または人口のファイルを読めません")
    assert "districts.geojson" in report.error


def test_watch_sees_a_replaced_population_file_as_a_change(folder: Path) -> None:
    from opendata.publish import entities_digest

    d = load_definition(
        write(folder, "aed.yaml", definition(aggregate(population="data/population.csv")))
    )
    entities = aeds()
    before = entities_digest(entities, d)
    assert entities_digest(entities, d) == before
    pop = folder / "data" / "population.csv"
    pop.write_text(pop.read_text(encoding="utf-8").replace(",5210,", ",5300,"), encoding="utf-8")
    assert entities_digest(entities, d) != before
