"""Temporal pagination (ETSI GS CIM 009 v1.8.1 §6.3.10) with a small instance limit
(``RENKEI_TEMPORAL_MAX_INSTANCES``), for every ``timerel``, with and without ``lastN``,
in every representation, on retrieve, query and the query with a body.

§6.3.10: "If no limits are specified, a default limit is enforced, depending on
implementation specific configurations. For HTTP operations on Temporal Evolution of
Entities, implementations shall use the Partial Content Response (206) as specified by
IETF RFC 7233, clause 4.1, if the implementation is not able to respond with the full
representation at once. In this case, for requests where the parameter lastN is
present, pagination shall happen "backwards" (from the most recent to the least recent
timestamp in the requested time range). For requests without the parameter lastN,
pagination shall happen "forwards" (from the least recent to the most recent timestamp
in the requested time range)." The answer then carries
``Content-Range: date-time <range-start>-<range-end>/<size>``: the range starts where the
requested time range starts in the paging direction (``timeAt`` of after/between going
forwards, ``timeAt`` of before or ``endTimeAt`` of between going backwards, else the
first instance returned), ends at the last instance returned, and ``size`` is ``lastN``
when given, ``*`` otherwise.

The oracle below computes, from the instances written, which ones a page holds and the
range it must announce; the broker must agree on every combination.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.settings import get_settings
from tests.conftest import JSON, make_settings

T = "/ngsi-ld/v1/temporal/entities"
Q = "/ngsi-ld/v1/temporal/entityOperations/query"
SENSOR = "urn:ngsi-ld:大気観測:狛江駅前"
LIMIT = 5
BASE = datetime(2026, 11, 1, tzinfo=UTC)
#: two attributes whose instances interleave: NO2 at :00, PM25 at :30 of minutes 0-7
SERIES = {
    "NO2": [BASE + timedelta(minutes=i) for i in range(8)],
    "PM25": [BASE + timedelta(minutes=i, seconds=30) for i in range(8)],
}
BEFORE = BASE + timedelta(minutes=6, seconds=15)
AFTER = BASE + timedelta(minutes=1, seconds=15)


def z(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("paging"), temporal_max_instances=LIMIT)
    with TestClient(create_app(settings)) as c:
        body: dict[str, Any] = {"id": SENSOR, "type": "大気観測"}
        for attr, times in SERIES.items():
            body[attr] = [
                {"type": "Property", "value": n, "observedAt": z(t)} for n, t in enumerate(times)
            ]
        assert c.post(T, json=body, headers=JSON).status_code == 201
        yield c


TIMERELS: dict[str, dict[str, str]] = {
    "none": {},
    "before": {"timerel": "before", "timeAt": z(BEFORE)},
    "after": {"timerel": "after", "timeAt": z(AFTER)},
    "between": {"timerel": "between", "timeAt": z(AFTER), "endTimeAt": z(BEFORE)},
}


def expected(timerel: str, last_n: int | None) -> tuple[set[tuple[str, str]], str | None]:
    """The (attribute, time) pairs a page holds, and its Content-Range (None: all fit)."""
    lo = AFTER if timerel in ("after", "between") else None
    hi = BEFORE if timerel in ("before", "between") else None
    window = {
        attr: [t for t in times if (lo is None or t > lo) and (hi is None or t < hi)]
        for attr, times in SERIES.items()
    }
    if last_n is not None:
        window = {attr: times[-last_n:] for attr, times in window.items()}
    pairs = sorted(
        ((t, attr) for attr, times in window.items() for t in times), reverse=last_n is not None
    )
    if len(pairs) <= LIMIT:
        return {(a, z(t)) for t, a in pairs}, None
    kept = pairs[:LIMIT]
    if last_n is None:
        start = lo if lo is not None else pairs[0][0]
        size = "*"
    else:
        start = hi if hi is not None else pairs[0][0]
        size = str(last_n)
    return {(a, z(t)) for t, a in kept}, f"date-time {z(start)}-{z(kept[-1][0])}/{size}"


def got_pairs(entity: dict[str, Any], representation: str) -> set[tuple[str, str]]:
    out = set()
    for attr in SERIES:
        if representation == "temporalValues":
            out |= {(attr, t) for _, t in entity.get(attr, {}).get("values", [])}
        else:
            out |= {(attr, i["observedAt"]) for i in entity.get(attr, [])}
    return out


def ask(client: TestClient, how: str, params: dict[str, str]) -> Any:
    if how == "retrieve":
        return client.get(f"{T}/{SENSOR}", params=params)
    if how == "query":
        return client.get(T, params={"type": "大気観測", **params})
    temporal_q = {k: v for k, v in params.items() if k in ("timerel", "timeAt", "endTimeAt")}
    if "lastN" in params:
        temporal_q["lastN"] = params["lastN"]
    rest = {
        k: v for k, v in params.items() if k in ("options", "aggrMethods", "aggrPeriodDuration")
    }
    body = {"type": "Query", "entities": [{"type": "大気観測"}], "temporalQ": temporal_q}
    return client.post(Q, params=rest, json=body, headers=JSON)


@pytest.mark.parametrize("how", ["retrieve", "query", "post"])
@pytest.mark.parametrize("representation", ["normalized", "temporalValues"])
@pytest.mark.parametrize("last_n", [None, 3, 20])
@pytest.mark.parametrize("timerel", list(TIMERELS))
def test_pages_and_their_range(
    client: TestClient, how: str, representation: str, last_n: int | None, timerel: str
) -> None:
    params = dict(TIMERELS[timerel])
    if representation == "temporalValues":
        params["options"] = "temporalValues"
    if last_n is not None:
        params["lastN"] = str(last_n)
    r = ask(client, how, params)
    pairs, content_range = expected(timerel, last_n)
    assert r.status_code == (206 if content_range else 200), r.text
    assert r.headers.get("content-range") == content_range
    body = r.json()
    entity = body if how == "retrieve" else body[0]
    assert got_pairs(entity, representation) == pairs


def expected_periods(timerel: str) -> tuple[list[datetime], str | None]:
    """aggrPeriodDuration=PT1M: the periods (their starts) a page holds, and its
    Content-Range (None: all fit). Periods start at the first instance in the range."""
    lo = AFTER if timerel in ("after", "between") else None
    hi = BEFORE if timerel in ("before", "between") else None
    times = sorted(
        t for ts in SERIES.values() for t in ts if (lo is None or t > lo) and (hi is None or t < hi)
    )
    step = timedelta(minutes=1)
    periods = [times[0] + step * k for k in range((times[-1] - times[0]) // step + 1)]
    if len(periods) <= LIMIT:
        return periods, None
    kept = periods[:LIMIT]
    start = lo if lo is not None else kept[0]
    return kept, f"date-time {z(start)}-{z(kept[-1] + step)}/*"


@pytest.mark.parametrize("how", ["retrieve", "query", "post"])
@pytest.mark.parametrize("timerel", list(TIMERELS))
def test_aggregated_values_page_by_period(client: TestClient, how: str, timerel: str) -> None:
    """aggregatedValues (§4.5.19): each period is one instance of the representation,
    so a page holds the earliest periods whole (an aggregate is never split across
    pages), and the announced range ends where the next page starts."""
    params = {
        **TIMERELS[timerel],
        "options": "aggregatedValues",
        "aggrMethods": "totalCount,max",
        "aggrPeriodDuration": "PT1M",
    }
    r = ask(client, how, params)
    periods, content_range = expected_periods(timerel)
    assert r.status_code == (206 if content_range else 200), r.text
    assert r.headers.get("content-range") == content_range
    body = r.json()
    entity = body if how == "retrieve" else body[0]
    for attr in SERIES:
        assert [
            z(datetime.fromisoformat(p[1].replace("Z", "+00:00")))
            for p in entity[attr]["totalCount"]
        ] == [z(p) for p in periods]
        assert {p[0] for p in entity[attr]["totalCount"]} == {1}  # one instance a minute each


def test_a_client_pages_through_everything_going_forwards(client: TestClient) -> None:
    """Following the ranges (each next request asks for what comes after the announced
    range-end; "after" includes its timeAt, so one second later here) reads every
    instance exactly once."""
    seen: list[tuple[str, str]] = []
    after = BASE - timedelta(seconds=1)
    for _ in range(10):
        r = client.get(f"{T}/{SENSOR}", params={"timerel": "after", "timeAt": z(after)})
        seen += sorted(got_pairs(r.json(), "normalized"), key=lambda p: (p[1], p[0]))
        if r.status_code == 200:
            break
        found = re.fullmatch(r"date-time (\S+Z)-(\S+Z)/\*", r.headers["content-range"])
        assert found is not None
        after = datetime.fromisoformat(found[2].replace("Z", "+00:00")) + timedelta(seconds=1)
    everything = [(a, z(t)) for a, times in SERIES.items() for t in times]
    assert sorted(seen) == sorted(everything)
    assert len(seen) == len(everything)


def test_lastn_beyond_the_limit_with_aggregates_is_refused(client: TestClient) -> None:
    """lastN selects instances, aggregatedValues summarise them: the broker refuses
    the combination rather than guess (BadRequestData)."""
    r = client.get(
        f"{T}/{SENSOR}",
        params={"lastN": "3", "options": "aggregatedValues", "aggrMethods": "sum"},
    )
    assert r.status_code == 400


def test_the_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RENKEI_TEMPORAL_MAX_INSTANCES`` sets the limit; the default holds 10 000."""
    assert get_settings().temporal_max_instances == 10_000
    monkeypatch.setenv("RENKEI_TEMPORAL_MAX_INSTANCES", "7")
    assert get_settings().temporal_max_instances == 7
