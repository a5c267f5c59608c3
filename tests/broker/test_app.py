"""The application's one way in: trailing slashes, and every request through the routes'
declared dependencies (so a check added as a dependency, like access control, covers
create and retrieve as it covers every other operation)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from broker.api import deps
from broker.app import create_app
from broker.errors import BadRequestData
from broker.settings import Settings
from tests.conftest import JSON, building

E = "/ngsi-ld/v1/entities"


def test_a_trailing_slash_names_the_same_resource(client: TestClient) -> None:
    eid = "urn:ngsi-ld:Building:komae"
    r = client.post(
        f"{E}/", json=building(eid, name={"type": "Property", "value": "狛江市役所"}), headers=JSON
    )
    assert r.status_code == 201, r.text
    assert client.get(f"{E}/{eid}/").json()["id"] == eid
    assert [e["id"] for e in client.get(f"{E}/", params={"type": "Building"}).json()] == [eid]
    assert client.get("/ngsi-ld/v1/types/").status_code == 200


@pytest.fixture
def guarded(settings: Settings) -> Iterator[TestClient]:
    """The broker with the tenant dependencies replaced by one that refuses everything."""
    app = create_app(settings)

    async def refuse() -> str:
        raise BadRequestData("refused by the tenant dependency")

    with TestClient(app) as c:
        r = c.post(E, json=building(), headers=JSON)
        assert r.status_code == 201
        app.dependency_overrides[deps.tenant] = refuse
        app.dependency_overrides[deps.tenant_only] = refuse
        yield c


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", E),  # create
        ("get", f"{E}/urn:ngsi-ld:Building:1"),  # retrieve
        ("get", f"{E}?type=Building"),
        ("patch", f"{E}/urn:ngsi-ld:Building:1/attrs"),
        ("delete", f"{E}/urn:ngsi-ld:Building:1"),
        ("post", "/ngsi-ld/v1/entityOperations/upsert"),
        ("get", "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Building:1"),
        ("get", "/ngsi-ld/v1/subscriptions"),
        ("get", "/ngsi-ld/v1/jsonldContexts"),
    ],
)
def test_no_operation_bypasses_the_routes_dependencies(
    guarded: TestClient, method: str, url: str
) -> None:
    body = [building()] if "entityOperations" in url else building()
    r = guarded.request(method, url, json=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "refused by the tenant dependency"
    # the entity is untouched
    guarded.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert guarded.get(f"{E}/urn:ngsi-ld:Building:1").json()["name"]["value"] == "Komae City Hall"
