"""Type and attribute discovery, per tenant, compacted with the request context."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import JSON, building, link

CTX_URL = "http://127.0.0.1:1026/ngsi-ld/v1/jsonldContexts/"


def test_types_and_attributes(client: TestClient) -> None:
    client.post(
        "/ngsi-ld/v1/entityOperations/create",
        headers=JSON,
        json=[
            building("urn:ngsi-ld:Building:1"),
            building(
                "urn:ngsi-ld:Building:2",
                owner={"type": "Relationship", "object": "urn:ngsi-ld:City:Komae"},
            ),
            {"id": "urn:ngsi-ld:Park:1", "type": "Park", "name": "Nishikawara"},
        ],
    )
    client.post(
        "/ngsi-ld/v1/entities",
        headers={**JSON, "NGSILD-Tenant": "chofu"},
        json={"id": "urn:ngsi-ld:Bus:1", "type": "Bus"},
    )
    types = client.get("/ngsi-ld/v1/types").json()
    assert types["type"] == "EntityTypeList"
    assert types["typeList"] == ["Building", "Park"]
    details = client.get("/ngsi-ld/v1/types?details=true").json()
    assert details[0]["attributeNames"] == ["floors", "location", "name", "owner"]
    info = client.get("/ngsi-ld/v1/types/Building").json()
    assert info["entityCount"] == 2
    assert {a["attributeName"]: a["attributeTypes"] for a in info["attributeDetails"]}["owner"] == [
        "Relationship"
    ]
    assert client.get("/ngsi-ld/v1/types/Nothing").status_code == 404
    attrs = client.get("/ngsi-ld/v1/attributes").json()
    assert attrs["attributeList"] == ["floors", "location", "name", "owner"]
    name = client.get("/ngsi-ld/v1/attributes/name").json()
    assert name["attributeCount"] == 3
    assert name["typeNames"] == ["Building", "Park"]
    chofu = client.get("/ngsi-ld/v1/types", headers={"NGSILD-Tenant": "chofu"}).json()
    assert chofu["typeList"] == ["Bus"]


def test_discovery_compacts_with_the_request_context(client: TestClient) -> None:
    location = client.post(
        "/ngsi-ld/v1/jsonldContexts",
        headers=JSON,
        json={"@context": {"Shelter": "https://example.org/Shelter"}},
    ).headers["location"]
    url = "http://127.0.0.1:1026" + location
    client.post(
        "/ngsi-ld/v1/entities",
        headers={**JSON, **link(url)},
        json={"id": "urn:ngsi-ld:S:1", "type": "Shelter"},
    )
    assert client.get("/ngsi-ld/v1/types").json()["typeList"] == ["https://example.org/Shelter"]
    assert client.get("/ngsi-ld/v1/types", headers=link(url)).json()["typeList"] == ["Shelter"]
