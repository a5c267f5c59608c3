"""The analysts' client on the temporal API: paged history, Series, aggregates."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pandas as pd
import pytest

from opendata.client import AsyncClient, Client, aggregated_series, temporal_series
from tests.support import broker

SENSOR = "urn:ngsi-ld:AirQualityObserved:komae-1"


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # a small page size, so reading the whole history takes several pages
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RENKEI_TEMPORAL_MAX_INSTANCES", "5")
        with broker(tmp_path_factory.mktemp("temporal") / "hub.db") as url:
            instances = [
                {"type": "Property", "value": float(i), "observedAt": f"2026-11-01T{i:02d}:30:00Z"}
                for i in range(12)
            ]
            body = {"id": SENSOR, "type": "AirQualityObserved", "NO2": instances}
            r = httpx.post(f"{url}/ngsi-ld/v1/temporal/entities", json=body)
            assert r.status_code == 201, r.text
            yield url


def test_history_is_read_across_pages(hub_url: str) -> None:
    with Client(hub_url) as hub:
        assert httpx.get(f"{hub_url}/ngsi-ld/v1/temporal/entities/{SENSOR}").status_code == 206
        body = hub.temporal(SENSOR, attrs="NO2")
        assert body is not None
        series = temporal_series(body, "NO2")
        assert series.to_list() == [float(i) for i in range(12)]
        assert isinstance(series.index, pd.DatetimeIndex)
        assert str(series.index.tz) == "UTC"
        assert series.index.is_monotonic_increasing
        simplified = hub.temporal(SENSOR, attrs="NO2", options="temporalValues", lastN=3)
        assert simplified is not None
        assert temporal_series(simplified, "NO2").to_list() == [9.0, 10.0, 11.0]
        assert hub.temporal("urn:ngsi-ld:AirQualityObserved:none") is None


def test_aggregates_come_back_as_series(hub_url: str) -> None:
    with Client(hub_url) as hub:
        body = hub.temporal(
            SENSOR,
            attrs="NO2",
            options="aggregatedValues",
            aggrMethods="avg,max",
            aggrPeriodDuration="PT6H",
        )
        assert body is not None
        avg = aggregated_series(body, "NO2", "avg")
        assert avg.to_list() == [2.5, 8.5]
        assert [t.isoformat() for t in avg.index] == [
            "2026-11-01T00:30:00+00:00",
            "2026-11-01T06:30:00+00:00",
        ]
        assert aggregated_series(body, "NO2", "max").to_list() == [5.0, 11.0]
        # hourly: 12 periods, more than a page holds (206): read page by page, whole
        hourly = {"options": "aggregatedValues", "aggrMethods": "max", "aggrPeriodDuration": "PT1H"}
        first = httpx.get(f"{hub_url}/ngsi-ld/v1/temporal/entities/{SENSOR}", params=hourly)
        assert first.status_code == 206
        body = hub.temporal(SENSOR, attrs="NO2", **hourly)
        assert body is not None
        assert aggregated_series(body, "NO2", "max").to_list() == [float(i) for i in range(12)]


@pytest.mark.anyio
async def test_async_client_reads_history_too(hub_url: str) -> None:
    async with AsyncClient(hub_url) as hub:
        body = await hub.temporal(
            SENSOR, attrs="NO2", timerel="after", timeAt="2026-11-01T06:00:00Z"
        )
        assert body is not None
        assert temporal_series(body, "NO2").to_list() == [float(i) for i in range(6, 12)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
