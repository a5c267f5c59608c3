"""Entity maps on one hub (ETSI GS CIM 009 v1.8.1/v1.9.1): the ``entityMap`` and
``entityMapLifetime`` query parameters and the ``NGSILD-EntityMap`` header of Query
Entities (Table 6.4.3.2-1/-2/-3, clause 5.7.2.4), pagination with a map (clause
5.5.9.3), and ``/entityMaps/{id}`` (clauses 5.14.1-5.14.3). The distributed part, with
two hubs, is in tests/broker/federation/test_entity_maps.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.broker.api.test_access import auth_yaml, key
from tests.conftest import JSON, make_settings
from tests.support import eventually
from tests.support_oidc import oidc_issuer

E = "/ngsi-ld/v1/entities"
M = "/ngsi-ld/v1/entityMaps"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
P = "urn:ngsi-ld:駐車場:渋谷-"


def parking(n: int, free: int = 10) -> dict[str, Any]:
    return {
        "id": f"{P}{n}",
        "type": "駐車場",
        "名称": {"type": "Property", "value": f"渋谷第{n}駐車場"},
        "空き台数": {"type": "Property", "value": free},
    }


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, entity_map_max_count=3))) as c:
        r = c.post(
            "/ngsi-ld/v1/entityOperations/create",
            json=[parking(n) for n in range(1, 7)],
            headers=JSON,
        )
        assert r.status_code == 201, r.text
        yield c


def ids(response: Any) -> list[str]:
    return [e["id"] for e in response.json()]


def page(client: TestClient, where: str | None, **params: Any) -> Any:
    headers = {"NGSILD-EntityMap": where} if where else {}
    return client.get(E, params={"type": "駐車場", **params}, headers=headers)


def test_a_query_with_entityMap_true_makes_a_map_and_names_it(hub: TestClient) -> None:
    """Table 6.4.3.2-1: "entityMap Boolean: If true, the location of the EntityMap used
    in the operation is returned in the response". Table 6.4.3.2-3: "201 Created (in
    case an EntityMap has been (re)created)" and "the HTTP response shall include an
    "NGSILD-EntityMap" HTTP header that contains the resource URI of the EntityMap
    resource used in the operation". Clause 5.2.39: entityMap holds "every
    CSourceRegistration id which is relevant ... The key "@none" shall be used to refer
    to an Entity that is held locally"."""
    r = page(hub, None, entityMap="true", limit=2)
    assert r.status_code == 201, r.text
    assert ids(r) == [f"{P}1", f"{P}2"]
    where = r.headers["NGSILD-EntityMap"]
    assert where.startswith(f"{M}/urn:ngsi-ld:EntityMap:")
    got = hub.get(where)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["type"] == "EntityMap"
    assert where.endswith(body["id"])
    assert body["entityMap"] == {f"{P}{n}": ["@none"] for n in range(1, 7)}
    assert body["linkedMaps"] == {}
    assert datetime.fromisoformat(body["expiresAt"]).timestamp() > time.time()
    # without the flag or the header, no map is made and none is named
    plain = page(hub, None, limit=2)
    assert plain.status_code == 200
    assert "NGSILD-EntityMap" not in plain.headers


def test_pages_come_from_the_entities_fixed_when_the_map_was_made(hub: TestClient) -> None:
    """Clause 5.5.9.3: "the set of Entities considered for the result is fixed with the
    initial query creating the Entity map. However, the Entity information itself can be
    dynamic, so filters shall be rechecked before returning results ... Entities not or
    no longer fitting the query shall be removed from the Entity map during pagination.
    Pages shall always be filled to the maximum, as long as Entities are available."
    Table 6.4.3.2-2: "NGSILD-EntityMap: If present, the EntityMap supplied is used for
    determining the set of Entities requested during the query operation"."""
    first = page(hub, None, entityMap="true", limit=2, count="true")
    where = first.headers["NGSILD-EntityMap"]
    assert first.headers["NGSILD-Results-Count"] == "6"
    # a new match after the map was made is not in it; a deleted one leaves it
    assert hub.post(E, json=parking(0), headers=JSON).status_code == 201
    assert hub.delete(f"{E}/{P}3").status_code == 204
    # 渋谷-5 no longer fits q: rechecked on the page, and removed from the map
    r = hub.patch(f"{E}/{P}5/attrs", json={"空き台数": {"value": 0}}, headers=JSON)
    assert r.status_code == 204, r.text
    second = page(hub, where, limit=2, offset=2, count="true", q="空き台数>0")
    assert second.status_code == 200, second.text  # the map was used, not made
    assert second.headers["NGSILD-EntityMap"] == where
    assert ids(second) == [f"{P}4", f"{P}6"]  # filled to the maximum
    assert second.headers["NGSILD-Results-Count"] == "4"
    held = hub.get(where).json()["entityMap"]
    assert sorted(held) == [f"{P}1", f"{P}2", f"{P}4", f"{P}6"]
    # the first page is still the first page; the last one is past the end
    assert ids(page(hub, where, limit=2, q="空き台数>0")) == [f"{P}1", f"{P}2"]
    assert ids(page(hub, where, limit=2, offset=4, q="空き台数>0")) == []
    # the request's ids narrow the map's entities without dropping the others
    only = page(hub, where, id=f"{P}6,{P}0")
    assert ids(only) == [f"{P}6"]
    assert len(hub.get(where).json()["entityMap"]) == 4


