"""OGC API - Features at /ogc: collections per type and tenant, items, CRS, layers, ogctests."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.samples import sample_entities
from tests.conftest import JSON, building, make_settings
from tests.support import broker, package_python

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = ROOT / "broker" / "samples" / "komae.json"
JGD2011 = "http://www.opengis.net/def/crs/EPSG/0/6668"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


def sensor(n: int, lon: float, lat: float, when: str | None, **attrs: Any) -> dict[str, Any]:
    temp: dict[str, Any] = {"type": "Property", "value": 10.0 + n}
    if when is not None:
        temp["observedAt"] = when
    return {
        "id": f"urn:ngsi-ld:Sensor:{n:03d}",
        "type": "Sensor",
        "temperature": temp,
        "status": {"type": "Property", "value": "ok" if n % 2 else "broken"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
        **attrs,
    }


def create(client: TestClient, entities: list[dict[str, Any]], tenant: str | None = None) -> None:
    headers = {**JSON, **({"NGSILD-Tenant": tenant} if tenant else {})}
    r = client.post("/ngsi-ld/v1/entityOperations/upsert", headers=headers, json=entities)
    assert r.status_code in (201, 204), r.text


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TestClient]:
    layers = tmp_path / "layers"
    layers.mkdir()
    settings = make_settings(
        tmp_path,
        ogc_layers_dir=layers,
        ogc_time_properties={"Report": "dateIssued"},
        max_limit=50,
        ogc_default_limit=20,
    )
    with TestClient(create_app(settings)) as c:
        create(
            c,
            [
                sensor(
                    i, 139.55 + i * 0.001, 35.62 + i * 0.001, f"2026-11-{1 + i % 20:02d}T09:00:00Z"
                )
                for i in range(30)
            ]
            + [sensor(99, 139.9, 35.9, None)],
        )
        yield c


def test_landing_conformance_and_api_definition(hub: TestClient) -> None:
    landing = hub.get("/ogc")
    assert landing.headers["content-type"] == "application/json"
    rels = {link["rel"]: link["href"] for link in landing.json()["links"]}
    assert rels["data"].endswith("/ogc/collections")
    assert rels["conformance"].endswith("/ogc/conformance")
    assert rels["service-desc"].endswith("/ogc/api")
    conf = hub.get("/ogc/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in conf
    api = hub.get("/ogc/api")
    assert api.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    doc = api.json()
    assert doc["openapi"].startswith("3.0")
    # generated from the declared routes: the app's /openapi.json has the same parameters
    app_doc = hub.get("/openapi.json").json()
    generic = doc["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]
    declared = app_doc["paths"]["/ogc/collections/{collectionId}/items"]["get"]["parameters"]
    assert {p["name"] for p in generic} == {p["name"] for p in declared}
    assert {"f", "bbox", "bbox-crs", "crs", "datetime", "limit", "offset", "lang"} <= {
        p["name"] for p in generic
    }
    # one items path per collection, its queryable properties declared as parameters
    sensor_params = {
        p["name"]: p for p in doc["paths"]["/collections/Sensor/items"]["get"]["parameters"]
    }
    assert sensor_params["status"]["schema"] == {"type": "string"}
    assert sensor_params["temperature"]["schema"] == {"type": "number"}
    # the page size described is the one applied (RENKEI_OGC_DEFAULT_LIMIT, RENKEI_MAX_LIMIT)
    assert sensor_params["limit"]["schema"]["default"] == 20
    assert sensor_params["limit"]["schema"]["maximum"] == 50
    page = hub.get("/ogc/collections/Sensor/items").json()
    assert page["numberReturned"] == 20
    assert "20 features" in doc["info"]["description"]
    for path in doc["paths"].values():
        assert "anyOf" not in json.dumps(path)  # OpenAPI 3.0, as OGC clients expect
        for op in path.values():
            assert "422" not in op["responses"]
    assert hub.get("/ogc?f=html").headers["content-type"].startswith("text/html")
    assert hub.get("/ogc", headers={"Accept": "text/html"}).text.startswith("<!doctype html>")
    assert hub.get("/ogc?f=xml").status_code == 400
    assert hub.get("/ogc?foo=1").status_code == 400


def test_collections_per_type_and_tenant(hub: TestClient) -> None:
    create(hub, [building("urn:ngsi-ld:Building:9")], tenant="chofu")
    ids = [c["id"] for c in hub.get("/ogc/collections").json()["collections"]]
    assert ids == ["Sensor", "chofu~Building"]
    only = hub.get("/ogc/collections", headers={"NGSILD-Tenant": "chofu"}).json()
    assert [c["id"] for c in only["collections"]] == ["Building"]
    items = hub.get("/ogc/collections/chofu~Building/items").json()
    assert [f["id"] for f in items["features"]] == ["urn:ngsi-ld:Building:9"]
    same = hub.get("/ogc/collections/Building/items", headers={"NGSILD-Tenant": "chofu"}).json()
    assert same["features"] == items["features"]
    assert hub.get("/ogc/collections/Building").status_code == 404  # not in the default tenant
    assert hub.get("/ogc/collections/nowhere~Building").status_code == 404


def test_collection_extent_is_computed_from_the_data_and_follows_writes(hub: TestClient) -> None:
    col = hub.get("/ogc/collections/Sensor").json()
    assert col["extent"]["spatial"]["bbox"] == [[139.55, 35.62, 139.9, 35.9]]
    assert col["extent"]["temporal"]["interval"] == [
        ["2026-11-01T09:00:00Z", "2026-11-20T09:00:00Z"]
    ]
    assert col["crs"][0] == CRS84
    assert JGD2011 in col["crs"]
    assert "queryables" in hub.get("/ogc/collections/Sensor").headers["link"]
    create(hub, [sensor(200, 140.5, 36.5, "2026-12-24T00:00:00Z")])
    col = hub.get("/ogc/collections/Sensor").json()
    assert col["extent"]["spatial"]["bbox"] == [[139.55, 35.62, 140.5, 36.5]]
    assert col["extent"]["temporal"]["interval"][0][1] == "2026-12-24T00:00:00Z"


def test_extent_shrinks_after_the_cache_time(tmp_path: Path) -> None:
    # writes widen a cached extent at once; deletes show once the cache time has passed
    with TestClient(create_app(make_settings(tmp_path, ogc_cache_ttl=0))) as c:
        create(c, [sensor(1, 139.6, 35.6, None), sensor(2, 140.0, 36.0, None)])
        assert c.get("/ogc/collections/Sensor").json()["extent"]["spatial"]["bbox"] == [
            [139.6, 35.6, 140.0, 36.0]
        ]
        assert c.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:002").status_code == 204
        assert c.get("/ogc/collections/Sensor").json()["extent"]["spatial"]["bbox"] == [
            [139.6, 35.6, 139.6, 35.6]
        ]


def test_items_bbox_limit_offset_and_next_links(hub: TestClient) -> None:
    page = hub.get("/ogc/collections/Sensor/items?bbox=139.5,35.6,139.56,35.63&limit=4")
    assert page.headers["content-type"] == "application/geo+json"
    body = page.json()
    assert body["numberMatched"] == 11  # sensors 0..10 lie in the box
    assert body["numberReturned"] == 4
    feat = body["features"][0]
    assert feat["type"] == "Feature"
    assert feat["geometry"]["type"] == "Point"
    assert feat["properties"]["temperature"] == 10.0  # short names, simplified values
    assert "location" not in feat["properties"]
    seen = [f["id"] for f in body["features"]]
    nxt = next(link for link in body["links"] if link["rel"] == "next")
    while nxt is not None:
        body = hub.get(nxt["href"]).json()
        seen += [f["id"] for f in body["features"]]
        nxt = next((link for link in body["links"] if link["rel"] == "next"), None)
    assert seen == [f"urn:ngsi-ld:Sensor:{i:03d}" for i in range(11)]
    assert any(link["rel"] == "prev" for link in body["links"])
    # a limit above the maximum is served at the maximum, as the standard allows
    assert hub.get("/ogc/collections/Sensor/items?limit=1000").json()["numberReturned"] == 31
    assert len(hub.get("/ogc/collections/Sensor/items?limit=1000").json()["features"]) <= 50
    for bad in (
        "limit=0",
        "limit=unlimited",
        "offset=-1",
        "bbox=1,2,3",
        "bbox=a,b,c,d",
        "ooga=booga",
    ):
        assert hub.get(f"/ogc/collections/Sensor/items?{bad}").status_code == 400, bad


def test_items_datetime_against_observed_at(hub: TestClient) -> None:
    def ids(query: str) -> list[str]:
        r = hub.get(f"/ogc/collections/Sensor/items?limit=50&{query}")
        assert r.status_code == 200, r.text
        return [f["id"][-3:] for f in r.json()["features"]]

    # 1 + i % 20 == 5 -> i in (4, 24); sensor 99 has no time and is always kept
    assert ids("datetime=2026-11-05T09:00:00Z") == ["004", "024", "099"]
    assert ids("datetime=2026-11-05") == ["004", "024", "099"]
    assert ids("datetime=2026-11-19T00:00:00Z/..") == ["018", "019", "099"]
    assert ids("datetime=../2026-11-01T23:59:59Z") == ["000", "020", "099"]
    assert ids("datetime=2026-11-02T00:00:00Z/2026-11-02T23:00:00%2B09:00") == ["001", "021", "099"]
    assert hub.get("/ogc/collections/Sensor/items?datetime=yesterday").status_code == 400
    assert hub.get("/ogc/collections/Sensor/items?datetime=../..").status_code == 400


def test_items_datetime_against_a_configured_time_property(hub: TestClient) -> None:
    reports = [
        {
            "id": f"urn:ngsi-ld:Report:{n}",
            "type": "Report",
            "dateIssued": {"type": "Property", "value": when},
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [139.6, 35.6]},
            },
        }
        for n, when in ((1, "2025-04-01T00:00:00Z"), (2, "2026-04-01T00:00:00Z"))
    ]
    create(hub, reports)
    body = hub.get("/ogc/collections/Report/items?datetime=2026-01-01T00:00:00Z/..").json()
    assert [f["id"] for f in body["features"]] == ["urn:ngsi-ld:Report:2"]
    col = hub.get("/ogc/collections/Report").json()
    assert col["extent"]["temporal"]["interval"] == [
        ["2025-04-01T00:00:00Z", "2026-04-01T00:00:00Z"]
    ]


def test_items_property_equality_filters(hub: TestClient) -> None:
    body = hub.get("/ogc/collections/Sensor/items?status=broken&limit=50").json()
    assert body["numberMatched"] == 15
    assert {f["properties"]["status"] for f in body["features"]} == {"broken"}
    one = hub.get("/ogc/collections/Sensor/items?temperature=13").json()
    assert [f["id"] for f in one["features"]] == ["urn:ngsi-ld:Sensor:003"]
    assert hub.get("/ogc/collections/Sensor/items?colour=red").status_code == 400
    queryables = hub.get("/ogc/collections/Sensor/queryables")
    assert queryables.headers["content-type"] == "application/schema+json"
    assert queryables.json()["properties"] == {
        "status": {"type": "string"},
        "temperature": {"type": "number"},
    }


def test_attributes_outside_the_vocabulary_get_readable_names(hub: TestClient) -> None:
    noise = "https://smartdatamodels.org/dataModel.Environment/noiseLevel"
    loud = sensor(200, 139.58, 35.64, None, **{noise: {"type": "Property", "value": 72}})
    quiet = sensor(201, 139.58, 35.64, None, **{noise: {"type": "Property", "value": 40}})
    create(hub, [loud, quiet])
    queryables = hub.get("/ogc/collections/Sensor/queryables").json()["properties"]
    assert queryables["noiseLevel"] == {"type": "integer"}
    assert not [name for name in queryables if "://" in name]
    found = hub.get("/ogc/collections/Sensor/items", params={"noiseLevel": "72"}).json()
    assert [f["id"] for f in found["features"]] == [loud["id"]]
    assert found["features"][0]["properties"]["noiseLevel"] == 72


def test_crs_jgd2011_is_latitude_first(hub: TestClient) -> None:
    r = hub.get(f"/ogc/collections/Sensor/items/urn:ngsi-ld:Sensor:001?crs={JGD2011}")
    assert r.status_code == 200
    assert r.headers["content-crs"] == f"<{JGD2011}>"
    lat, lon = r.json()["geometry"]["coordinates"]
    assert lat == pytest.approx(35.621)
    assert lon == pytest.approx(139.551)
    default = hub.get("/ogc/collections/Sensor/items/urn:ngsi-ld:Sensor:001")
    assert default.headers["content-crs"] == f"<{CRS84}>"
    assert default.json()["geometry"]["coordinates"] == pytest.approx([139.551, 35.621])
    # bbox in JGD2011: lat,lon order
    body = hub.get(
        f"/ogc/collections/Sensor/items?bbox=35.6,139.5,35.63,139.56&bbox-crs={JGD2011}&crs=EPSG:6668"
    ).json()
    assert body["numberMatched"] == 11
    assert body["features"][0]["geometry"]["coordinates"][0] == pytest.approx(35.62)
    assert hub.get("/ogc/collections/Sensor/items?crs=EPSG:3857").status_code == 400


def test_feature_by_id(hub: TestClient) -> None:
    feat = hub.get("/ogc/collections/Sensor/items/urn:ngsi-ld:Sensor:002").json()
    assert feat["id"] == "urn:ngsi-ld:Sensor:002"
    rels = {link["rel"] for link in feat["links"]}
    assert {"self", "alternate", "collection"} <= rels
    create(hub, [building("urn:ngsi-ld:Building:1")])
    assert hub.get("/ogc/collections/Sensor/items/urn:ngsi-ld:Building:1").status_code == 404
    assert hub.get("/ogc/collections/Sensor/items/urn:ngsi-ld:Sensor:nope").status_code == 404
    html = hub.get("/ogc/collections/Sensor/items/urn:ngsi-ld:Sensor:002?f=html")
    assert "urn:ngsi-ld:Sensor:002" in html.text


def test_language_property_in_the_asked_language(tmp_path: Path) -> None:
    school = "urn:ngsi-ld:EvacuationSite:132195-0001"
    with TestClient(create_app(make_settings(tmp_path))) as c:
        create(c, json.loads(SAMPLES.read_text(encoding="utf-8")))
        items = "/ogc/collections/EvacuationSite/items"
        # Japanese by default: text, not a language map; English beside it as name_en
        plain = c.get(items).json()["features"][0]["properties"]
        assert plain["name"] == "狛江第一小学校"
        assert plain["name_en"] == "Komae Daiichi Elementary School"
        en = c.get(items, params={"lang": "en"}).json()["features"][0]["properties"]
        assert en["name"] == "Komae Daiichi Elementary School"
        assert en["name_ja"] == "狛江第一小学校"
        one = c.get(f"{items}/{school}", params={"lang": "en"}).json()
        assert one["properties"]["name"] == "Komae Daiichi Elementary School"
        html = c.get(items, params={"f": "html", "lang": "ja"}).text
        assert "狛江第一小学校" in html
        # lang is accepted on every resource (OGC clients add it to every URL)
        for path in (
            "/ogc",
            "/ogc/conformance",
            "/ogc/api",
            "/ogc/collections",
            "/ogc/collections/EvacuationSite",
            "/ogc/collections/EvacuationSite/queryables",
        ):
            assert c.get(path, params={"lang": "ja"}).status_code == 200, path
        # the filter on a language property matches its text in any language
        found = c.get(items, params={"name": "狛江第一小学校"}).json()
        assert [f["id"] for f in found["features"]] == [school]
        queryables = c.get("/ogc/collections/EvacuationSite/queryables").json()
        assert queryables["properties"]["name"] == {"type": "string"}
    # the default language is a setting
    (tmp_path / "en").mkdir()
    settings = make_settings(tmp_path / "en", ogc_language="en")
    with TestClient(create_app(settings)) as c:
        create(c, json.loads(SAMPLES.read_text(encoding="utf-8")))
        props = c.get(f"/ogc/collections/EvacuationSite/items/{school}").json()["properties"]
        assert (props["name"], props["name_ja"]) == (
            "Komae Daiichi Elementary School",
            "狛江第一小学校",
        )


def test_geojson_layers_folder_is_published_as_collections(hub: TestClient, tmp_path: Path) -> None:
    layer = {
        "type": "FeatureCollection",
        "title": "AED per 1,000 residents",
        "features": [
            {
                "type": "Feature",
                "id": "izumihoncho-1",
                "properties": {"district": "和泉本町一丁目", "aed_per_1000": 0.46},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[139.576, 35.633], [139.581, 35.633], [139.581, 35.637], [139.576, 35.633]]
                    ],
                },
            },
            {
                "type": "Feature",
                "properties": {"district": "遠く", "aed_per_1000": 0.1},
                "geometry": {"type": "Point", "coordinates": [140.5, 36.5]},
            },
        ],
    }
    (tmp_path / "layers" / "aed_coverage.geojson").write_text(json.dumps(layer), encoding="utf-8")
    listed = {c["id"]: c for c in hub.get("/ogc/collections").json()["collections"]}
    assert listed["layer~aed_coverage"]["title"] == "AED per 1,000 residents"
    assert listed["layer~aed_coverage"]["extent"]["spatial"]["bbox"] == [
        [139.576, 35.633, 140.5, 36.5]
    ]
    near = hub.get("/ogc/collections/layer~aed_coverage/items?bbox=139.5,35.6,139.6,35.7").json()
    assert [f["id"] for f in near["features"]] == ["izumihoncho-1"]
    assert near["numberMatched"] == 1
    by_name = hub.get("/ogc/collections/layer~aed_coverage/items?district=遠く").json()
    assert [f["id"] for f in by_name["features"]] == ["2"]
    one = hub.get("/ogc/collections/layer~aed_coverage/items/izumihoncho-1?crs=EPSG:6668").json()
    assert one["geometry"]["coordinates"][0][0] == [35.633, 139.576]
    assert hub.get("/ogc/collections/layer~missing").status_code == 404


# -- a GIS client: GDAL's OGC API - Features driver (what QGIS and geopandas use) -------------


def test_gdal_reads_the_collections_in_crs84_and_jgd2011(tmp_path: Path) -> None:
    import pyogrio  # type: ignore[import-untyped]

    with broker(tmp_path / "hub.db") as url:
        sample = json.loads(SAMPLES.read_text(encoding="utf-8"))
        r = httpx.post(f"{url}/ngsi-ld/v1/entityOperations/upsert", json=sample, timeout=30)
        assert r.status_code in (201, 204), r.text
        source = f"OAPIF:{url}/ogc"
        layers = {name: kind for name, kind in pyogrio.list_layers(source)}
        assert layers == {
            "AirQualityObserved": "Point",
            "District": "Polygon",
            "EvacuationSite": "Point",
            "ParkingSpot": "Point",
        }
        air = pyogrio.read_dataframe(source, layer="AirQualityObserved")
        assert air["no2"].dtype == "float64"
        assert air["name"][0] == "狛江市役所 大気測定局"
        near = pyogrio.read_dataframe(
            source, layer="EvacuationSite", bbox=(139.57, 35.62, 139.575, 35.63)
        )
        assert list(near["id"]) == ["urn:ngsi-ld:EvacuationSite:132195-0002"]
        # asked in JGD2011, GDAL gets latitude-first coordinates and puts them back in x/y
        jgd = pyogrio.read_dataframe(source, layer="EvacuationSite", CRS="EPSG:6668")
        assert jgd.crs.to_epsg() == 6668
        point = jgd.geometry[0]
        assert (point.x, point.y) == pytest.approx((139.5785, 35.6348))


# -- the ogctests checker against a real broker -----------------------------------------------

OGCTESTS = "ogctests==0.1.15"


@pytest.fixture(scope="session")
def ogctests_python() -> Path:
    """A virtualenv with the ogctests checker (its pins clash with ours: httpx<0.28, pytest<9).

    Made once under ``~/.cache/renkei-ogctests`` (``RENKEI_OGCTESTS_HOME``) and reused.
    """
    return package_python(OGCTESTS)


@pytest.mark.ogctests
def test_ogctests_core_suite_passes(ogctests_python: Path, tmp_path: Path) -> None:
    report = tmp_path / "ogctests.xml"
    with broker(tmp_path / "hub.db") as url:
        sample = sample_entities()  # the demo's data: points, polygons, sensors, readings
        r = httpx.post(f"{url}/ngsi-ld/v1/entityOperations/upsert", json=sample, timeout=30)
        assert r.status_code in (201, 204), r.text
        # rootdir/confcutdir at the package, so its own conftest (the HTTP client) is loaded
        code = (
            "import os, sys, ogctests\n"
            "from ogctests.main import run_ogctests\n"
            "pkg = os.path.dirname(ogctests.__file__)\n"
            "run_ogctests('features/core', sys.argv[1], ['--junit-xml=' + sys.argv[2], "
            "'--rootdir=' + pkg, '--confcutdir=' + pkg, '-p', 'no:cacheprovider', '-q'])\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        run = subprocess.run(
            [str(ogctests_python), "-c", code, f"{url}/ogc", str(report)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=env,
        )
    assert report.exists(), run.stdout + run.stderr
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    assert suite is not None
    failed = [
        f"{case.get('name')}: {(bad.get('message') or '')[:300]}"
        for case in suite.iter("testcase")
        for bad in case
        if bad.tag in ("failure", "error", "skipped")
    ]
    assert failed == [], "\n".join(failed)
    assert int(suite.get("tests", "0")) >= 29  # the whole core suite ran
