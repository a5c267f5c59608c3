"""No input yields a 5xx: numeric parameters, query complexity and integers are bounded
with a 400 that states the bound, and what the store itself cannot answer is a 400 too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import make_settings

V1 = "/ngsi-ld/v1"
E = f"{V1}/entities"
T = f"{V1}/temporal/entities"
SENSOR = "urn:ngsi-ld:WaterLevelSensor:多摩川1"
WHEN = "timerel=after&timeAt=2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("bounds"), max_attributes=50)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        body = {
            "id": SENSOR,
            "type": "WaterLevelSensor",
            "水位": [
                {"type": "Property", "value": 1.2, "observedAt": "2026-04-01T09:00:00Z"},
                {"type": "Property", "value": 1.5, "observedAt": "2026-04-01T10:00:00Z"},
            ],
        }
        assert c.post(T, json=body).status_code == 201
        yield c


PICK = "a{" * 500 + "b" + "}" * 500
BIG = "99999999999999999999"
CASES = [
    # (request, a phrase of the 400's detail that names the bound)
    (f"{E}?type=WaterLevelSensor&offset={BIG}", "offset must be an integer from 0 to 2147483647"),
    (f"{E}?type=WaterLevelSensor&offset=²", "offset must be an integer"),
    (f"{E}?type=WaterLevelSensor&limit=-1", "limit must be an integer"),
    (f"{E}?type=WaterLevelSensor&joinLevel={BIG}&join=inline", "joinLevel must be an integer"),
    (f"/ogc/collections/WaterLevelSensor/items?offset={BIG}", "offset must be an integer"),
    (f"{E}?type=WaterLevelSensor&q=" + ";".join(["水位>1"] * 300), "more than 256 terms"),
    (f"{E}?type=WaterLevelSensor&q=" + "|".join(["水位>1"] * 300), "more than 256 terms"),
    (f"{E}?type=WaterLevelSensor&q=" + "(" * 500 + "水位>1" + ")" * 500, "nested deeper"),
    (f"{E}?type=" + "|".join(f"T{i}" for i in range(5000)), "at most 256 types"),
    (f"{E}?type=" + ",".join(f"T{i}" for i in range(300)), "at most 256 types"),
    (f"{E}?type=WaterLevelSensor&scopeQ=" + ";".join(["/狛江"] * 300), "more than 256 terms"),
    (f"{E}?type=WaterLevelSensor&pick={PICK}", "nested deeper than 32"),
    (f"{E}?type=WaterLevelSensor&omit={PICK}", "nested deeper than 32"),
    (f"{E}/{SENSOR}?pick={PICK}", "nested deeper than 32"),
    (f"{T}/{SENSOR}?lastN={BIG}", "lastN must be an integer from 1 to 2147483647"),
    (f"{T}?type=WaterLevelSensor&lastN={BIG}&{WHEN}", "lastN must be an integer"),
    (
        f"{T}/{SENSOR}?options=aggregatedValues&aggrMethods=sum&aggrPeriodDuration=P999999999Y",
        "longer than 10000 years",
    ),
    (
        f"{T}?type=WaterLevelSensor&options=aggregatedValues&aggrMethods=sum"
        f"&aggrPeriodDuration=PT{'9' * 5000}S&{WHEN}",
        "is not an ISO 8601 duration",
    ),
]


@pytest.mark.parametrize(
    ("url", "bound"), CASES, ids=[c[1][:30] + str(i) for i, c in enumerate(CASES)]
)
def test_out_of_bound_parameters_are_400_saying_the_bound(
    hub: TestClient, url: str, bound: str
) -> None:
    r = hub.get(url)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert bound in r.json()["detail"]


def test_a_limit_beyond_the_maximum_stays_too_many_results(hub: TestClient) -> None:
    r = hub.get(f"{E}?type=WaterLevelSensor&limit={BIG}")
    assert r.status_code == 403
    assert r.json()["type"].endswith("TooManyResults")


def test_a_long_period_within_the_calendar_aggregates(hub: TestClient) -> None:
    url = f"{T}/{SENSOR}?options=aggregatedValues&aggrMethods=max&aggrPeriodDuration=P9000Y"
    r = hub.get(url)
    assert r.status_code == 200, r.text
    assert r.json()["水位"]["max"][0][0] == 1.5


def test_what_the_store_cannot_evaluate_is_400(hub: TestClient) -> None:
    # each selector is within bounds; together they exceed SQLite's expression depth
    body = {"type": "Query", "entities": [{"type": f"T{i}"} for i in range(2000)]}
    r = hub.post(f"{V1}/entityOperations/query", json=body)
    assert r.status_code == 400, r.text
    assert "beyond the store's limits" in r.json()["detail"]
    assert hub.get(f"{E}/{SENSOR}").status_code == 200  # and the hub goes on


@pytest.mark.parametrize(
    "number",
    [str(2**63), str(2**64 - 1), str(2**64), str(-(2**63) - 1), str(2**70), "1" + "0" * 300],
    ids=lambda n: n[:24],
)
def test_integers_beyond_64_bits_are_refused_not_rounded(hub: TestClient, number: str) -> None:
    eid = "urn:ngsi-ld:Counter:大きな数"
    r = hub.post(
        E,
        content=f'{{"id": "{eid}", "type": "Counter", "件数": {{"type": "Property", "value": {{"a": [{number}]}}}}}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert "beyond the 64-bit range kept exactly" in r.json()["detail"]
    assert hub.get(f"{E}/{eid}").status_code == 404


def test_64_bit_integers_are_kept_exactly(hub: TestClient) -> None:
    eid = "urn:ngsi-ld:Counter:境界"
    body = {
        "id": eid,
        "type": "Counter",
        "最大": {"type": "Property", "value": 2**63 - 1},
        "最小": {"type": "Property", "value": -(2**63)},
        "識別子": {"type": "Property", "value": "123456789012345678901234567890"},
    }
    assert hub.post(E, json=body).status_code == 201
    got = hub.get(f"{E}/{eid}").json()
    assert got["最大"]["value"] == 2**63 - 1
    assert got["最小"]["value"] == -(2**63)
    assert got["識別子"]["value"] == "123456789012345678901234567890"
    found = hub.get(E, params={"type": "Counter", "q": f"最大=={2**63 - 1}"}).json()
    assert [e["id"] for e in found] == [eid]


def test_max_attributes_counts_instances_and_sub_attributes(hub: TestClient) -> None:
    # the hub above allows 50 in all
    instances = [
        {"type": "Property", "value": i, "datasetId": f"urn:ngsi-ld:Dataset:{i}"} for i in range(51)
    ]
    r = hub.post(E, json={"id": "urn:ngsi-ld:Gauge:多", "type": "Gauge", "水位": instances})
    assert r.status_code == 400
    assert "limit 50" in r.json()["detail"]
    subs = {f"注記{i}": {"type": "Property", "value": i} for i in range(50)}
    r = hub.post(
        E,
        json={
            "id": "urn:ngsi-ld:Gauge:副",
            "type": "Gauge",
            "水位": {"type": "Property", "value": 1, **subs},
        },
    )
    assert r.status_code == 400
    assert "sub-attributes" in r.json()["detail"]
    nested = {"type": "Property", "value": 0}
    for i in range(10):  # 11 in all, within the JSON depth bound
        nested = {"type": "Property", "value": i, f"注記{i}": nested}
    ok = hub.post(E, json={"id": "urn:ngsi-ld:Gauge:可", "type": "Gauge", "水位": nested})
    assert ok.status_code == 201, ok.text
    for eid in ["urn:ngsi-ld:Gauge:多", "urn:ngsi-ld:Gauge:副"]:
        assert hub.get(f"{E}/{eid}").status_code == 404
    # the temporal representation lists many values of one instance: those count once
    history = [
        {"type": "Property", "value": i, "observedAt": f"2026-04-01T{i % 24:02d}:{i // 24:02d}:00Z"}
        for i in range(200)
    ]
    r = hub.post(T, json={"id": "urn:ngsi-ld:Gauge:履歴", "type": "Gauge", "水位": history})
    assert r.status_code == 201, r.text


def test_max_attributes_bounds_what_appends_and_merges_make_of_an_entity(
    hub: TestClient,
) -> None:
    """Each request within the bound may not grow one entity past it (the hub allows 50)."""
    eid = "urn:ngsi-ld:Gauge:積み重ね"

    def instances(start: int, count: int) -> list[dict[str, object]]:
        return [
            {"type": "Property", "value": i, "datasetId": f"urn:ngsi-ld:Dataset:{i}"}
            for i in range(start, start + count)
        ]

    assert hub.post(E, json={"id": eid, "type": "Gauge", "水位": instances(0, 40)}).is_success
    attempts: list[tuple[str, str, object]] = [
        ("POST", f"{E}/{eid}/attrs", {"水位": instances(40, 20)}),
        ("PATCH", f"{E}/{eid}/attrs", {"流量": instances(0, 20)}),
        ("PATCH", f"{E}/{eid}", {"水位": instances(100, 20)}),
        (
            "POST",
            f"{V1}/entityOperations/upsert?options=update",
            [{"id": eid, "type": "Gauge", "流量": instances(0, 20)}],
        ),
    ]
    for method, url, body in attempts:
        r = hub.request(method, url, json=body)
        assert r.status_code in (400, 207), r.text
        problem = r.json() if r.status_code == 400 else r.json()["errors"][0]["error"]
        assert "would hold 60" in problem["detail"]
        assert "limit 50" in problem["detail"]
    kept = hub.get(f"{E}/{eid}").json()
    assert set(kept) == {"id", "type", "水位"}
    assert len(kept["水位"]) == 40
    # changing instances in place, or dropping some, is not growing
    changed = hub.post(f"{E}/{eid}/attrs", json={"水位": instances(0, 10)})
    assert changed.status_code == 204, changed.text
    merged = hub.patch(f"{E}/{eid}", json={"水位": instances(35, 10)})
    assert merged.status_code == 204, merged.text
    assert len(hub.get(f"{E}/{eid}").json()["水位"]) == 45


def test_max_attributes_bounds_ngsi_v2_writes_too(hub: TestClient) -> None:
    """The same bound on /v2 (the hub allows 50 instances and sub-attributes in all):
    metadata are sub-attributes, and appends may not grow an entity past it."""
    many = {f"水位{i}": {"type": "Number", "value": i} for i in range(60)}
    r = hub.post("/v2/entities", json={"id": "水位計多", "type": "Gauge", **many})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "description"}
    assert "limit 50" in r.json()["description"]
    annotated = {
        f"水位{i}": {"type": "Number", "value": i, "metadata": {"単位": {"value": "m"}}}
        for i in range(30)
    }
    r = hub.post("/v2/entities", json={"id": "水位計注", "type": "Gauge", **annotated})
    assert r.status_code == 400, r.text
    first = {f"水位{i}": {"type": "Number", "value": i} for i in range(40)}
    created = hub.post("/v2/entities", json={"id": "水位計", "type": "Gauge", **first})
    assert created.status_code == 201, created.text
    more = {f"流量{i}": {"type": "Number", "value": i} for i in range(20)}
    r = hub.post("/v2/entities/水位計/attrs", json=more)
    assert r.status_code == 400, r.text
    assert "would hold 60" in r.json()["description"]
    assert len(hub.get("/v2/entities/水位計", params={"options": "keyValues"}).json()) == 42
    for eid in ("水位計多", "水位計注"):
        assert hub.get(f"/v2/entities/{eid}").status_code == 404
