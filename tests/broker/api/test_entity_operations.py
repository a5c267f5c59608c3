"""Batch operations: per-entity results, one bad entity never blocks the others."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import JSON, LD, building

B = "/ngsi-ld/v1/entityOperations"
E = "/ngsi-ld/v1/entities"


def ids(n: int) -> list[str]:
    return [f"urn:ngsi-ld:Building:{i}" for i in range(n)]


def test_batch_create_reports_each_entity(client: TestClient) -> None:
    r = client.post(f"{B}/create", json=[building(i) for i in ids(3)], headers=JSON)
    assert r.status_code == 201
    assert r.json() == ids(3)
    bad = {"id": "urn:ngsi-ld:Building:9", "type": "Building", "p": {"type": "Property"}}
    r = client.post(
        f"{B}/create",
        json=[building("urn:ngsi-ld:Building:0"), building("urn:ngsi-ld:Building:5"), bad],
        headers=JSON,
    )
    assert r.status_code == 207
    result = r.json()
    assert result["success"] == ["urn:ngsi-ld:Building:5"]
    errors = {e["entityId"]: e["error"]["type"].rsplit("/", 1)[1] for e in result["errors"]}
    assert errors == {
        "urn:ngsi-ld:Building:0": "AlreadyExists",
        "urn:ngsi-ld:Building:9": "BadRequestData",
    }
    assert client.get(f"{E}/urn:ngsi-ld:Building:9").status_code == 404


def test_batch_with_per_entity_contexts(client: TestClient) -> None:
    a = {
        **building("urn:ngsi-ld:Building:a"),
        "@context": {"Building": "https://a.example/Building"},
    }
    b = {
        **building("urn:ngsi-ld:Building:b"),
        "@context": {"Building": "https://b.example/Building"},
    }
    assert client.post(f"{B}/create", json=[a, b], headers=LD).status_code == 201
    assert client.get(f"{E}/urn:ngsi-ld:Building:a").json()["type"] == "https://a.example/Building"
    assert client.get(f"{E}/urn:ngsi-ld:Building:b").json()["type"] == "https://b.example/Building"


def test_upsert_replace_and_update(client: TestClient) -> None:
    r = client.post(f"{B}/upsert", json=[building(i) for i in ids(2)], headers=JSON)
    assert r.status_code == 201
    assert r.json() == ids(2)
    r = client.post(
        f"{B}/upsert", json=[{"id": ids(2)[0], "type": "Building", "floors": 9}], headers=JSON
    )
    assert r.status_code == 204
    replaced = client.get(f"{E}/{ids(2)[0]}?options=keyValues").json()
    assert replaced == {"id": ids(2)[0], "type": "Building", "floors": 9}
    r = client.post(
        f"{B}/upsert?options=update",
        json=[{"id": ids(2)[1], "type": "Building", "floors": 2}],
        headers=JSON,
    )
    assert r.status_code == 204
    updated = client.get(f"{E}/{ids(2)[1]}?options=keyValues").json()
    assert updated["floors"] == 2
    assert updated["name"] == "Komae City Hall"
    r = client.post(
        f"{B}/upsert",
        json=[building("urn:ngsi-ld:Building:new"), building(ids(2)[0])],
        headers=JSON,
    )
    assert r.status_code == 201
    assert r.json() == ["urn:ngsi-ld:Building:new"]


def test_update_merge_and_delete(client: TestClient) -> None:
    client.post(f"{B}/create", json=[building(i) for i in ids(2)], headers=JSON)
    r = client.post(
        f"{B}/update", headers=JSON, json=[{"id": ids(2)[1], "type": "Building", "floors": 4}]
    )
    assert r.status_code == 204
    r = client.post(
        f"{B}/update?options=noOverwrite",
        headers=JSON,
        json=[{"id": ids(2)[0], "type": "Building", "floors": 7, "roof": "flat"}],
    )
    assert r.status_code == 207  # floors was kept: reported, while roof was added
    assert "floors" in r.json()["errors"][0]["error"]["detail"]
    kv = client.get(f"{E}/{ids(2)[0]}?options=keyValues").json()
    assert kv["floors"] == 5
    assert kv["roof"] == "flat"
    r = client.post(
        f"{B}/merge",
        headers=JSON,
        json=[
            {"id": ids(2)[1], "type": "Building", "floors": {"value": 3}},
            {"id": "urn:ngsi-ld:Building:missing", "type": "Building", "floors": 1},
        ],
    )
    assert r.status_code == 207
    assert r.json()["success"] == [ids(2)[1]]
    assert client.get(f"{E}/{ids(2)[1]}").json()["floors"] == {"type": "Property", "value": 3}
    r = client.post(f"{B}/delete", json=[*ids(2), "urn:ngsi-ld:Building:missing"], headers=JSON)
    assert r.status_code == 207
    assert r.json()["success"] == ids(2)
    assert client.post(f"{B}/delete", json=[], headers=JSON).status_code == 400
    assert client.post(f"{B}/create", json={"id": "x"}, headers=JSON).status_code == 400


def test_batch_size_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from broker.app import create_app
    from tests.conftest import make_settings

    with TestClient(create_app(make_settings(tmp_path, max_batch=2))) as client:
        r = client.post(f"{B}/upsert", json=[building(i) for i in ids(3)], headers=JSON)
        assert r.status_code == 400
        assert "at most 2" in r.json()["detail"]
