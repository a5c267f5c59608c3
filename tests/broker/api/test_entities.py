"""Entity operations over HTTP, as a client of the API sees them."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.conftest import CORE, JSON, LD, building, link

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


def create(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    r = client.post(E, json=body, headers=headers or JSON)
    assert r.status_code == 201, r.text


def test_create_then_retrieve_normalized(client: TestClient) -> None:
    r = client.post(E, json=building(), headers=JSON)
    assert r.status_code == 201
    assert r.headers["location"] == "/ngsi-ld/v1/entities/urn:ngsi-ld:Building:1"
    assert r.content == b""
    r = client.get(f"{E}/urn:ngsi-ld:Building:1")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert CORE in r.headers["link"]
    assert r.json() == {
        "id": "urn:ngsi-ld:Building:1",
        "type": "Building",
        "name": {"type": "Property", "value": "Komae City Hall"},
        "floors": {"type": "Property", "value": 5, "unitCode": "C62"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
    }


def test_representations(client: TestClient) -> None:
    create(client, building())
    kv = client.get(f"{E}/urn:ngsi-ld:Building:1?options=keyValues").json()
    assert kv["floors"] == 5
    assert kv["location"] == {"type": "Point", "coordinates": [139.578, 35.634]}
    assert client.get(f"{E}/urn:ngsi-ld:Building:1?format=simplified").json() == kv
    concise = client.get(f"{E}/urn:ngsi-ld:Building:1?options=concise").json()
    assert concise["name"] == "Komae City Hall"
    assert concise["floors"] == {"value": 5, "unitCode": "C62"}
    sys = client.get(f"{E}/urn:ngsi-ld:Building:1?options=sysAttrs").json()
    assert sys["createdAt"].endswith("Z")
    assert "modifiedAt" in sys["floors"]
    bad = client.get(f"{E}/urn:ngsi-ld:Building:1?options=keyValues,concise")
    assert bad.status_code == 400


def test_concise_input_is_accepted(client: TestClient) -> None:
    create(
        client,
        {
            "id": "urn:ngsi-ld:Bench:1",
            "type": "Bench",
            "seats": 3,
            "location": {"type": "Point", "coordinates": [139.5, 35.6]},
            "owner": {"object": "urn:ngsi-ld:City:Komae"},
        },
    )
    body = client.get(f"{E}/urn:ngsi-ld:Bench:1").json()
    assert body["seats"] == {"type": "Property", "value": 3}
    assert body["location"]["type"] == "GeoProperty"
    assert body["owner"] == {"type": "Relationship", "object": "urn:ngsi-ld:City:Komae"}


def test_ld_json_carries_context_in_body(client: TestClient) -> None:
    ctx = {"Building": "https://example.org/Building", "name": "https://schema.org/name"}
    create(client, {**building(), "@context": ctx}, LD)
    r = client.get(f"{E}/urn:ngsi-ld:Building:1", headers={"Accept": "application/ld+json"})
    body = r.json()
    assert r.headers["content-type"] == "application/ld+json"
    assert body["@context"] == CORE
    # without the user context, the terms it defined come back as full IRIs
    assert body["type"] == "https://example.org/Building"
    assert "https://schema.org/name" in body


def test_context_rules_on_input(client: TestClient) -> None:
    r = client.post(E, json={**building(), "@context": CORE}, headers=JSON)
    assert r.status_code == 400
    assert r.json()["type"] == ERR + "BadRequestData"
    r = client.post(E, json=building(), headers=LD)
    assert r.status_code == 400
    r = client.post(E, json={**building(), "@context": CORE}, headers={**LD, **link(CORE)})
    assert r.status_code == 400


def test_errors_are_problem_details(client: TestClient) -> None:
    create(client, building())
    r = client.post(E, json=building(), headers=JSON)
    assert r.status_code == 409
    problem = r.json()
    assert problem["type"] == ERR + "AlreadyExists"
    assert problem["title"]
    assert problem["detail"]
    assert problem["title"] != problem["detail"]
    assert client.get(f"{E}/urn:ngsi-ld:Building:404").status_code == 404
    assert client.get(f"{E}/not-a-uri").json()["type"] == ERR + "BadRequestData"
    assert (
        client.post(E, content=b"{not json", headers=JSON).json()["type"] == ERR + "InvalidRequest"
    )
    assert client.post(E, content=b"[]", headers=LD).json()["type"] == ERR + "InvalidRequest"
    assert (
        client.post(E, content=b"<x/>", headers={"Content-Type": "application/xml"}).status_code
        == 415
    )
    r = client.get(f"{E}/urn:ngsi-ld:Building:1", headers={"Accept": "application/xml"})
    assert r.status_code == 406
    r = client.get(f"{E}/urn:ngsi-ld:Building:1?unknownParam=1")
    assert r.status_code == 400
    assert r.json()["type"] == ERR + "InvalidRequest"


def test_invalid_payloads_are_rejected_and_nothing_is_stored(client: TestClient) -> None:
    cases = [
        {"id": "urn:ngsi-ld:X:1"},  # no type
        {"id": "urn:ngsi-ld:X:1", "type": "X", "p": {"type": "Property"}},  # no value
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "p": {"type": "Relationship", "object": "not a uri"},
        },
        {"id": "urn:ngsi-ld:X:1", "type": "X", "p": {"type": "Wrong", "value": 1}},
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "p": {"type": "Property", "value": 1, "observedAt": "yesterday"},
        },
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
            },
        },  # ring not closed
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [200, 10]},
            },
        },  # longitude out of range
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "location": {
                "type": "GeoProperty",
                "value": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                },
            },
        },  # bow tie
        {
            "id": "urn:ngsi-ld:X:1",
            "type": "X",
            "p": [{"type": "Property", "value": 1}, {"type": "Property", "value": 2}],
        },  # two defaults
    ]
    for body in cases:
        r = client.post(E, json=body, headers=JSON)
        assert r.status_code == 400, body
        assert r.json()["type"] == ERR + "BadRequestData"
    assert client.get(f"{E}/urn:ngsi-ld:X:1").status_code == 404


def test_multi_attribute_instances(client: TestClient) -> None:
    create(
        client,
        building(
            speed=[
                {"type": "Property", "value": 55},
                {"type": "Property", "value": 54.5, "datasetId": "urn:ngsi-ld:Dataset:gps"},
            ]
        ),
    )
    speed = client.get(f"{E}/urn:ngsi-ld:Building:1").json()["speed"]
    assert {s.get("datasetId") for s in speed} == {None, "urn:ngsi-ld:Dataset:gps"}
    r = client.delete(f"{E}/urn:ngsi-ld:Building:1/attrs/speed?datasetId=urn:ngsi-ld:Dataset:gps")
    assert r.status_code == 204
    assert client.get(f"{E}/urn:ngsi-ld:Building:1").json()["speed"] == {
        "type": "Property",
        "value": 55,
    }
    assert (
        client.delete(f"{E}/urn:ngsi-ld:Building:1/attrs/speed?datasetId=urn:x:y").status_code
        == 404
    )


def test_append_with_no_overwrite_reports_what_was_kept(client: TestClient) -> None:
    create(client, building())
    r = client.post(
        f"{E}/urn:ngsi-ld:Building:1/attrs?options=noOverwrite",
        headers=JSON,
        json={
            "floors": {"type": "Property", "value": 9},
            "height": {"type": "Property", "value": 21},
        },
    )
    assert r.status_code == 207
    result = r.json()
    assert result["updated"] == ["https://uri.etsi.org/ngsi-ld/default-context/height"]
    assert (
        result["notUpdated"][0]["attributeName"]
        == "https://uri.etsi.org/ngsi-ld/default-context/floors"
    )
    kv = client.get(f"{E}/urn:ngsi-ld:Building:1?options=keyValues").json()
    assert kv["floors"] == 5
    assert kv["height"] == 21
    r = client.post(f"{E}/urn:ngsi-ld:Building:1/attrs", headers=JSON, json={"floors": 9})
    assert r.status_code == 204
    assert client.get(f"{E}/urn:ngsi-ld:Building:1?options=keyValues").json()["floors"] == 9


def test_partial_update_merges_and_null_deletes(client: TestClient) -> None:
    create(client, building())
    r = client.patch(f"{E}/urn:ngsi-ld:Building:1/attrs/floors", headers=JSON, json={"value": 6})
    assert r.status_code == 204
    assert client.get(f"{E}/urn:ngsi-ld:Building:1").json()["floors"] == {
        "type": "Property",
        "value": 6,
        "unitCode": "C62",
    }
    r = client.patch(
        f"{E}/urn:ngsi-ld:Building:1/attrs/floors",
        headers=JSON,
        json={"type": "Relationship", "object": "urn:x:y"},
    )
    assert r.status_code == 400
    assert (
        client.patch(
            f"{E}/urn:ngsi-ld:Building:1/attrs/nothing", headers=JSON, json={"value": 1}
        ).status_code
        == 404
    )
    r = client.patch(
        f"{E}/urn:ngsi-ld:Building:1/attrs/floors", headers=JSON, json={"value": "urn:ngsi-ld:null"}
    )
    assert r.status_code == 204
    assert "floors" not in client.get(f"{E}/urn:ngsi-ld:Building:1").json()


def test_replace_and_merge_entity(client: TestClient) -> None:
    create(client, building())
    created = client.get(f"{E}/urn:ngsi-ld:Building:1?options=sysAttrs").json()["createdAt"]
    r = client.put(
        f"{E}/urn:ngsi-ld:Building:1", headers=JSON, json={"type": "Building", "floors": 7}
    )
    assert r.status_code == 204
    body = client.get(f"{E}/urn:ngsi-ld:Building:1?options=sysAttrs,keyValues").json()
    assert set(body) == {"id", "type", "floors"}
    after = client.get(f"{E}/urn:ngsi-ld:Building:1?options=sysAttrs").json()
    assert after["createdAt"] == created
    assert after["modifiedAt"] > created
    r = client.patch(
        f"{E}/urn:ngsi-ld:Building:1",
        headers={"Content-Type": "application/merge-patch+json"},
        json={"floors": {"value": 8, "unitCode": "C62"}, "roof": "flat"},
    )
    assert r.status_code == 204
    body = client.get(f"{E}/urn:ngsi-ld:Building:1").json()
    assert body["floors"] == {"type": "Property", "value": 8, "unitCode": "C62"}
    assert body["roof"] == {"type": "Property", "value": "flat"}
    assert (
        client.patch(f"{E}/urn:ngsi-ld:Building:2", headers=JSON, json={"roof": "x"}).status_code
        == 404
    )


def test_language_property_and_lang(client: TestClient) -> None:
    create(
        client,
        building(
            name={
                "type": "LanguageProperty",
                "languageMap": {"ja": "狛江市役所", "en": "Komae City Hall"},
            }
        ),
    )
    r = client.get(f"{E}/urn:ngsi-ld:Building:1?lang=ja")
    assert r.json()["name"] == {"type": "Property", "value": "狛江市役所", "lang": "ja"}
    kv = client.get(f"{E}/urn:ngsi-ld:Building:1?lang=fr,en;q=0.8&options=keyValues").json()
    assert kv["name"] == "Komae City Hall"


def test_geojson_feature(client: TestClient) -> None:
    create(client, building())
    r = client.get(
        f"{E}/urn:ngsi-ld:Building:1?options=keyValues", headers={"Accept": "application/geo+json"}
    )
    assert r.headers["content-type"] == "application/geo+json"
    feature = r.json()
    assert feature["type"] == "Feature"
    assert feature["id"] == "urn:ngsi-ld:Building:1"
    assert feature["geometry"] == {"type": "Point", "coordinates": [139.578, 35.634]}
    assert feature["properties"]["floors"] == 5
    r = client.get(
        f"{E}/urn:ngsi-ld:Building:1?geometryProperty=nowhere",
        headers={"Accept": "application/geo+json"},
    )
    assert r.json()["geometry"] is None


def test_pick_omit_and_join(client: TestClient) -> None:
    create(client, {"id": "urn:ngsi-ld:City:Komae", "type": "City", "name": "Komae"})
    create(client, building(locatedIn={"type": "Relationship", "object": "urn:ngsi-ld:City:Komae"}))
    assert client.get(f"{E}/urn:ngsi-ld:Building:1?pick=id,floors&options=keyValues").json() == {
        "id": "urn:ngsi-ld:Building:1",
        "floors": 5,
    }
    assert "name" not in client.get(f"{E}/urn:ngsi-ld:Building:1?omit=name").json()
    assert client.get(f"{E}/urn:ngsi-ld:Building:1?pick=id,locatedAt{{name").status_code == 400
    assert client.get(f"{E}/urn:ngsi-ld:Building:1?pick=unknown").status_code == 404
    inline = client.get(
        f"{E}/urn:ngsi-ld:Building:1?join=inline&options=keyValues&pick=id,locatedIn{{name}}"
    ).json()
    assert inline == {"id": "urn:ngsi-ld:Building:1", "locatedIn": {"name": "Komae"}}
    flat = client.get(f"{E}/urn:ngsi-ld:Building:1?join=flat&options=keyValues").json()
    assert [e["id"] for e in flat] == ["urn:ngsi-ld:Building:1", "urn:ngsi-ld:City:Komae"]


def test_tenants_are_isolated(client: TestClient) -> None:
    create(client, building(), {**JSON, "NGSILD-Tenant": "komae"})
    assert client.get(f"{E}/urn:ngsi-ld:Building:1").status_code == 404
    assert (
        client.get(f"{E}/urn:ngsi-ld:Building:1", headers={"NGSILD-Tenant": "komae"}).status_code
        == 200
    )
    r = client.get(f"{E}/urn:ngsi-ld:Building:1", headers={"NGSILD-Tenant": "chofu"})
    assert r.status_code == 404
    assert r.json()["type"] == ERR + "NonexistentTenant"
    assert (
        client.get(
            f"{E}/urn:ngsi-ld:Building:1", headers={"NGSILD-Tenant": "bad name!"}
        ).status_code
        == 400
    )


def test_delete_entity(client: TestClient) -> None:
    create(client, building())
    assert client.delete(f"{E}/urn:ngsi-ld:Building:1").status_code == 204
    assert client.delete(f"{E}/urn:ngsi-ld:Building:1").status_code == 404


def test_not_built_sections_say_so(client: TestClient) -> None:
    r = client.get("/ngsi-ld/v1/info")
    assert r.status_code == 501
    assert r.json()["type"] == ERR + "OperationNotSupported"


def test_request_bounds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from broker.app import create_app
    from tests.conftest import make_settings

    s = make_settings(tmp_path, max_body_bytes=2000, max_json_depth=6, max_attributes=3)
    with TestClient(create_app(s)) as client:
        big = building(note={"type": "Property", "value": "x" * 3000})
        assert client.post(E, json=big, headers=JSON).status_code == 413
        deep: dict[str, Any] = {"v": 1}
        for _ in range(8):
            deep = {"v": deep}
        r = client.post(
            E,
            content=orjson.dumps(building(deep={"type": "Property", "value": deep})),
            headers=JSON,
        )
        assert r.status_code == 400
        assert "nesting" in r.json()["detail"]
        r = client.post(E, json=building(a=1, b=2), headers=JSON)
        assert r.status_code == 400
        assert "too many attributes" in r.json()["detail"]


def test_purge_entities_and_attributes(client: TestClient) -> None:
    for i in range(3):
        create(client, building(f"urn:ngsi-ld:Building:{i}"))
    create(client, {"id": "urn:ngsi-ld:Park:1", "type": "Park"})
    r = client.delete(f"{E}?id=urn:ngsi-ld:Building:0&keep=name")
    assert r.status_code == 204
    assert set(client.get(f"{E}/urn:ngsi-ld:Building:0").json()) == {"id", "type", "name"}
    assert client.delete(f"{E}?type=Building&drop=floors").status_code == 204
    assert "floors" not in client.get(f"{E}/urn:ngsi-ld:Building:1").json()
    assert client.delete(f"{E}?type=Building&keep=a&drop=b").status_code == 400
    assert client.delete(E).status_code == 400  # nothing selected
    assert client.delete(f"{E}?type=Building").status_code == 204
    assert client.get(f"{E}?type=Building").json() == []
    assert client.get(f"{E}/urn:ngsi-ld:Park:1").status_code == 200


def test_retrieve_selects_by_type(client: TestClient) -> None:
    # §5.7.1 / §6.5.3.1: "type" on retrieve selects the entity by type; an entity of
    # another type is not found
    eid = "urn:ngsi-ld:Building:koganei"
    create(client, building(eid, type="建物", name={"type": "Property", "value": "小金井市役所"}))
    assert client.get(f"{E}/{eid}", params={"type": "建物"}).json()["type"] == "建物"
    assert client.get(f"{E}/{eid}", params={"type": "公園,建物"}).status_code == 200
    missed = client.get(f"{E}/{eid}", params={"type": "公園"})
    assert missed.status_code == 404
    assert missed.json()["type"] == ERR + "ResourceNotFound"
    # a type given as its IRI names the same type
    iri = "https://uri.etsi.org/ngsi-ld/default-context/建物"
    assert client.get(f"{E}/{eid}", params={"type": iri}).status_code == 200
    # the parameter is checked before the look-up, as every parameter is
    assert client.get(f"{E}/{eid}", params={"type": ""}).status_code == 400
    assert client.get(f"{E}/urn:ngsi-ld:建物:なし", params={"type": ""}).status_code == 400
