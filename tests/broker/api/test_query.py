"""Querying entities over HTTP: q-language, geo-queries, scopes, paging, GeoJSON."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.conftest import JSON

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


def sensor(n: int, pm25: float, lon: float, lat: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AirQualityObserved:{n}",
        "type": "AirQualityObserved",
        "pm25": {
            "type": "Property",
            "value": pm25,
            "observedAt": f"2026-11-0{n % 9 + 1}T00:00:00Z",
        },
        "name": {"type": "Property", "value": f"station {n}"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
        **extra,
    }


def load(client: TestClient) -> None:
    # Komae City Hall area: 0.001 degree of latitude is about 111 m
    body = [
        sensor(1, 5.0, 139.5780, 35.6340, scope="/Tokyo/Komae"),
        sensor(2, 12.5, 139.5780, 35.6380, scope="/Tokyo/Komae"),  # ~445 m north
        sensor(3, 30.0, 139.5780, 35.6480, scope="/Tokyo/Chofu"),  # ~1.5 km north
        sensor(4, 18.0, 139.6500, 35.7000),
        {"id": "urn:ngsi-ld:Park:1", "type": "Park", "name": "Nishikawara"},
    ]
    r = client.post("/ngsi-ld/v1/entityOperations/upsert", json=body, headers=JSON)
    assert r.status_code == 201


def ids(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(e["id"].rsplit(":", 1)[1] for e in r.json())


def test_q_language(client: TestClient) -> None:
    load(client)

    def q(text: str) -> list[str]:
        return ids(client.get(E, params={"type": "AirQualityObserved", "q": text}))

    assert q("pm25>10") == ["2", "3", "4"]
    assert q("pm25==10..20") == ["2", "4"]
    assert q("pm25<10|pm25>=30") == ["1", "3"]
    assert q('(pm25>10;pm25<20)|name=="station 1"') == ["1", "2", "4"]
    assert q('name~="station [12]$"') == ["1", "2"]
    assert q("pm25.observedAt>=2026-11-03T00:00:00Z") == ["2", "3", "4"]
    assert q("!nothing;pm25") == ["1", "2", "3", "4"]
    r = client.get(E, params={"type": "AirQualityObserved", "q": "pm25>>5"})
    assert r.status_code == 400
    assert "position 6" in r.json()["detail"]
    r = client.get(E, params={"type": "AirQualityObserved", "q": 'name~="(a)\\1"'})
    assert r.status_code == 400  # backreferences are not linear-time: refused
    assert ids(client.get(E, params={"q": "pm25>25"})) == ["3"]  # q alone is enough


def test_geo_queries(client: TestClient) -> None:
    load(client)
    near = {
        "type": "AirQualityObserved",
        "georel": "near;maxDistance==500",
        "geometry": "Point",
        "coordinates": "[139.578,35.634]",
    }
    assert ids(client.get(E, params=near)) == ["1", "2"]
    assert ids(client.get(E, params={**near, "georel": "near;minDistance==1000"})) == ["3", "4"]
    box = "[[[139.57,35.63],[139.59,35.63],[139.59,35.64],[139.57,35.64],[139.57,35.63]]]"
    within = {
        "type": "AirQualityObserved",
        "georel": "within",
        "geometry": "Polygon",
        "coordinates": box,
    }
    assert ids(client.get(E, params=within)) == ["1", "2"]
    assert ids(client.get(E, params={**within, "georel": "disjoint"})) == ["3", "4"]
    bad = client.get(E, params={**within, "coordinates": "[[[139.57,35.63],[139.59,35.63]]]"})
    assert bad.status_code == 400
    assert (
        client.get(E, params={"type": "AirQualityObserved", "georel": "within"}).status_code == 400
    )


def test_geo_q_parameter_is_an_alias_of_the_four_geo_parameters(client: TestClient) -> None:
    # §4.10 gives the geo-query as georel, geometry, coordinates and geoproperty; clients
    # written for other brokers (ngsildclient) send it whole as geoQ: the same answers
    load(client)
    near = {
        "georel": "near;maxDistance==500",
        "geometry": "Point",
        "coordinates": [139.578, 35.634],
    }
    as_json = {"type": "AirQualityObserved", "geoQ": orjson.dumps(near).decode()}
    assert ids(client.get(E, params=as_json)) == ["1", "2"]
    as_pairs = {
        "type": "AirQualityObserved",
        "geoQ": "georel=near;maxDistance==500&geometry=Point&coordinates=[139.578,35.634]"
        "&geoproperty=location",
    }
    assert ids(client.get(E, params=as_pairs)) == ["1", "2"]
    assert ids(client.get(E, params={"geoQ": as_pairs["geoQ"]})) == ["1", "2"]  # enough alone
    # the same errors as the separate parameters, and not both forms at once
    partial = client.get(E, params={"type": "AirQualityObserved", "geoQ": "georel=within"})
    assert partial.status_code == 400
    assert "missing geometry, coordinates" in partial.json()["detail"]
    both = client.get(E, params={**as_json, "georel": "near;maxDistance==500"})
    assert both.status_code == 400
    assert "geoQ cannot be combined" in both.json()["detail"]
    for bad in ("{not json", "near;maxDistance==500", "colour=赤", ""):
        r = client.get(E, params={"type": "AirQualityObserved", "geoQ": bad})
        assert r.status_code == 400, bad
        assert r.json()["type"] == ERR + "BadRequestData"


def test_scope_query(client: TestClient) -> None:
    load(client)
    assert ids(client.get(E, params={"scopeQ": "/Tokyo/#"})) == ["1", "2", "3"]
    assert ids(client.get(E, params={"scopeQ": "/Tokyo/Komae,/Tokyo/Chofu"})) == ["1", "2", "3"]
    assert ids(client.get(E, params={"scopeQ": "/Tokyo/+", "q": "pm25>20"})) == ["3"]


def test_paging_count_and_limits(client: TestClient) -> None:
    load(client)
    r = client.get(
        E, params={"type": "AirQualityObserved", "limit": 2, "offset": 1, "count": "true"}
    )
    assert r.headers["ngsild-results-count"] == "4"
    assert len(r.json()) == 2
    r = client.get(E, params={"type": "AirQualityObserved", "limit": 5000})
    assert r.status_code == 403
    assert r.json()["type"] == ERR + "TooManyResults"
    assert (
        client.get(E, params={"id": "urn:ngsi-ld:Park:1"}).status_code == 400
    )  # id alone is too little
    assert ids(client.get(E, params={"local": "true"})) == ["1", "1", "2", "3", "4"]


def test_order_by(client: TestClient) -> None:
    load(client)
    r = client.get(E, params={"type": "AirQualityObserved", "orderBy": "pm25;desc"})
    assert [e["pm25"]["value"] for e in r.json()] == [30.0, 18.0, 12.5, 5.0]
    r = client.get(E, params={"type": "AirQualityObserved", "orderBy": "id;desc", "limit": 1})
    assert r.json()[0]["id"] == "urn:ngsi-ld:AirQualityObserved:4"


def test_post_query_and_geojson(client: TestClient) -> None:
    load(client)
    body: dict[str, Any] = {
        "type": "Query",
        "entities": [{"type": "AirQualityObserved"}, {"type": "Park"}],
        "q": 'pm25<15|name=="Nishikawara"',
        "attrs": ["name"],
    }
    r = client.post("/ngsi-ld/v1/entityOperations/query", json=body, headers=JSON)
    assert ids(r) == ["1", "1", "2"]
    assert all(set(e) - {"scope"} == {"id", "type", "name"} for e in r.json())
    body = {
        "type": "Query",
        "entities": [{"type": "AirQualityObserved"}],
        "geoQ": {
            "georel": "near;maxDistance==500",
            "geometry": "Point",
            "coordinates": [139.578, 35.634],
        },
    }
    r = client.post(
        "/ngsi-ld/v1/entityOperations/query?options=keyValues",
        json=body,
        headers={**JSON, "Accept": "application/geo+json"},
    )
    collection = r.json()
    assert collection["type"] == "FeatureCollection"
    assert sorted(f["id"] for f in collection["features"]) == [
        "urn:ngsi-ld:AirQualityObserved:1",
        "urn:ngsi-ld:AirQualityObserved:2",
    ]
    assert collection["features"][0]["geometry"]["type"] == "Point"
    assert (
        client.post(
            "/ngsi-ld/v1/entityOperations/query", json={"type": "X"}, headers=JSON
        ).status_code
        == 400
    )


def test_dataset_id_filter(client: TestClient) -> None:
    client.post(
        E,
        headers=JSON,
        json={
            "id": "urn:ngsi-ld:T:1",
            "type": "T",
            "name": [
                {"type": "Property", "value": "Komae"},
                {"type": "Property", "value": "狛江", "datasetId": "urn:ngsi-ld:Dataset:ja"},
            ],
        },
    )
    r = client.get(
        f"{E}/urn:ngsi-ld:T:1",
        params={"datasetId": "urn:ngsi-ld:Dataset:ja", "options": "keyValues"},
    )
    assert r.json()["name"] == "狛江"
    r = client.get(E, params={"type": "T", "datasetId": "@none", "options": "keyValues"})
    assert r.json()[0]["name"] == "Komae"


def test_order_by_attribute_timestamps(client: TestClient) -> None:
    for n in (1, 2):
        client.post(E, json={"id": f"urn:ngsi-ld:B:{n}", "type": "B", "name": "x"}, headers=JSON)
    client.patch(f"{E}/urn:ngsi-ld:B:1/attrs", json={"name": "z"}, headers=JSON)  # keeps createdAt

    def order(key: str) -> list[str]:
        return [e["id"][-1] for e in client.get(E, params={"type": "B", "orderBy": key}).json()]

    assert order("name.createdAt;desc") == ["2", "1"]
    assert order("name.modifiedAt;desc") == ["1", "2"]
