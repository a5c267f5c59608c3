"""Transient entities (ETSI GS CIM 009 v1.8.1 clause 4.22, ``expiresAt`` on entities):
"an Entity [...] with an expiresAt [...] shall be automatically deleted" once that time
has passed. Here: it disappears from every read at once (retrieve, query, OGC API -
Features, NGSI v2), is purged in the background, and ``expiresAt`` (a system member) is
shown only with ``options=sysAttrs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.model.entity import now_us
from tests.conftest import JSON, make_settings
from tests.support import eventually

E = "/ngsi-ld/v1/entities"
ID = "urn:ngsi-ld:Shelter:狛江臨時避難所"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, entity_purge_interval=0.2)
    with TestClient(create_app(settings)) as c:
        yield c


def shelter(eid: str, expires: datetime | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": eid,
        "type": "Shelter",
        "name": {"type": "Property", "value": "臨時避難所"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
    }
    if expires is not None:
        body["expiresAt"] = expires.isoformat().replace("+00:00", "Z")
    return body


def visible(client: TestClient, eid: str) -> dict[str, bool]:
    """Where the entity can be read."""
    ogc = client.get("/ogc/collections/Shelter/items").json().get("features", [])
    return {
        "retrieve": client.get(f"{E}/{eid}").status_code == 200,
        "query": any(e["id"] == eid for e in client.get(f"{E}?type=Shelter").json()),
        "ogc": any(f.get("id") == eid for f in ogc),
        "v2": client.get(f"/v2/entities/{eid}").status_code == 200,
    }


def test_expired_entities_leave_every_read_and_are_purged(client: TestClient) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    assert client.post(E, json=shelter(ID, soon), headers=JSON).status_code == 201
    lasting = "urn:ngsi-ld:Shelter:狛江第一小学校"
    assert client.post(E, json=shelter(lasting, None), headers=JSON).status_code == 201
    assert visible(client, ID) == {"retrieve": True, "query": True, "ogc": True, "v2": True}
    # expiresAt is a system member: shown with sysAttrs only
    assert "expiresAt" not in client.get(f"{E}/{ID}").json()
    shown = client.get(f"{E}/{ID}?options=sysAttrs").json()
    assert datetime.fromisoformat(shown["expiresAt"].replace("Z", "+00:00")) == soon
    eventually(
        lambda: not any(visible(client, ID).values()),
        timeout=10,
        what="the expired entity to leave every read",
    )
    assert all(visible(client, lasting).values())
    store = client.app.state.hub.entities.store  # type: ignore[attr-defined]
    portal = client.portal
    assert portal is not None

    def purged() -> bool:
        return bool(portal.call(store.expired_entities, now_us()) == [])

    eventually(purged, timeout=10, what="the background purge")
    # the id is free again
    assert client.post(E, json=shelter(ID, None), headers=JSON).status_code == 201


def test_expires_at_is_checked(client: TestClient) -> None:
    """expiresAt is a DateTime; one in the past would make an entity no read can see."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    for bad in ("明日", 1_800_000_000, past.isoformat()):
        body = {**shelter(ID, None), "expiresAt": bad}
        r = client.post(E, json=body, headers=JSON)
        assert r.status_code == 400, bad
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert client.get(f"{E}/{ID}").status_code == 404


def test_writes_set_and_clear_expires_at(client: TestClient) -> None:
    """A merge (§5.6.17) sets expiresAt or, with NGSI-LD Null, removes it (the entity
    then lasts); a replace (§5.6.18) and a batch upsert take the one they carry;
    attribute updates keep it."""
    later = datetime(2099, 1, 1, tzinfo=UTC)
    assert client.post(E, json=shelter(ID, later), headers=JSON).status_code == 201

    def expires() -> Any:
        return client.get(f"{E}/{ID}?options=sysAttrs").json().get("expiresAt")

    r = client.patch(f"{E}/{ID}", json={"expiresAt": "2098-01-01T00:00:00Z"}, headers=JSON)
    assert r.status_code == 204
    assert expires() == "2098-01-01T00:00:00Z"
    r = client.patch(f"{E}/{ID}/attrs", json={"name": "体育館"}, headers=JSON)
    assert r.status_code == 204
    assert expires() == "2098-01-01T00:00:00Z"
    r = client.patch(f"{E}/{ID}", json={"expiresAt": "urn:ngsi-ld:null"}, headers=JSON)
    assert r.status_code == 204
    assert expires() is None
    body = {k: v for k, v in shelter(ID, later).items() if k != "id"}
    assert client.put(f"{E}/{ID}", json=body, headers=JSON).status_code == 204
    assert expires() == "2099-01-01T00:00:00Z"
    upsert = "/ngsi-ld/v1/entityOperations/upsert"
    assert client.post(upsert, json=[shelter(ID, None)], headers=JSON).status_code == 204
    assert expires() is None
    past = {"expiresAt": "2001-01-01T00:00:00Z"}
    assert client.patch(f"{E}/{ID}", json=past, headers=JSON).status_code == 400
