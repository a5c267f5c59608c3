"""A GIS analyst's journey: a city CSV imported, then read through /ogc by real OGC clients.

GDAL's OAPIF driver (``ogrinfo``/``ogr2ogr`` from Debian ``gdal-bin``, what QGIS uses)
and OWSLib against a real ``renkei serve``: collections under their short ids,
properties under their short names (a Shapefile keeps them), property filters sent to
the hub (seen in its debug log), ``lang`` on every URL, and pages of the documented
default size.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from broker.cli import app as APP
from connectors.csv.layout import load_dataset
from tests.connectors.csv.helpers import canonical_rows, write_csv
from tests.support import free_port, wait_http

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "broker" / "samples" / "komae.json"
AED_COUNT = 120  # more than one default page (RENKEI_OGC_DEFAULT_LIMIT, 100)
DEFAULT_PAGE = 100


def aed_name(n: int) -> str:
    return f"狛江市立第{n}小学校 体育館"


class Hub:
    """A ``renkei serve`` subprocess whose debug log is kept in a file."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "hub.log"
        env = {**os.environ, "RENKEI_LOG_LEVEL": "debug"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "broker.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--store",
                    f"sqlite:///{folder / 'hub.db'}",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/health", timeout=60, proc=self.proc)

    def filtered(self, collection: str) -> list[dict[str, str]]:
        """The property filters the hub applied to ``collection``'s items, in order."""
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            m = re.search(rf"renkei.ogc: items {re.escape(collection)}: filters (\{{.*?\}}),", line)
            if m:
                found.append(json.loads(m.group(1)))
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("ogc-clients")
    running = Hub(folder)
    try:
        rows = canonical_rows(load_dataset("aed-locations"), AED_COUNT)
        names = rows[0].index("名称")
        for n, row in enumerate(rows[1:], start=1):
            row[names] = aed_name(n)
        path = write_csv(folder / "132195_aed.csv", rows, "cp932")
        result = CliRunner().invoke(
            APP,
            ["import-csv", str(path), "--dataset", "aed-locations", "--broker-url", running.url],
        )
        assert result.exit_code == 0, result.output
        samples = json.loads(SAMPLES.read_text(encoding="utf-8"))
        r = httpx.post(f"{running.url}/ngsi-ld/v1/entityOperations/upsert", json=samples)
        assert r.status_code in (201, 204), r.text
        yield running
    finally:
        running.stop()


def gdal(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_imported_data_is_found_without_a_link_header(hub: Hub) -> None:
    r = httpx.get(f"{hub.url}/ngsi-ld/v1/entities", params={"type": "AEDLocation", "limit": 1000})
    assert len(r.json()) == AED_COUNT
    assert r.json()[0]["name"]["value"].startswith("狛江市立第")
    # the context giving those names full IRIs is served for clients that want it
    url = "https://renkei.city/ns/renkei-v2.jsonld"
    ctx = httpx.get(f"{hub.url}/ngsi-ld/v1/jsonldContexts/{url}").json()["@context"]
    assert ctx["AEDLocation"] == "https://uri.etsi.org/ngsi-ld/default-context/AEDLocation"
    with_link = httpx.get(
        f"{hub.url}/ngsi-ld/v1/entities",
        params={"type": "AEDLocation", "limit": 1000},
        headers={"Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"'},
    )
    assert {e["id"] for e in with_link.json()} == {e["id"] for e in r.json()}


def test_gdal_lists_short_ids_and_sends_property_filters(hub: Hub, tmp_path: Path) -> None:
    source = f"OAPIF:{hub.url}/ogc"
    listing = gdal("ogrinfo", "-ro", "-q", source)
    layers = re.findall(r"^\d+: (\S+)", listing, re.MULTILINE)
    assert "AEDLocation" in layers
    assert "EvacuationSite" in layers
    assert not [name for name in layers if "~" in name or "http" in name]

    # a Shapefile export keeps readable field names and Japanese text
    shp = tmp_path / "aed.shp"
    gdal(
        "ogr2ogr", "-f", "ESRI Shapefile", "-lco", "ENCODING=UTF-8", str(shp), source, "AEDLocation"
    )
    fields = gdal("ogrinfo", "-ro", "-so", "-al", str(shp))
    for name in ("name", "nameEn", "identifier"):
        assert re.search(rf"^{name}: ", fields, re.MULTILINE), fields
    assert "https_" not in fields
    dump = gdal("ogrinfo", "-ro", "-al", "-where", "identifier = '0007'", str(shp))
    assert aed_name(7) in dump

    # the attribute filter reaches the hub as a query parameter: GDAL read /ogc/api
    before = len(hub.filtered("AEDLocation"))
    found = gdal("ogrinfo", "-ro", "-al", "-where", "identifier = '0007'", source, "AEDLocation")
    assert aed_name(7) in found
    assert "Feature Count: 1" in found or found.count("OGRFeature(AEDLocation)") == 1
    sent = hub.filtered("AEDLocation")[before:]
    assert {"identifier": "0007"} in sent, sent


def test_gdal_lang_on_the_collection_url(hub: Hub) -> None:
    english = gdal(
        "ogrinfo", "-ro", "-al", f"OAPIF:{hub.url}/ogc/collections/EvacuationSite?lang=en"
    )
    assert "name (String) = Komae Daiichi Elementary School" in english
    assert "name_ja (String) = 狛江第一小学校" in english
    japanese = gdal(
        "ogrinfo", "-ro", "-al", f"OAPIF:{hub.url}/ogc/collections/EvacuationSite?lang=ja"
    )
    assert "name (String) = 狛江第一小学校" in japanese
    assert "name_en (String) = Komae Daiichi Elementary School" in japanese


def test_owslib_collections_filters_lang_and_default_page(hub: Hub) -> None:
    from owslib.ogcapi.features import Features  # type: ignore[import-untyped]

    api = Features(f"{hub.url}/ogc")
    ids = [c["id"] for c in api.collections()["collections"]]
    assert "AEDLocation" in ids
    assert all("~" not in i and "http" not in i for i in ids)
    queryables = api.collection_queryables("AEDLocation")["properties"]
    assert {"name", "identifier", "fullTimeAvailable"} <= set(queryables)

    page = api.collection_items("AEDLocation")
    assert page["numberMatched"] == AED_COUNT
    assert page["numberReturned"] == DEFAULT_PAGE  # the documented default page
    doc = api.api()
    limit = next(
        p
        for p in doc["paths"]["/collections/AEDLocation/items"]["get"]["parameters"]
        if p["name"] == "limit"
    )
    assert limit["schema"]["default"] == DEFAULT_PAGE
    nxt = next(link["href"] for link in page["links"] if link["rel"] == "next")
    rest = httpx.get(nxt).json()
    assert rest["numberReturned"] == AED_COUNT - DEFAULT_PAGE

    one = api.collection_items("AEDLocation", identifier="0042")
    assert [f["properties"]["name"] for f in one["features"]] == [aed_name(42)]
    assert {"identifier": "0042"} in hub.filtered("AEDLocation")

    english = api.collection_items("EvacuationSite", lang="en")["features"]
    assert english[0]["properties"]["name"] == "Komae Daiichi Elementary School"
    default = api.collection_items("EvacuationSite")["features"]
    assert default[0]["properties"]["name"] == "狛江第一小学校"
    assert api.collection("EvacuationSite")["id"] == "EvacuationSite"
