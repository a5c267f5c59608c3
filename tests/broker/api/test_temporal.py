"""The temporal API over HTTP: history recorded by ordinary writes and by the temporal API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import JSON, make_settings

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
SENSOR = "urn:ngsi-ld:AirQualityObserved:komae-1"


def reading(no2: float, at: str, **extra: Any) -> dict[str, Any]:
    return {"NO2": {"type": "Property", "value": no2, "observedAt": at, **extra}}


def sensor(no2: float = 20.0, at: str = "2026-11-01T00:00:00Z") -> dict[str, Any]:
    return {
        "id": SENSOR,
        "type": "AirQualityObserved",
        **reading(no2, at),
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.58, 35.63]},
        },
    }


def values(body: dict[str, Any], attr: str = "NO2") -> list[Any]:
    return [i["value"] for i in body[attr]]


def test_ordinary_writes_build_the_history(client: TestClient) -> None:
    assert client.post(E, json=sensor(), headers=JSON).status_code == 201
    for n, at in ((25.5, "2026-11-01T01:00:00Z"), (31.0, "2026-11-01T02:00:00Z")):
        r = client.patch(f"{E}/{SENSOR}/attrs", json=reading(n, at), headers=JSON)
        assert r.status_code == 204
    # a write that changes nothing else leaves the location's history as it was
    body = client.get(f"{T}/{SENSOR}").json()
    assert (body["id"], body["type"]) == (SENSOR, "AirQualityObserved")
    assert values(body) == [20.0, 25.5, 31.0]
    assert [i["observedAt"] for i in body["NO2"]] == [
        "2026-11-01T00:00:00Z",
        "2026-11-01T01:00:00Z",
        "2026-11-01T02:00:00Z",
    ]
    assert all(i["instanceId"].startswith("urn:") for i in body["NO2"])
    assert len(body["location"]) == 1
    assert "createdAt" not in body["NO2"][0]
    # current state is the latest reading
    assert client.get(f"{E}/{SENSOR}").json()["NO2"]["value"] == 31.0


def test_time_range_last_n_and_temporal_values(client: TestClient) -> None:
    client.post(E, json=sensor(10, "2026-11-01T00:00:00Z"), headers=JSON)
    for i in range(1, 6):
        client.patch(
            f"{E}/{SENSOR}/attrs", json=reading(10 + i, f"2026-11-01T0{i}:00:00Z"), headers=JSON
        )
    q = "timerel=between&timeAt=2026-11-01T01:00:00Z&endTimeAt=2026-11-01T04:00:00Z"
    assert values(client.get(f"{T}/{SENSOR}?{q}&attrs=NO2").json()) == [11, 12, 13]
    body = client.get(f"{T}/{SENSOR}?timerel=before&timeAt=2026-11-01T02:00:00Z").json()
    assert values(body) == [10, 11]  # before is strict
    assert "location" not in body  # no observedAt: its time is when it was written (now)
    assert values(client.get(f"{T}/{SENSOR}?lastN=2&attrs=NO2").json()) == [14, 15]
    simplified = client.get(f"{T}/{SENSOR}?options=temporalValues&attrs=NO2&lastN=2").json()
    assert simplified["NO2"] == {
        "type": "Property",
        "values": [[14, "2026-11-01T04:00:00Z"], [15, "2026-11-01T05:00:00Z"]],
    }


def test_query_by_type_selects_entities_with_instances_in_the_range(client: TestClient) -> None:
    client.post(E, json=sensor(50, "2026-10-01T00:00:00Z"), headers=JSON)
    other = {**sensor(5, "2026-11-10T00:00:00Z"), "id": "urn:ngsi-ld:AirQualityObserved:komae-2"}
    client.post(E, json=other, headers=JSON)
    r = client.get(
        f"{T}?type=AirQualityObserved&attrs=NO2&timerel=after&timeAt=2026-11-01T00:00:00Z"
    )
    assert r.status_code == 200
    assert [e["id"] for e in r.json()] == ["urn:ngsi-ld:AirQualityObserved:komae-2"]
    # q selects entities on their evolution; all their instances come back
    r = client.get(f"{T}?type=AirQualityObserved&q=NO2>40&attrs=NO2")
    assert [e["id"] for e in r.json()] == [SENSOR]
    # POST form with a temporalQ
    r = client.post(
        "/ngsi-ld/v1/temporal/entityOperations/query",
        json={
            "type": "Query",
            "entities": [{"type": "AirQualityObserved"}],
            "attrs": ["NO2"],
            "temporalQ": {"timerel": "before", "timeAt": "2026-11-01T00:00:00Z"},
        },
        headers=JSON,
    )
    assert r.status_code == 200
    assert [e["id"] for e in r.json()] == [SENSOR]
    # a query must select by type (or attrs, q, geo)
    r = client.get(f"{T}?id={SENSOR}&timerel=after&timeAt=2026-01-01T00:00:00Z")
    assert r.status_code == 400


def test_deletions_are_recorded(client: TestClient) -> None:
    client.post(E, json=sensor(), headers=JSON)
    assert client.delete(f"{E}/{SENSOR}/attrs/NO2").status_code == 204
    body = client.get(f"{T}/{SENSOR}?timeproperty=deletedAt").json()
    (deleted,) = body["NO2"]
    assert deleted["value"] == "urn:ngsi-ld:null"
    assert "deletedAt" in deleted
    # the value history stays; deleting the entity keeps the history too
    assert values(client.get(f"{T}/{SENSOR}?attrs=NO2").json()) == [20.0]
    assert client.delete(f"{E}/{SENSOR}").status_code == 204
    assert client.get(f"{T}/{SENSOR}").status_code == 200
    assert client.delete(f"{T}/{SENSOR}").status_code == 204
    assert client.get(f"{T}/{SENSOR}").status_code == 404


def test_deleting_the_temporal_representation_deletes_the_entity(client: TestClient) -> None:
    client.post(E, json=sensor(), headers=JSON)
    assert client.delete(f"{T}/{SENSOR}").status_code == 204
    assert client.get(f"{E}/{SENSOR}").status_code == 404
    assert client.get(f"{T}/{SENSOR}").status_code == 404
    assert client.delete(f"{T}/{SENSOR}").status_code == 404


def test_temporal_create_upsert_and_instance_edits(client: TestClient) -> None:
    body = {
        "id": SENSOR,
        "type": "AirQualityObserved",
        "NO2": [
            {"type": "Property", "value": 12, "observedAt": "2026-11-01T00:00:00Z"},
            {"type": "Property", "value": 14, "observedAt": "2026-11-01T00:10:00Z"},
            {
                "type": "Property",
                "value": 99,
                "observedAt": "2026-11-01T00:05:00Z",
                "datasetId": "urn:ngsi-ld:Dataset:raw",
            },
        ],
    }
    r = client.post(T, json=body, headers=JSON)
    assert (r.status_code, r.content) == (201, b"")
    # the current state holds the latest instance of each datasetId
    current = client.get(f"{E}/{SENSOR}").json()["NO2"]
    assert sorted((i["value"], i.get("datasetId")) for i in current) == [
        (14, None),
        (99, "urn:ngsi-ld:Dataset:raw"),
    ]
    # the same observation sent again replaces the instance; new ones are added
    again = {
        "id": SENSOR,
        "type": "AirQualityObserved",
        "NO2": [
            {"type": "Property", "value": 13, "observedAt": "2026-11-01T00:10:00Z"},
            {"type": "Property", "value": 15, "observedAt": "2026-11-01T00:20:00Z"},
        ],
    }
    assert client.post(T, json=again, headers=JSON).status_code == 204
    got = client.get(f"{T}/{SENSOR}").json()["NO2"]
    assert [(i["value"], i.get("datasetId")) for i in got] == [
        (12, None),
        (99, "urn:ngsi-ld:Dataset:raw"),
        (13, None),
        (15, None),
    ]
    first = got[0]["instanceId"]
    r = client.patch(
        f"{T}/{SENSOR}/attrs/NO2/{first}",
        json={"type": "Property", "value": 11, "observedAt": "2026-11-01T00:00:00Z"},
        headers=JSON,
    )
    assert r.status_code == 204
    got = client.get(f"{T}/{SENSOR}").json()["NO2"]
    assert (got[0]["value"], got[0]["instanceId"]) == (11, first)
    assert client.delete(f"{T}/{SENSOR}/attrs/NO2/{first}").status_code == 204
    assert client.delete(f"{T}/{SENSOR}/attrs/NO2/{first}").status_code == 404
    assert client.delete(f"{T}/{SENSOR}/attrs/NO2/notAUri").status_code == 400
    # deleteAll=false removes the default instances only; datasetId=... that dataset
    assert client.delete(f"{T}/{SENSOR}/attrs/NO2?deleteAll=false").status_code == 204
    got = client.get(f"{T}/{SENSOR}").json()["NO2"]
    assert [i.get("datasetId") for i in got] == ["urn:ngsi-ld:Dataset:raw"]
    frag = {"PM25": [{"type": "Property", "value": 7, "observedAt": "2026-11-01T00:00:00Z"}]}
    assert client.post(f"{T}/{SENSOR}/attrs", json=frag, headers=JSON).status_code == 204
    assert values(client.get(f"{T}/{SENSOR}").json(), "PM25") == [7]
    missing = "urn:ngsi-ld:AirQualityObserved:none"
    assert client.post(f"{T}/{missing}/attrs", json=frag, headers=JSON).status_code == 404


def test_aggregated_values_per_period(client: TestClient) -> None:
    instances = [
        {"type": "Property", "value": v, "observedAt": at}
        for v, at in (
            (10, "2026-11-01T00:00:00Z"),
            (20, "2026-11-01T12:00:00Z"),
            (40, "2026-11-02T06:00:00Z"),
            ("n/a", "2026-11-02T07:00:00Z"),
        )
    ]
    client.post(
        T, json={"id": SENSOR, "type": "AirQualityObserved", "NO2": instances}, headers=JSON
    )
    r = client.get(
        f"{T}/{SENSOR}?options=aggregatedValues&aggrMethods=avg,max,totalCount&aggrPeriodDuration=P1D"
    )
    assert r.status_code == 200
    assert r.json()["NO2"] == {
        "type": "Property",
        "avg": [
            [15.0, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"],
            [40.0, "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"],
        ],
        "max": [
            [20.0, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"],
            [40.0, "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"],
        ],
        "totalCount": [
            [2, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"],
            [2, "2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"],
        ],
    }
    for bad in (
        "options=aggregatedValues&aggrMethods=median",
        "options=aggregatedValues&aggrMethods=avg&aggrPeriodDuration=1day",
        "options=aggregatedValues",
        "timerel=between&timeAt=2026-11-01T00:00:00Z",
        "timerel=after",
        "timerel=soon&timeAt=2026-11-01T00:00:00Z",
        "timeAt=yesterday&timerel=after",
    ):
        r = client.get(f"{T}/{SENSOR}?{bad}")
        assert r.status_code == 400, bad
        assert r.json()["type"] == ERR + "BadRequestData"


def test_too_many_instances_gives_206_with_the_range(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, temporal_max_instances=5))) as client:
        instances = [
            {"type": "Property", "value": i, "observedAt": f"2026-11-01T00:{i:02d}:00Z"}
            for i in range(8)
        ]
        body = {"id": SENSOR, "type": "AirQualityObserved", "NO2": instances}
        client.post(T, json=body, headers=JSON)
        r = client.get(f"{T}/{SENSOR}")
        assert r.status_code == 206
        assert values(r.json()) == [0, 1, 2, 3, 4]
        assert r.headers["content-range"] == "date-time 2026-11-01T00:00:00Z-2026-11-01T00:04:00Z/*"
        r = client.get(f"{T}/{SENSOR}?lastN=6")
        assert r.status_code == 206
        assert values(r.json()) == [3, 4, 5, 6, 7]
        assert r.headers["content-range"] == "date-time 2026-11-01T00:07:00Z-2026-11-01T00:03:00Z/6"
        assert client.get(f"{T}/{SENSOR}?lastN=5").status_code == 200


def test_rejected_write_records_no_history(client: TestClient) -> None:
    client.post(E, json=sensor(), headers=JSON)
    assert client.post(E, json=sensor(99), headers=JSON).status_code == 409
    bad = {"NO2": {"type": "Property", "value": 1, "observedAt": "not a date"}}
    assert client.patch(f"{E}/{SENSOR}/attrs", json=bad, headers=JSON).status_code == 400
    assert values(client.get(f"{T}/{SENSOR}").json()) == [20.0]


def test_batch_upserts_are_recorded(client: TestClient) -> None:
    batch = [
        {**sensor(n, f"2026-11-01T0{n}:00:00Z"), "id": f"urn:ngsi-ld:AirQualityObserved:{k}"}
        for k in range(3)
        for n in (1, 2)
    ]
    for item in batch:
        r = client.post(
            "/ngsi-ld/v1/entityOperations/upsert?options=update", json=[item], headers=JSON
        )
        assert r.status_code in (201, 204)
    r = client.get(f"{T}?type=AirQualityObserved&attrs=NO2&count=true")
    assert r.headers["NGSILD-Results-Count"] == "3"
    assert [values(e) for e in r.json()] == [[1, 2]] * 3


def test_history_can_be_switched_off_per_type(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, history_retention={"Building": 0})
    with TestClient(create_app(settings)) as client:
        client.post(
            E,
            json={"id": "urn:ngsi-ld:Building:1", "type": "Building", "floors": 3},
            headers=JSON,
        )
        client.post(E, json=sensor(), headers=JSON)
        assert client.get(f"{T}/urn:ngsi-ld:Building:1").status_code == 404
        assert client.get(f"{T}/{SENSOR}").status_code == 200


def test_batch_temporal_upsert_keeps_every_instance_and_the_newest_value(
    client: TestClient,
) -> None:
    """Renkei's /temporal/entityOperations/upsert: many entities' instances in one call."""
    op = "/ngsi-ld/v1/temporal/entityOperations/upsert"
    ids = [f"urn:ngsi-ld:AirQualityObserved:狛江-{k}" for k in range(2)]

    def instances(*pairs: tuple[float, str]) -> list[dict[str, Any]]:
        return [reading(v, f"2026-11-01T00:00:0{s}Z")["NO2"] for v, s in pairs]

    batch = [
        {"id": ids[0], "type": "AirQualityObserved", "scope": "/駅前", "NO2": instances((1, "2"))},
        {"id": ids[1], "type": "AirQualityObserved", "NO2": instances((5, "1"), (6, "2"))},
    ]
    assert client.post(op, json=batch, headers=JSON).status_code == 204
    # a later batch with an older measure (out of order) and a newer one; a bad entity
    # is refused alone
    late = [
        {"id": ids[0], "type": "AirQualityObserved", "NO2": instances((0, "1"))},
        {"id": ids[1], "type": "AirQualityObserved", "NO2": instances((7, "3"))},
        {"id": "not a uri", "type": "AirQualityObserved", "NO2": instances((9, "1"))},
    ]
    r = client.post(op, json=late, headers=JSON)
    assert r.status_code == 207
    assert r.json()["success"] == ids
    assert [e["entityId"] for e in r.json()["errors"]] == ["not a uri"]
    first = client.get(f"{E}/{ids[0]}").json()
    assert (first["NO2"]["value"], first["scope"]) == (1, "/駅前")  # the older one did not win
    assert client.get(f"{E}/{ids[1]}").json()["NO2"]["value"] == 7
    assert values(client.get(f"{T}/{ids[0]}").json()) == [0, 1]
    assert values(client.get(f"{T}/{ids[1]}").json()) == [5, 6, 7]
    # the aggregates agree with the instances
    r = client.get(
        f"{T}/{ids[1]}?options=aggregatedValues&aggrMethods=sum,totalCount&aggrPeriodDuration=PT1H"
    )
    assert r.json()["NO2"]["sum"][0][0] == 18
    assert r.json()["NO2"]["totalCount"][0][0] == 3
    # one observation sent again replaces its instance, and the aggregates follow
    again = [{"id": ids[1], "type": "AirQualityObserved", "NO2": instances((8, "3"))}]
    assert client.post(op, json=again, headers=JSON).status_code == 204
    assert values(client.get(f"{T}/{ids[1]}").json()) == [5, 6, 8]
    r = client.get(
        f"{T}/{ids[1]}?options=aggregatedValues&aggrMethods=sum,totalCount&aggrPeriodDuration=PT1H"
    )
    assert (r.json()["NO2"]["sum"][0][0], r.json()["NO2"]["totalCount"][0][0]) == (19, 3)
    assert client.post(op, json=[], headers=JSON).status_code == 400
    assert client.post(op, json={"id": ids[0]}, headers=JSON).status_code == 400