def test_a_map_that_is_gone_is_made_again(hub: TestClient) -> None:
    """Clause 5.7.2.4: "If the location of a resource holding an EntityMap of matching
    Entity registrations is present it shall be retrieved: If the resource cannot be
    found, or the data has expired, a new EntityMap shall be created"."""
    r = page(hub, f"{M}/urn:ngsi-ld:EntityMap:{quote('どこにもない')}", limit=1)
    assert r.status_code == 201, r.text
    made = r.headers["NGSILD-EntityMap"]
    assert quote("どこにもない") not in made
    # a bare id works as well as the location; an expired map is gone
    assert page(hub, made.rsplit("/", 1)[1], limit=1).status_code == 200
    r = hub.patch(made, json={"expiresAt": "2000-01-01T00:00:00Z"}, headers=JSON)
    assert r.status_code == 204, r.text
    assert hub.get(made).status_code == 404
    again = page(hub, made, limit=1)
    assert again.status_code == 201
    assert again.headers["NGSILD-EntityMap"] != made


def test_retrieve_update_and_delete_a_map(hub: TestClient) -> None:
    """Clause 5.14.1.4: "If the Entity ID is not present or it is not a valid URI, then
    an error of type BadRequestData shall be raised. If the NGSI-LD endpoint does not
    know about a matching EntityMap for the EntityMap ID, then an error of type
    ResourceNotFound shall be raised." Clause 5.14.2.4: "Perform an update operation on
    the target EntityMap using the fields specified within then JSON-LD document. Any
    provided output-only fields shall be ignored." Clause 5.14.3.4: "The EntityMap
    shall be removed from the broker's internal storage, or memory"."""
    where = page(hub, None, entityMap="true", limit=1).headers["NGSILD-EntityMap"]
    for bad in (f"{M}/駐車場", f"{M}/not%20a%20uri"):
        for method in ("GET", "PATCH", "DELETE"):
            r = hub.request(method, bad, json={} if method == "PATCH" else None)
            assert r.status_code == 400, (method, bad, r.text)
            assert r.json()["type"] == ERR + "BadRequestData"
    unknown = f"{M}/urn:ngsi-ld:EntityMap:知らない"
    assert hub.get(unknown).json()["type"] == ERR + "ResourceNotFound"
    assert hub.patch(unknown, json={"expiresAt": "2030-01-01T00:00:00Z"}).status_code == 404
    assert hub.delete(unknown).status_code == 404

    before = hub.get(where).json()
    later = datetime.fromtimestamp(time.time() + 3600).astimezone().isoformat()
    r = hub.patch(
        where,
        json={"expiresAt": later, "entityMap": {"urn:ngsi-ld:x:1": ["@none"]}, "id": "urn:x"},
        headers=JSON,
    )
    assert r.status_code == 204, r.text
    after = hub.get(where).json()
    assert after["entityMap"] == before["entityMap"]  # output-only: ignored
    assert after["id"] == before["id"]
    assert (
        abs(
            datetime.fromisoformat(after["expiresAt"]).timestamp()
            - datetime.fromisoformat(later).timestamp()
        )
        < 0.01
    )
    for body in ({"expiresAt": "明日"}, {"色": "赤"}, ["expiresAt"]):
        r = hub.patch(where, json=body, headers=JSON)
        assert r.status_code == 400, r.text
    assert hub.get(where).json() == after  # a refused update changes nothing

    ld = hub.get(where, headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"].startswith("application/ld+json")
    assert "@context" in ld.json()
    assert hub.delete(where).status_code == 204
    assert hub.get(where).status_code == 404
    assert hub.delete(where).status_code == 404


def test_lifetimes_are_the_hub_s_to_set(tmp_path: Path) -> None:
    """Table 6.4.3.2-1: "entityMapLifetime: Suggested duration, represented in ISO 8601
    format, for which the requester wants the EntityMap to exist. The actual expiresAt
    time of the EntityMap shall be set by the Context Broker or Context Source, possibly
    overriding the requested duration"."""
    settings = make_settings(tmp_path, entity_map_lifetime=600, entity_map_max_lifetime=3600)
    with TestClient(create_app(settings)) as c:
        assert c.post(E, json=parking(1), headers=JSON).status_code == 201

        def expiry(**params: Any) -> float:
            r = page(c, None, entityMap="true", **params)
            assert r.status_code == 201, r.text
            at = c.get(r.headers["NGSILD-EntityMap"]).json()["expiresAt"]
            return datetime.fromisoformat(at).timestamp() - time.time()

        assert 590 < expiry() <= 600
        assert 50 < expiry(entityMapLifetime="PT1M") <= 60
        assert 3590 < expiry(entityMapLifetime="P30D") <= 3600  # the hub's maximum
        for bad in ({"entityMapLifetime": "1時間"}, {"entityMap": "はい"}):
            r = page(c, None, **bad)
            assert r.status_code == 400, r.text
            assert r.json()["type"] == ERR + "BadRequestData"
        bad_ref = c.get(E, params={"type": "駐車場"}, headers={"NGSILD-EntityMap": "chizu"})
        assert bad_ref.status_code == 400
        assert bad_ref.json()["type"] == ERR + "BadRequestData"


def test_maps_are_per_tenant_and_bounded(hub: TestClient) -> None:
    """Clause 5.5.10: "If a Tenant is specified for an NGSI-LD operation, the operation
    shall only be applied to information related to the specified Tenant." A tenant
    keeps a bounded number of maps (here 3): one more drops the one expiring first."""
    made = [page(hub, None, entityMap="true").headers["NGSILD-EntityMap"] for _ in range(3)]
    other = {"NGSILD-Tenant": "chofu"}
    assert hub.get(made[0], headers=other).status_code == 404
    assert hub.delete(made[0], headers=other).status_code == 404
    fourth = page(hub, None, entityMap="true").headers["NGSILD-EntityMap"]
    assert hub.get(made[0]).status_code == 404
    assert all(hub.get(m).status_code == 200 for m in (*made[1:], fourth))


def test_expired_maps_are_purged_in_the_background(tmp_path: Path) -> None:
    """An expired map "cannot be accessed" and its storage is freed by a background job
    (every entity_purge_interval seconds), not only when someone asks for it."""
    settings = make_settings(tmp_path, entity_purge_interval=0.1)
    with TestClient(create_app(settings)) as c:
        assert c.post(E, json=parking(1), headers=JSON).status_code == 201
        where = page(c, None, entityMap="true").headers["NGSILD-EntityMap"]
        gone = c.patch(where, json={"expiresAt": "2001-01-01T00:00:00Z"}, headers=JSON)
        assert gone.status_code == 204

        def stored() -> int:
            with sqlite3.connect(tmp_path / "broker.db") as db:
                row = db.execute(
                    "SELECT count(*) FROM registrations WHERE kind='entityMap'"
                ).fetchone()
                return int(row[0])

        eventually(lambda: stored() == 0, what="the expired map to be purged")


def test_entity_maps_need_credentials_and_belong_to_their_maker(tmp_path: Path) -> None:
    """Every route goes through the access-control layer: an anonymous client is refused
    /entityMaps (401), and a map made by one principal's query answers as missing to
    another (another tenant's or principal's data "answers as missing")."""
    with oidc_issuer() as issuer:
        auth = tmp_path / "auth.yaml"
        auth.write_text(auth_yaml(issuer), encoding="utf-8")
        with TestClient(create_app(make_settings(tmp_path, auth_file=auth))) as c:
            komae = {"NGSILD-Tenant": "komae"}
            aed = {
                "id": "urn:ngsi-ld:AEDLocation:狛江-1",
                "type": "AEDLocation",
                "name": {"type": "Property", "value": "狛江市役所"},
            }
            r = c.post(E, json=aed, headers={**key("komae-writer"), **JSON, **komae})
            assert r.status_code == 201, r.text
            mine = {**key("aed-reader"), **komae}
            r = c.get(E, params={"type": "AEDLocation", "entityMap": "true"}, headers=mine)
            assert r.status_code == 201, r.text
            where = r.headers["NGSILD-EntityMap"]
            assert c.get(where, headers=mine).status_code == 200
            for method in ("GET", "PATCH", "DELETE"):
                anon = c.request(
                    method, where, headers=komae, json={} if method == "PATCH" else None
                )
                assert anon.status_code == 401, (method, anon.text)
            theirs = {**key("komae-writer"), **komae}
            assert c.get(where, headers=theirs).status_code == 404
            assert c.delete(where, headers=theirs).status_code == 404
            # another principal's map is not used for its query either: a new one is made
            other = c.get(
                E, params={"type": "AEDLocation"}, headers={**theirs, "NGSILD-EntityMap": where}
            )
            assert other.status_code == 201
            assert other.headers["NGSILD-EntityMap"] != where
            # anonymous reads of open types may still page with a map of their own
            anon_q = c.get(E, params={"type": "AEDLocation", "entityMap": "true"}, headers=komae)
            assert anon_q.status_code == 201
            assert ids(anon_q) == ["urn:ngsi-ld:AEDLocation:狛江-1"]
            assert c.delete(where, headers=mine).status_code == 204


def test_get_entityMaps_makes_a_map_for_a_query(hub: TestClient) -> None:
    """Clause 5.14.4.1: "This operation is very similar to the Query Entities operation
    in clause 5.7.2, except that it does not directly return Entities, but creates and
    returns an Entity map including the identifiers of the Entities that are candidates
    to be part of the query results." Table 6.34.3.1-1: "201 Created ... The HTTP
    response shall include an "NGSILD-EntityMap" HTTP header that contains the resource
    URI of the EntityMap resource created in the operation." Clause 5.14.4.4: a query
    with none of type, attrs, q, geo-query or local scope is "too wide" (400)."""
    r = hub.patch(f"{E}/{P}2/attrs", json={"空き台数": {"value": 0}}, headers=JSON)
    assert r.status_code == 204
    made = hub.get(M, params={"type": "駐車場", "q": "空き台数>0", "limit": "1"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["type"] == "EntityMap"
    assert sorted(body["entityMap"]) == [f"{P}{n}" for n in (1, 3, 4, 5, 6)]  # limit ignored
    assert hub.get(made.headers["NGSILD-EntityMap"]).json() == body
    # the map then pages the query it was made for
    first = page(hub, made.headers["NGSILD-EntityMap"], limit=2, q="空き台数>0")
    assert first.status_code == 200
    assert ids(first) == [f"{P}1", f"{P}3"]
    wide = hub.get(M, params={"id": f"{P}1"})
    assert wide.status_code == 400
    assert wide.json()["type"] == ERR + "BadRequestData"
    # the Query body form (Table 6.34.3.2-1): "Payload body in the request contains a
    # JSON-LD object which represents the query to be performed"
    body = {"type": "Query", "entities": [{"type": "駐車場"}], "q": "空き台数>0"}
    posted = hub.post(M, json=body, params={"entityMapLifetime": "PT1M"}, headers=JSON)
    assert posted.status_code == 201, posted.text
    assert sorted(posted.json()["entityMap"]) == [f"{P}{n}" for n in (1, 3, 4, 5, 6)]
    assert posted.headers["NGSILD-EntityMap"].endswith(posted.json()["id"])
    assert hub.post(M, json={"entities": []}, headers=JSON).status_code == 400
    assert hub.put(M, json=body, headers=JSON).status_code == 405


def test_retrieve_entity_with_an_entity_map(hub: TestClient) -> None:
    """Clause 5.7.1.4: "If a flag to return an EntityMap was present in the request, and
    no EntityMap currently exists, then a new EntityMap shall be created"; clause
    5.7.1.5: "If the location of a previously generated EntityMap was passed into the
    request, or a flag to return an EntityMap was present in the request, the location
    of the EntityMap used in the operation shall be returned in a specific field in the
    response"."""
    r = hub.get(f"{E}/{P}1", params={"entityMap": "true"})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == f"{P}1"  # the body stays the entity
    where = r.headers["NGSILD-EntityMap"]
    assert hub.get(where).json()["entityMap"] == {f"{P}1": ["@none"]}
    again = hub.get(f"{E}/{P}1", headers={"NGSILD-EntityMap": where})
    assert again.status_code == 200
    assert again.headers["NGSILD-EntityMap"] == where
    assert "NGSILD-EntityMap" not in hub.get(f"{E}/{P}1").headers
