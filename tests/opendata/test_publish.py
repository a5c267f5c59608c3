# ruff: noqa: RUF001
"""Publishing against a real CKAN 2.11 (scripts/ckan-dev.sh) and a real broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from opendata.datasets import DatasetDefinition, parse_definition
from opendata.publish import (
    Catalog,
    ChangeListener,
    DatasetReport,
    Publisher,
    subscribe_changes,
    unsubscribe,
)
from tests.support import broker

pytestmark = pytest.mark.ckan

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ckan-dev.sh"
WRITES = {
    "organization_create",
    "package_create",
    "package_patch",
    "package_update",
    "resource_create",
    "resource_patch",
    "resource_update",
    "datastore_create",
    "datastore_upsert",
    "datastore_delete",
    "resource_delete",
    "package_delete",
}


@dataclass
class Ckan:
    url: str
    token_file: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def catalog(self) -> Catalog:
        return Catalog(self.url, self.token, rate=0, retries=1, backoff=0.1)

    def action(self, action_name: str, /, **params: Any) -> Any:
        r = httpx.post(
            f"{self.url}/api/3/action/{action_name}",
            json=params,
            headers={"Authorization": self.token},
            timeout=30,
        )
        body = r.json()
        if not body.get("success"):
            return None
        return body["result"]

    def package(self, name: str) -> dict[str, Any]:
        pkg = self.action("package_show", id=name)
        assert pkg is not None, f"no package {name}"
        return pkg  # type: ignore[no-any-return]

    def resources(self, name: str) -> dict[str, dict[str, Any]]:
        return {r["renkei_key"]: r for r in self.package(name)["resources"]}

    def download(self, resource: dict[str, Any]) -> bytes:
        r = httpx.get(resource["url"], headers={"Authorization": self.token}, timeout=30)
        assert r.status_code == 200
        return r.content


@pytest.fixture(scope="module")
def ckan() -> Iterator[Ckan]:
    """A fresh CKAN (own PostgreSQL, Redis, Solr stand-in) for this module."""
    run = Path(tempfile.mkdtemp(prefix="renkei-ckan-test-"))
    run.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    env = {**os.environ, "RENKEI_CKAN_RUN": str(run)}
    try:
        proc = subprocess.run(
            [str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=1200
        )
        if proc.returncode != 0:
            pytest.fail(f"scripts/ckan-dev.sh start failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        yield Ckan(values["RENKEI_CKAN_URL"], Path(values["RENKEI_CKAN_TOKEN_FILE"]))
    finally:
        subprocess.run([str(SCRIPT), "purge"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("hub") / "broker.db") as url:
        yield url


def upsert(hub: str, tenant: str, entities: list[dict[str, Any]]) -> None:
    r = httpx.post(
        f"{hub}/ngsi-ld/v1/entityOperations/upsert",
        json=entities,
        headers={"Content-Type": "application/json", "NGSILD-Tenant": tenant},
        params={"options": "update"},
    )
    assert r.status_code in (201, 204), r.text


def delete(hub: str, tenant: str, entity_id: str) -> None:
    r = httpx.delete(f"{hub}/ngsi-ld/v1/entities/{entity_id}", headers={"NGSILD-Tenant": tenant})
    assert r.status_code == 204, r.text


def site(n: int, name: str, capacity: int = 500) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:EvacuationSite:132195-{n:04d}",
        "type": "EvacuationSite",
        "name": {"type": "Property", "value": name},
        "address": {
            "type": "Property",
            "value": {"addressRegion": "東京都", "addressLocality": "狛江市"},
        },
        "capacity": {"type": "Property", "value": capacity},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.57 + n / 1000, 35.63]},
        },
    }


def definition(name: str, tenant: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "organization": {"name": "komae-city", "title": {"ja": "狛江市", "en": "Komae City"}},
        "title": {"ja": "避難所一覧", "en": "Evacuation sites"},
        "description": {"ja": "狛江市の避難所です。", "en": "Evacuation sites of Komae."},
        "query": {"type": "EvacuationSite", "tenant": tenant},
        "resources": [
            {
                "format": "csv",
                "columns": [
                    {"header": "ID", "attribute": "id"},
                    {"header": "名称", "attribute": "name"},
                    {"header": "緯度", "attribute": "location", "key": "latitude"},
                    {"header": "経度", "attribute": "location", "key": "longitude"},
                ],
            },
            "geojson",
        ],
    }
    doc.update(extra)
    return doc


def parse(doc: dict[str, Any]) -> DatasetDefinition:
    return parse_definition(doc, source=f"{doc['name']}.yaml")


def publish(
    ckan: Ckan, hub: str, d: DatasetDefinition, *, dry_run: bool = False
) -> tuple[DatasetReport, list[str]]:
    catalog = ckan.catalog()
    try:
        report = Publisher(catalog, hub, dry_run=dry_run).publish(d)
    finally:
        catalog.close()
    return report, catalog.calls


def test_first_publish_creates_the_package_and_uploads_every_resource(ckan: Ckan, hub: str) -> None:
    upsert(hub, "first", [site(1, "狛江第一小学校"), site(2, "狛江市民総合体育館")])
    d = parse(definition("first-publish", "first"))
    report, _ = publish(ckan, hub, d)
    assert report.error is None
    assert report.status == "created"
    assert report.entities == 2
    assert report.resources == {"csv": "created", "geojson": "created"}

    pkg = ckan.package("first-publish")
    assert pkg["organization"]["name"] == "komae-city"
    assert pkg["license_id"] == "cc-by-4.0"
    res = ckan.resources("first-publish")
    assert res["csv"]["format"] == "CSV"
    assert res["geojson"]["format"] == "GeoJSON"
    csv_bytes = ckan.download(res["csv"])
    assert csv_bytes.startswith(b"\xef\xbb\xbfID,\xe5\x90\x8d\xe7\xa7\xb0,")  # BOM, ID,名称,
    assert csv_bytes.count(b"\r\n") == 3
    assert "狛江第一小学校" in csv_bytes.decode("utf-8-sig")
    import hashlib

    assert res["csv"]["hash"] == hashlib.sha256(csv_bytes).hexdigest()
    geo = httpx.get(res["geojson"]["url"], timeout=30).json()
    assert [f["id"] for f in geo["features"]] == [
        "urn:ngsi-ld:EvacuationSite:132195-0001",
        "urn:ngsi-ld:EvacuationSite:132195-0002",
    ]


def test_republish_without_change_uploads_nothing(ckan: Ckan, hub: str) -> None:
    upsert(hub, "again", [site(1, "狛江第一小学校")])
    d = parse(definition("republish", "again"))
    first, _ = publish(ckan, hub, d)
    assert first.status == "created"
    before = ckan.package("republish")

    report, calls = publish(ckan, hub, d)
    assert report.status == "unchanged"
    assert report.resources == {"csv": "unchanged", "geojson": "unchanged"}
    assert not WRITES & set(calls), calls
    after = ckan.package("republish")
    assert after["metadata_modified"] == before["metadata_modified"]
    assert [r["url"] for r in after["resources"]] == [r["url"] for r in before["resources"]]


def test_changed_entity_reuploads_only_the_resource_that_changed(ckan: Ckan, hub: str) -> None:
    upsert(hub, "change", [site(1, "狛江第一小学校", capacity=850), site(2, "狛江市民総合体育館")])
    d = parse(definition("changed-entity", "change"))
    assert publish(ckan, hub, d)[0].status == "created"
    before = ckan.resources("changed-entity")

    # capacity is in the GeoJSON properties, not among the CSV's columns
    upsert(hub, "change", [site(1, "狛江第一小学校", capacity=900)])
    report, calls = publish(ckan, hub, d)
    assert report.status == "updated"
    assert report.resources == {"csv": "unchanged", "geojson": "updated"}
    assert calls.count("resource_patch") == 1
    assert "resource_create" not in calls
    assert "package_patch" not in calls
    after = ckan.resources("changed-entity")
    assert after["csv"]["hash"] == before["csv"]["hash"]
    assert after["csv"]["last_modified"] == before["csv"]["last_modified"]
    assert after["geojson"]["hash"] != before["geojson"]["hash"]
    geo = httpx.get(after["geojson"]["url"], timeout=30).json()
    assert geo["features"][0]["properties"]["capacity"] == 900


def test_japanese_title_tags_and_search(ckan: Ckan, hub: str) -> None:
    upsert(hub, "ja", [site(1, "狛江第一小学校")])
    doc = definition(
        "komae-shelters-ja",
        "ja",
        title={"ja": "指定避難所一覧（狛江市）", "en": "Designated shelters (Komae)"},
        tags=["防災", "子育て・教育", "避難所（指定）", "shelter"],
    )
    report, _ = publish(ckan, hub, parse(doc))
    assert report.status == "created", report.error
    assert any("子育て・教育" in n for n in report.notes)

    pkg = ckan.package("komae-shelters-ja")
    assert pkg["title"] == "指定避難所一覧（狛江市）"
    assert sorted(t["name"] for t in pkg["tags"]) == sorted(
        ["防災", "子育て 教育", "避難所 指定", "shelter"]
    )
    extras = {e["key"]: e["value"] for e in pkg["extras"]}
    assert extras["title_en"] == "Designated shelters (Komae)"
    assert pkg["notes"].startswith("狛江市の避難所です。")

    found = ckan.action("package_search", fq='tags:"子育て 教育"')
    assert [p["name"] for p in found["results"]] == ["komae-shelters-ja"]

    # a tool elsewhere adds an extra; a changed title patches the package and keeps it
    ckan.action(
        "package_patch",
        id="komae-shelters-ja",
        extras=[*pkg["extras"], {"key": "harvest_source", "value": "elsewhere"}],
    )
    doc["title"] = {"ja": "指定避難所一覧", "en": "Designated shelters"}
    report, calls = publish(ckan, hub, parse(doc))
    assert report.status == "updated"
    assert report.fields == ["extras", "title"]
    assert "package_update" not in calls
    pkg = ckan.package("komae-shelters-ja")
    extras = {e["key"]: e["value"] for e in pkg["extras"]}
    assert pkg["title"] == "指定避難所一覧"
    assert extras["harvest_source"] == "elsewhere"
    assert extras["title_en"] == "Designated shelters"


def test_ckan_errors_are_reported_and_the_others_still_published(
    ckan: Ckan, hub: str, tmp_path: Path
) -> None:
    upsert(hub, "errors", [site(1, "狛江第一小学校")])
    docs = [
        definition(
            "a-missing-org", "errors", organization={"name": "no-such-org", "create": False}
        ),
        definition("b-bad-licence", "errors", license="no-such-licence"),
        definition("c-good", "errors"),
    ]
    for doc in docs:
        (tmp_path / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "publish",
            "--definitions",
            str(tmp_path),
            "--broker-url",
            hub,
            "--ckan-url",
            ckan.url,
            "--ckan-token-file",
            str(ckan.token_file),
            "--rate",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RENKEI_CKAN")},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "a-missing-org: 失敗 / failed" in out
    assert "CKAN package_create: owner_org: " in out  # CKAN's own validation text
    assert "b-bad-licence: 失敗 / failed" in out
    assert "no-such-licence" in out
    assert "c-good: 作成 / created" in out
    assert "失敗 failed 2" in out
    assert ckan.token not in out
    assert ckan.action("package_show", id="a-missing-org") is None
    assert ckan.action("package_show", id="b-bad-licence") is None
    assert ckan.package("c-good")["resources"]


def test_datastore_upsert_follows_the_hub(ckan: Ckan, hub: str) -> None:
    upsert(hub, "ds", [site(1, "狛江第一小学校"), site(2, "狛江市民総合体育館")])
    doc = definition("datastore-sites", "ds", datastore={"resource": "csv", "primary_key": ["ID"]})
    report, _ = publish(ckan, hub, parse(doc))
    assert report.status == "created", report.error
    assert report.datastore_rows == 2
    res_id = ckan.resources("datastore-sites")["csv"]["id"]

    def rows() -> dict[str, str]:
        result = ckan.action("datastore_search", resource_id=res_id, sort="ID")
        return {r["ID"]: r["名称"] for r in result["records"]}

    assert rows() == {
        "urn:ngsi-ld:EvacuationSite:132195-0001": "狛江第一小学校",
        "urn:ngsi-ld:EvacuationSite:132195-0002": "狛江市民総合体育館",
    }
    upsert(hub, "ds", [site(1, "狛江第一小学校（改修後）"), site(3, "和泉多摩川緑地")])
    delete(hub, "ds", "urn:ngsi-ld:EvacuationSite:132195-0002")
    report, calls = publish(ckan, hub, parse(doc))
    assert report.status == "updated"
    assert report.datastore_rows == 2
    assert "datastore_upsert" in calls
    assert rows() == {
        "urn:ngsi-ld:EvacuationSite:132195-0001": "狛江第一小学校（改修後）",
        "urn:ngsi-ld:EvacuationSite:132195-0003": "和泉多摩川緑地",
    }
    # nothing changed: the DataStore is left alone
    report, calls = publish(ckan, hub, parse(doc))
    assert report.status == "unchanged"
    assert not WRITES & set(calls)


def test_dry_run_touches_nothing(ckan: Ckan, hub: str) -> None:
    upsert(hub, "dry", [site(1, "狛江第一小学校")])
    new = parse(definition("dry-run-new", "dry", organization="dry-run-org"))
    report, calls = publish(ckan, hub, new, dry_run=True)
    assert report.dry_run
    assert report.status == "created"
    assert report.resources == {"csv": "created", "geojson": "created"}
    assert any("dry-run-org" in n for n in report.notes)
    assert not WRITES & set(calls)
    assert ckan.action("package_show", id="dry-run-new") is None
    assert ckan.action("organization_show", id="dry-run-org") is None
    # what would fail is reported as failing
    doomed = parse(
        definition("dry-run-doomed", "dry", organization={"name": "nowhere", "create": False})
    )
    report, calls = publish(ckan, hub, doomed, dry_run=True)
    assert report.status == "failed"
    assert report.error is not None
    assert "nowhere" in report.error
    assert not WRITES & set(calls)

    existing = parse(definition("dry-run-existing", "dry"))
    assert publish(ckan, hub, existing)[0].status == "created"
    before = ckan.package("dry-run-existing")
    upsert(hub, "dry", [site(1, "狛江第一小学校", capacity=1)])
    report, calls = publish(ckan, hub, existing, dry_run=True)
    assert report.status == "updated"
    assert report.resources == {"csv": "unchanged", "geojson": "updated"}
    assert not WRITES & set(calls)
    assert ckan.package("dry-run-existing") == before


def test_watch_republishes_only_datasets_whose_entities_changed(ckan: Ckan, hub: str) -> None:
    upsert(hub, "watch-a", [site(1, "狛江第一小学校")])
    upsert(hub, "watch-b", [site(2, "狛江市民総合体育館")])
    defs = [parse(definition("watch-a", "watch-a")), parse(definition("watch-b", "watch-b"))]
    reports: list[DatasetReport] = []

    def on_report(report: DatasetReport) -> None:
        reports.append(report)
        if len(reports) == 2:  # end of the first round: change one dataset's entities
            upsert(hub, "watch-a", [site(1, "狛江第一小学校", capacity=1234)])

    catalog = ckan.catalog()
    try:
        Publisher(catalog, hub).watch(defs, 0.05, rounds=3, on_report=on_report)
    finally:
        catalog.close()
    assert [(r.name, r.status) for r in reports] == [
        ("watch-a", "created"),
        ("watch-b", "created"),
        ("watch-a", "updated"),
    ]
    assert reports[2].resources == {"csv": "unchanged", "geojson": "updated"}


def test_watch_triggered_by_a_broker_subscription(ckan: Ckan, hub: str) -> None:
    upsert(hub, "notify", [site(1, "狛江第一小学校")])
    defs = [parse(definition("watch-notified", "notify"))]
    listener = ChangeListener()
    listener.start()
    subscriptions = subscribe_changes(defs, hub, listener.url)
    reports: list[DatasetReport] = []
    catalog = ckan.catalog()
    # an hour between checks: only the notification can wake the second round in time
    worker = threading.Thread(
        target=Publisher(catalog, hub).watch,
        args=(defs, 3600),
        kwargs={"rounds": 2, "on_report": reports.append, "trigger": listener.event},
        daemon=True,
    )
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while not reports and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(r.name, r.status) for r in reports] == [("watch-notified", "created")]
        listener.event.clear()  # the first round's own notifications are not the change
        upsert(hub, "notify", [site(1, "狛江第一小学校", capacity=42)])
        worker.join(timeout=60)
        assert not worker.is_alive()
    finally:
        unsubscribe(hub, subscriptions)
        listener.close()
        catalog.close()
    assert listener.received >= 1
    assert [(r.name, r.status) for r in reports][1:] == [("watch-notified", "updated")]
    assert reports[1].resources == {"csv": "unchanged", "geojson": "updated"}
    sub = httpx.get(
        f"{hub}/ngsi-ld/v1/subscriptions/{subscriptions[0][1]}", headers={"NGSILD-Tenant": "notify"}
    )
    assert sub.status_code == 404  # removed again


def test_catalogue_follows_the_definition_when_it_drops_a_resource(ckan: Ckan, hub: str) -> None:
    upsert(hub, "drop", [site(1, "狛江第一小学校")])
    doc = definition("dropped-resource", "drop")
    assert publish(ckan, hub, parse(doc))[0].status == "created"
    # someone deletes the dataset in CKAN's UI; someone else adds a resource by hand
    pkg = ckan.package("dropped-resource")
    ckan.action("resource_create", package_id=pkg["id"], name="手作業", url="https://example.org/x")
    ckan.action("package_delete", id="dropped-resource")

    doc["resources"] = ["geojson"]
    report, _ = publish(ckan, hub, parse(doc))
    assert report.status == "updated"
    assert "state" in report.fields
    assert report.resources == {"geojson": "unchanged", "csv": "deleted"}
    pkg = ckan.package("dropped-resource")
    assert pkg["state"] == "active"
    assert sorted(r["name"] for r in pkg["resources"]) == ["GeoJSON", "手作業"]


def aed(n: int, lon: float, lat: float) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:132195-9{n:03d}",
        "type": "AEDLocation",
        "name": {"type": "Property", "value": f"AED {n}"},
        "units": {"type": "Property", "value": 1},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


def test_district_aggregate_published_to_ckan_and_served_by_ogc(
    ckan: Ckan, hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv
    import io

    import orjson

    from broker.samples import DISTRICTS_FILE, GIS_SAMPLES_FILE, POPULATION_FILE
    from opendata import gis
    from opendata.client import Client

    samples = [e for e in orjson.loads(GIS_SAMPLES_FILE.read_bytes()) if e["type"] == "AEDLocation"]
    upsert(hub, "aggregate", samples)
    doc = {
        "name": "komae-aed-per-district",
        "organization": "komae-city",
        "title": {"ja": "町丁目別AED設置状況", "en": "AEDs per district"},
        "query": {"type": "AEDLocation", "tenant": "aggregate"},
        "resources": [
            {
                "kind": "district_indicators",
                "key": "aed",
                "name": {"ja": "町丁目別AED", "en": "AEDs per district"},
                "districts": str(DISTRICTS_FILE),
                "id_column": "KEY_CODE",
                "population": str(POPULATION_FILE),
                "prefix": "aed",
                "attribute": "units",
                "layer": "aed-per-district",
            }
        ],
    }
    d = parse(doc)
    layers = tmp_path / "layers"
    layer_file = layers / "aed-per-district.geojson"

    def run(*, dry_run: bool = False) -> tuple[DatasetReport, list[str]]:
        catalog = ckan.catalog()
        try:
            report = Publisher(catalog, hub, dry_run=dry_run, ogc_layers_dir=layers).publish(d)
        finally:
            catalog.close()
        return report, catalog.calls

    def expected() -> dict[str, int]:
        """What an analyst computes from the hub with opendata.gis (notebook 02)."""
        with Client(hub, tenant="aggregate") as client:
            facilities = gis.load_entities(client, "AEDLocation")
        layer = gis.district_indicators(
            gis.read_districts(DISTRICTS_FILE, key="KEY_CODE"),
            facilities,
            key="KEY_CODE",
            prefix="aed",
            population=gis.read_population(POPULATION_FILE),
        )
        return dict(zip(layer["KEY_CODE"], map(int, layer["aed_count"]), strict=True))

    # a dry run computes and reports, and touches neither CKAN nor the layers folder
    report, calls = run(dry_run=True)
    assert report.status == "created", report.error
    assert report.resources == {"aed-geojson": "created", "aed-csv": "created"}
    assert report.layers == {"aed-per-district": "created"}
    assert not WRITES & set(calls)
    assert not layers.exists()
    assert ckan.action("package_show", id="komae-aed-per-district") is None

    report, _ = run()
    assert report.status == "created", report.error
    assert report.entities == len(samples)
    assert report.resources == {"aed-geojson": "created", "aed-csv": "created"}
    assert report.layers == {"aed-per-district": "created"}
    counts = expected()
    assert sum(counts.values()) == len(samples)

    res = ckan.resources("komae-aed-per-district")
    assert res["aed-csv"]["format"] == "CSV"
    assert res["aed-csv"]["name"] == "町丁目別AED（CSV）"
    rows = list(csv.DictReader(io.StringIO(ckan.download(res["aed-csv"]).decode("utf-8-sig"))))
    assert {r["KEY_CODE"]: int(r["aed_count"]) for r in rows} == counts
    assert {r["KEY_CODE"]: int(r["population"]) for r in rows}["13219001001"] == 5210
    geo = orjson.loads(ckan.download(res["aed-geojson"]))
    assert {f["id"]: f["properties"]["aed_count"] for f in geo["features"]} == counts
    assert layer_file.read_bytes() == ckan.download(res["aed-geojson"])

    # nothing changed: nothing uploaded, the layer file left alone
    mtime = layer_file.stat().st_mtime_ns
    report, calls = run()
    assert report.status == "unchanged"
    assert report.resources == {"aed-geojson": "unchanged", "aed-csv": "unchanged"}
    assert report.layers == {"aed-per-district": "unchanged"}
    assert not WRITES & set(calls), calls
    assert layer_file.stat().st_mtime_ns == mtime

    monkeypatch.setenv("RENKEI_OGC_LAYERS_DIR", str(layers))
    with broker(tmp_path / "ogc.db") as ogc:
        url = f"{ogc}/ogc/collections/layer~aed-per-district"

        def served() -> dict[str, int]:
            items = httpx.get(f"{url}/items", params={"limit": 100}, timeout=30)
            assert items.status_code == 200, items.text
            body = items.json()
            assert body["numberMatched"] == 12
            return {f["id"]: f["properties"]["aed_count"] for f in body["features"]}

        collection = httpx.get(url, timeout=30).json()
        assert collection["title"] == "町丁目別AED / AEDs per district"
        assert served() == counts

        # two more AEDs in 猪方一丁目: CKAN and /ogc both follow
        upsert(hub, "aggregate", [aed(1, 139.565, 35.626), aed(2, 139.566, 35.627)])
        report, calls = run()
        assert report.status == "updated", report.error
        assert report.resources == {"aed-geojson": "updated", "aed-csv": "updated"}
        assert report.layers == {"aed-per-district": "updated"}
        counts = expected()
        assert (
            counts["13219001001"]
            == sum(1 for e in samples if e["address"]["value"]["streetAddress"] == "猪方一丁目") + 2
        )
        res = ckan.resources("komae-aed-per-district")
        rows = list(csv.DictReader(io.StringIO(ckan.download(res["aed-csv"]).decode("utf-8-sig"))))
        assert {r["KEY_CODE"]: int(r["aed_count"]) for r in rows} == counts
        assert served() == counts


def aed_site(n: int, name: str, height: float | None, **attrs: Any) -> dict[str, Any]:
    def prop(value: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value}

    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:AEDLocation:132195-{n:04d}",
        "type": "AEDLocation",
        "localGovernmentCode": prop("132195"),
        "identifier": prop(f"{n:04d}"),
        "name": prop(name),
        "startTime": prop("08:30"),
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.57 + n / 1000, 35.63 + n / 1000]},
        },
        **{k: prop(v) for k, v in attrs.items()},
    }
    if height is not None:
        entity["height"] = prop(height)
    return entity


def test_datastore_fields_are_typed_from_the_standard_layout(ckan: Ckan, hub: str) -> None:
    """CKAN's data explorer sorts and filters numbers and times as such; blank 値必須
    columns are published, with a warning counted per column."""
    upsert(
        hub,
        "typed",
        [
            aed_site(1, "狛江市役所", 100, url="https://www.city.komae.tokyo.jp/"),
            aed_site(2, "狛江市民総合体育館", 12.5),
            aed_site(3, "狛江第一小学校", 9.5),
            aed_site(4, "和泉多摩川緑地", None),
        ],
    )
    doc = {
        "name": "komae-aed-typed",
        "organization": "komae-city",
        "title": {"ja": "AED設置箇所一覧", "en": "AED locations"},
        "query": {"type": "AEDLocation", "tenant": "typed"},
        "resources": [{"format": "standard-csv", "standard": "aed-locations"}],
        "datastore": {"resource": "standard-aed-locations", "primary_key": ["ID"]},
    }
    report, _ = publish(ckan, hub, parse(doc))
    assert report.status == "created", report.error
    assert report.datastore_rows == 4
    assert any(n.endswith("URL: 3 rows blank (required by the standard)") for n in report.notes)
    assert any("画像URL（配列）: 4 rows blank" in n for n in report.notes)
    res_id = ckan.resources("komae-aed-typed")["standard-aed-locations"]["id"]

    def types() -> dict[str, str]:
        result = ckan.action("datastore_search", resource_id=res_id, limit=0)
        return {f["id"]: f["type"] for f in result["fields"]}

    def typed() -> None:
        fields = types()
        assert fields["緯度"] == fields["経度"] == fields["高度の値"] == "numeric"
        assert fields["開始時間"] == "time"
        assert fields["名称"] == fields["ID"] == fields["全国地方公共団体コード"] == "text"
        # sorted as numbers (as text: "100" < "12.5" < "9.5"), a blank last
        result = ckan.action("datastore_search", resource_id=res_id, sort="高度の値 asc")
        assert [r["名称"] for r in result["records"]] == [
            "狛江第一小学校",
            "狛江市民総合体育館",
            "狛江市役所",
            "和泉多摩川緑地",
        ]
        result = ckan.action("datastore_search", resource_id=res_id, filters={"高度の値": 12.5})
        assert [r["名称"] for r in result["records"]] == ["狛江市民総合体育館"]

    typed()
    # a table published untyped (every column text, as earlier releases did) is made again
    # with the layout's types, even though the file itself did not change
    ckan.action("datastore_delete", resource_id=res_id, force=True)
    ckan.action(
        "datastore_create",
        resource_id=res_id,
        force=True,
        fields=[{"id": f, "type": "text"} for f in load_headers()],
        primary_key=["ID"],
    )
    assert types()["高度の値"] == "text"
    report, calls = publish(ckan, hub, parse(doc))
    assert report.resources == {"standard-aed-locations": "unchanged"}
    assert report.datastore_rows == 4
    assert "datastore_create" in calls
    typed()
    report, calls = publish(ckan, hub, parse(doc))
    assert report.status == "unchanged"
    assert not WRITES & set(calls)


def load_headers() -> list[str]:
    from connectors.csv.layout import load_dataset

    return load_dataset("aed-locations").headers
