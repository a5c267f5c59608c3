"""The analysts' client against a real hub holding the Komae sample data."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from shapely.geometry import Point, box

from broker.samples import DISTRICTS_FILE, POPULATION_FILE, sample_entities
from connectors.client import Pager
from opendata import gis
from opendata.client import AsyncClient, BrokerError, Client, query_params
from tests.receiver import Receiver
from tests.support import broker, free_port

AEDS = [e for e in sample_entities() if e["type"] == "AEDLocation"]


def _lonlat(entity: dict[str, object]) -> tuple[float, float]:
    loc = entity["location"]
    assert isinstance(loc, dict)
    lon, lat = loc["value"]["coordinates"]
    return float(lon), float(lat)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("client") / "hub.db") as url:
        with Client(url) as c:
            c.upsert(sample_entities())
        yield url


def test_query_reads_every_page(hub_url: str) -> None:
    with Client(hub_url, page_size=7) as hub:
        ids = [e["id"] for e in hub.query("AEDLocation")]
        assert sorted(ids) == sorted(e["id"] for e in AEDS)
        assert len(set(ids)) == len(AEDS) == 30
        first = [e["id"] for e in hub.query("AEDLocation", limit=10)]
        assert first == ids[:10]
        assert hub.count("AEDLocation") == 30
        assert hub.count("AEDLocation", q="units>1") == sum(
            1 for e in AEDS if e["units"]["value"] > 1
        )


def test_geo_shortcuts_match_distances(hub_url: str) -> None:
    centre = (139.578, 35.634)
    expected = {e["id"] for e in AEDS if _metres(_lonlat(e), centre) <= 800}
    area = box(139.57, 35.63, 139.585, 35.64)
    inside = {e["id"] for e in AEDS if area.contains(Point(_lonlat(e)))}
    assert expected
    assert inside
    with Client(hub_url, page_size=3) as hub:
        near = {e["id"] for e in hub.query("AEDLocation", near=centre, max_distance=800)}
        within = {e["id"] for e in hub.query("AEDLocation", within=area)}
    assert near == expected
    assert within == inside


def test_get_entity_and_errors(hub_url: str) -> None:
    with Client(hub_url) as hub:
        dev = hub.get_entity("urn:ngsi-ld:Device:komae-noise-01", options="keyValues")
        assert dev is not None
        assert dev["controlledProperty"] == "noiseLevel"
        assert hub.get_entity("urn:ngsi-ld:Device:nowhere") is None
        with pytest.raises(BrokerError) as err:
            list(hub.query("AEDLocation", q="units>>1"))
        assert err.value.status == 400


def test_to_geodataframe_has_typed_columns(hub_url: str) -> None:
    with Client(hub_url) as hub:
        readings = hub.to_geodataframe(
            "WaterLevelObserved", q='refDevice=="urn:ngsi-ld:Device:komae-tamagawa-wl-01"'
        )
        devices = hub.to_geodataframe("Device", lang="en")
    assert len(readings) == 48
    assert str(readings.crs) == "EPSG:4326"
    assert readings["waterLevel"].dtype == "float64"
    observed = readings["waterLevel_observedAt"]
    assert isinstance(observed.dtype, pd.DatetimeTZDtype)
    assert str(observed.dtype.tz) == "UTC"
    assert observed.min() == pd.Timestamp("2026-11-20T00:00:00+09:00")
    assert readings.attrs["unitCode"] == {"waterLevel": "MTR"}
    assert set(readings.geom_type) == {"Point"}
    assert "Tamagawa Inokata water level gauge" in set(devices["name"])


def test_load_entities_by_url(hub_url: str) -> None:
    aeds = gis.load_entities(hub_url, "AEDLocation", attrs=["units", "location"])
    assert len(aeds) == 30
    assert aeds["units"].dtype == "int64"
    assert aeds.geometry.x.between(139.55, 139.61).all()


def test_async_client_reads_and_subscribes(hub_url: str) -> None:
    receiver = Receiver()

    async def main() -> None:
        async with AsyncClient(hub_url, tenant="async-test", page_size=2) as hub:
            await hub.upsert(AEDS[:5])
            got = [e["id"] async for e in hub.entities("AEDLocation")]
            assert sorted(got) == sorted(e["id"] for e in AEDS[:5])
            assert await hub.count("AEDLocation") == 5
            frame = await hub.to_geodataframe("AEDLocation", limit=3)
            assert len(frame) == 3
            sub = await hub.subscribe_to(
                "AEDLocation", receiver.url, watched_attributes=["units"], attrs=["units"]
            )
            await hub.merge([{"id": AEDS[0]["id"], "type": "AEDLocation", "units": {"value": 9}}])
            notes = await asyncio.to_thread(receiver.wait, 1)
            data = notes[-1][1]["data"]
            assert data[0]["id"] == AEDS[0]["id"]
            assert data[0]["units"]["value"] == 9
            await hub.unsubscribe(sub)
            with pytest.raises(BrokerError):
                await hub.unsubscribe(sub)

    try:
        asyncio.run(main())
    finally:
        receiver.close()


def test_sync_subscribe_helper(hub_url: str) -> None:
    receiver = Receiver()
    try:
        with Client(hub_url, tenant="sync-sub") as hub:
            sub = hub.subscribe_to(
                "Device", receiver.url, q='deviceState=="error"', description="故障 / faults"
            )
            hub.upsert(
                [
                    {"id": "urn:ngsi-ld:Device:a", "type": "Device", "deviceState": "ok"},
                    {"id": "urn:ngsi-ld:Device:b", "type": "Device", "deviceState": "error"},
                ]
            )
            notes = receiver.wait(1)
            assert [e["id"] for e in notes[0][1]["data"]] == ["urn:ngsi-ld:Device:b"]
            hub.unsubscribe(sub)
    finally:
        receiver.close()


def test_query_params_shapes() -> None:
    assert query_params("AEDLocation", attrs=["a", "b"], near=(139.5, 35.6), max_distance=250) == {
        "type": "AEDLocation",
        "attrs": "a,b",
        "georel": "near;maxDistance==250",
        "geometry": "Point",
        "coordinates": "[139.5,35.6]",
    }
    assert (
        query_params(["A", "B"], within={"type": "Polygon", "coordinates": [[[0, 0]]]})[
            "coordinates"
        ]
        == "[[[0,0]]]"
    )
    with pytest.raises(ValueError, match="one geo-query"):
        query_params("A", near=(0, 0), within=box(0, 0, 1, 1))
    with pytest.raises(ValueError, match="max_distance"):
        query_params("A", max_distance=5)
    with pytest.raises(ValueError, match="georel, geometry and coordinates"):
        query_params("A", georel="near;maxDistance==5")


def test_pager_stops_on_short_page_count_and_limit() -> None:
    pager = Pager({"type": "A", "offset": 2}, page_size=3, limit=5)
    assert pager.next_params() == {"type": "A", "limit": 3, "offset": 2}
    pager.feed([{}] * 3, "100")
    assert pager.next_params() == {"type": "A", "limit": 2, "offset": 5}
    pager.feed([{}] * 2)
    assert pager.next_params() is None

    counted = Pager({}, page_size=2)
    counted.feed([{}] * 2, "2")
    assert counted.next_params() is None
    short = Pager({}, page_size=2)
    short.feed([{}])
    assert short.next_params() is None


def test_unreachable_hub_is_reported() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=0) as hub:
        assert not hub.health()
        with pytest.raises(BrokerError, match="not reachable"):
            list(hub.query("AEDLocation"))


def test_aggregate_layer_is_served_by_ogc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_url: str
) -> None:
    """District indicators computed from the hub, published back as an /ogc collection."""
    districts = gis.read_districts(DISTRICTS_FILE, key="KEY_CODE")
    aeds = gis.load_entities(hub_url, "AEDLocation")
    layer = gis.district_indicators(
        districts,
        aeds,
        key="KEY_CODE",
        prefix="aed",
        population=gis.read_population(POPULATION_FILE),
    )
    layers = tmp_path / "layers"
    gis.publish_layer(
        layer,
        layers,
        "aed_per_district",
        id_column="KEY_CODE",
        title="町丁目別 AED 設置状況 / AEDs per district",
    )
    with pytest.raises(ValueError, match="ASCII"):
        gis.publish_layer(layer, layers, "町丁目")
    monkeypatch.setenv("RENKEI_OGC_LAYERS_DIR", str(layers))
    with broker(tmp_path / "ogc.db") as url:
        coll = httpx.get(f"{url}/ogc/collections/layer~aed_per_district", timeout=10)
        assert coll.status_code == 200
        assert coll.json()["title"] == "町丁目別 AED 設置状況 / AEDs per district"
        items = httpx.get(
            f"{url}/ogc/collections/layer~aed_per_district/items", params={"limit": 50}, timeout=10
        ).json()
    by_code = {f["id"]: f["properties"] for f in items["features"]}
    assert len(by_code) == len(districts)
    assert by_code["13219012001"]["aed_count"] == 0
    assert sum(p["aed_count"] for p in by_code.values()) == len(aeds)
    assert by_code["13219007001"]["aed_per_1000"] == pytest.approx(5 / 8120 * 1000)
