"""Context source registrations over HTTP (clauses 5.9, 5.10, 6.8, 6.9): create, retrieve,
query, update and delete, the conflict rules of clause 4.3.6.2, and the outbound policy
applied to the endpoints registered."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import JSON, LD, link, make_settings

R = "/ngsi-ld/v1/csourceRegistrations"
E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
CTX = {"AED": "https://example.org/aed#AED", "設置場所": "https://example.org/aed#設置場所"}


def registration(n: int | str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{n}",
        "type": "ContextSourceRegistration",
        "registrationName": "狛江市 AED 台帳",
        "information": [{"entities": [{"type": "AEDLocation"}]}],
        "endpoint": "http://komae-hub.example:1026",
    }
    body.update(extra)
    return body


def create(client: TestClient, body: dict[str, Any], headers: dict[str, str] = JSON) -> str:
    r = client.post(R, json=body, headers=headers)
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    assert location.startswith(R + "/")
    return str(location.rsplit("/", 1)[1])


def test_lifecycle(client: TestClient) -> None:
    rid = create(
        client, registration(1, location={"type": "Point", "coordinates": [139.57, 35.63]})
    )
    assert rid == "urn:ngsi-ld:ContextSourceRegistration:1"
    got = client.get(f"{R}/{rid}")
    assert got.status_code == 200
    body = got.json()
    assert body["registrationName"] == "狛江市 AED 台帳"
    assert body["information"] == [{"entities": [{"type": "AEDLocation"}]}]
    assert body["mode"] == "inclusive"  # the default, said
    assert "createdAt" not in body
    assert "createdAt" in client.get(f"{R}/{rid}?options=sysAttrs").json()
    # the same id again
    assert client.post(R, json=registration(1), headers=JSON).status_code == 409
    # PATCH replaces the members given, null removes one
    patch = {"endpoint": "http://chofu-hub.example:1026", "registrationName": None}
    assert client.patch(f"{R}/{rid}", json=patch, headers=JSON).status_code == 204
    body = client.get(f"{R}/{rid}").json()
    assert body["endpoint"] == "http://chofu-hub.example:1026"
    assert "registrationName" not in body
    assert client.delete(f"{R}/{rid}").status_code == 204
    assert client.get(f"{R}/{rid}").status_code == 404
    assert client.delete(f"{R}/{rid}").status_code == 404
    # an id is made up when none is given
    made = create(client, {k: v for k, v in registration(2).items() if k != "id"})
    assert made.startswith("urn:ngsi-ld:ContextSourceRegistration:")


def test_invalid_registrations_are_400_and_store_nothing(client: TestClient) -> None:
    bad = [
        {**registration(1), "information": None},
        {**registration(1), "information": []},
        {**registration(1), "information": [{}]},
        {**registration(1), "type": "建物"},
        {k: v for k, v in registration(1).items() if k != "endpoint"},
        {**registration(1), "endpoint": "komae-hub"},
        {**registration(1), "mode": "exclusively"},
        {**registration(1), "expiresAt": "2018-11-29T14:53:15Z"},  # in the past
        {**registration(1), "expiresAt": "明日"},
        {**registration(1), "information": [{"entities": [{"id": "urn:x:1"}]}]},  # no type
        {**registration(1), "management": {"timeout": -1}},
        {**registration(1), "contextSourceInfo": [{"key": "Authorization"}]},
        {**registration(1), "location": {"type": "Point"}},
        {**registration(1), "observationInterval": {"endAt": "2026-01-01T00:00:00Z"}},
    ]
    for body in bad:
        r = client.post(R, json=body, headers=JSON)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == ERR + "BadRequestData"
    assert client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:1").status_code == 404
    assert client.get(f"{R}/not-a-uri").status_code == 400
    create(client, registration(1))
    r = client.patch(
        f"{R}/urn:ngsi-ld:ContextSourceRegistration:1", json={"information": None}, headers=JSON
    )
    assert r.status_code == 400  # a mandatory member cannot be removed
    r = client.patch(
        f"{R}/urn:ngsi-ld:ContextSourceRegistration:1", json={"type": "建物"}, headers=JSON
    )
    assert r.status_code == 400
    assert client.patch(R, json={}, headers=JSON).status_code == 405
    assert client.delete(R).status_code == 405


def test_terms_follow_the_context(client: TestClient) -> None:
    ctx_body = {
        **registration(1),
        "information": [{"entities": [{"type": "AED"}], "propertyNames": ["設置場所"]}],
        "@context": [CTX, "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"],
    }
    create(client, ctx_body, LD)
    rid = "urn:ngsi-ld:ContextSourceRegistration:1"
    # without the context, the expanded names come back
    plain = client.get(f"{R}/{rid}").json()
    assert plain["information"][0] == {
        "entities": [{"type": "https://example.org/aed#AED"}],
        "propertyNames": ["https://example.org/aed#設置場所"],
    }
    # a query names them in the request's context (a Link header); both hit it
    found = client.get(f"{R}?type=https://example.org/aed%23AED").json()
    assert [r["id"] for r in found] == [rid]
    assert client.get(f"{R}?type=AED").json() == []  # AED alone is the default vocabulary's


def test_query(client: TestClient) -> None:
    create(client, registration(1))  # any AEDLocation, any attribute
    create(
        client,
        registration(
            2,
            information=[
                {
                    "entities": [
                        {
                            "type": "EvacuationShelter",
                            "idPattern": "^urn:ngsi-ld:EvacuationShelter:komae-.*",
                        }
                    ],
                    "propertyNames": ["収容人数"],
                }
            ],
            location={"type": "Point", "coordinates": [139.578, 35.634]},
            observationInterval={
                "startAt": "2020-04-01T00:00:00Z",
                "endAt": "2021-03-31T00:00:00Z",
            },
            自治体コード="132195",
        ),
    )
    create(
        client,
        registration(
            3,
            information=[{"propertyNames": ["収容人数"]}],
            location={"type": "Point", "coordinates": [135.5, 34.7]},
        ),
    )

    def ids(query: str) -> list[str]:
        r = client.get(f"{R}?{query}")
        assert r.status_code == 200, r.text
        return [x["id"].rsplit(":", 1)[1] for x in r.json()]

    assert ids("type=AEDLocation") == ["1", "3"]  # 3 holds any entity
    assert ids("type=EvacuationShelter") == ["2", "3"]  # 3 holds any entity
    assert ids("type=EvacuationShelter&attrs=収容人数") == ["2", "3"]
    assert ids("attrs=名称") == ["1"]  # 1 holds any attribute
    assert ids("id=urn:ngsi-ld:EvacuationShelter:komae-1") == ["1", "2", "3"]
    assert ids("id=urn:ngsi-ld:EvacuationShelter:chofu-1&type=EvacuationShelter") == ["3"]
    assert ids("idPattern=.*chofu.*&type=EvacuationShelter") == ["2", "3"]  # patterns may overlap
    assert ids("q=自治体コード==%22132195%22") == ["2"]
    assert ids("csf=自治体コード==%22132195%22") == ["2"]
    # within 5 km of Komae's city hall
    assert ids(
        "type=EvacuationShelter&georel=near;maxDistance==5000&geometry=Point&coordinates=[139.578,35.634]"
    ) == ["2"]
    assert ids("type=EvacuationShelter&timerel=before&timeAt=2020-05-01T00:00:00Z") == ["2"]
    assert ids("type=EvacuationShelter&timerel=after&timeAt=2022-05-01T00:00:00Z") == []
    assert ids("type=EvacuationShelter&limit=1&offset=1") == ["3"]
    counted = client.get(f"{R}?type=EvacuationShelter&limit=1&count=true")
    assert counted.headers["NGSILD-Results-Count"] == "2"
    for bad in (
        "",
        "id=not-a-uri",
        "type=X&q=(",
        "type=X&georel=within",
        "type=X&timerel=before",
        "type=X&limit=-1",
    ):
        r = client.get(f"{R}?{bad}")
        assert r.status_code == 400, (bad, r.text)
    assert client.get(f"{R}?type=X&colour=赤").status_code == 400


def test_tenants_are_apart(client: TestClient) -> None:
    create(client, registration(1), {**JSON, "NGSILD-Tenant": "komae"})
    assert client.get(f"{R}?type=AEDLocation").json() == []
    assert len(client.get(f"{R}?type=AEDLocation", headers={"NGSILD-Tenant": "komae"}).json()) == 1


def test_exclusive_conflicts(client: TestClient) -> None:
    exclusive: dict[str, Any] = {
        "mode": "exclusive",
        "information": [
            {
                "entities": [{"id": "urn:ngsi-ld:AEDLocation:komae-1", "type": "AEDLocation"}],
                "propertyNames": ["電池残量"],
            }
        ],
    }
    create(client, registration(1, **exclusive))
    # another exclusive or a redirect registration of the same entity attribute: 409
    for mode in ("exclusive", "redirect"):
        r = client.post(R, json=registration(2, **{**exclusive, "mode": mode}), headers=JSON)
        assert r.status_code == 409, r.text
        assert r.json()["type"] == ERR + "Conflict"
    # an inclusive one may add to it; another attribute does not conflict
    create(client, registration(3, **{**exclusive, "mode": "inclusive"}))
    other = {
        **exclusive,
        "information": [{**exclusive["information"][0], "propertyNames": ["名称"]}],
    }
    create(client, registration(4, **other))
    # an entity held here with that attribute: an exclusive registration would hide it
    aed = {
        "id": "urn:ngsi-ld:AEDLocation:komae-2",
        "type": "AEDLocation",
        "電池残量": {"type": "Property", "value": 80},
    }
    assert client.post(E, json=aed, headers=JSON).status_code == 201
    held = {
        **exclusive,
        "information": [
            {**exclusive["information"][0], "entities": [{"id": aed["id"], "type": "AEDLocation"}]}
        ],
    }
    r = client.post(R, json=registration(5, **held), headers=JSON)
    assert r.status_code == 409
    assert client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:5").status_code == 404


def test_endpoints_the_outbound_policy_refuses_are_400(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = make_settings(tmp_path, outbound_deny=["10.0.0.0/8", "169.254.0.0/16"])
    with TestClient(create_app(s)) as client:
        for endpoint in (
            "http://169.254.169.254/latest",
            "http://10.1.2.3:1026",
            "ftp://komae.example",
        ):
            r = client.post(R, json=registration(1, endpoint=endpoint), headers=JSON)
            assert r.status_code == 400, (endpoint, r.text)
        create(client, registration(1))
        r = client.patch(
            f"{R}/urn:ngsi-ld:ContextSourceRegistration:1",
            json={"endpoint": "http://10.9.9.9"},
            headers=JSON,
        )
        assert r.status_code == 400
        assert client.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:1").json()["endpoint"] == (
            "http://komae-hub.example:1026"
        )


def test_link_header_context(client: TestClient) -> None:
    ctx_url = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    create(client, registration(1), {**JSON, **link(ctx_url)})
    assert client.get(f"{R}?type=AEDLocation", headers=link(ctx_url)).status_code == 200


def test_credentials_for_the_source_are_answered_masked(client: TestClient) -> None:
    info = [
        {"key": "X-API-Key", "value": "komae-secret-0001"},
        {"key": "X-組織", "value": "東京都"},
    ]
    body = registration(
        1, contextSourceInfo=info, endpoint="http://hub:pass@komae-hub.example:1026"
    )
    create(client, body)
    rid = "urn:ngsi-ld:ContextSourceRegistration:1"
    got = client.get(f"{R}/{rid}").json()
    assert got["contextSourceInfo"] == [
        {"key": "X-API-Key", "value": "***"},
        {"key": "X-組織", "value": "東京都"},
    ]
    assert got["endpoint"] == "http://***@komae-hub.example:1026"
    listed = client.get(f"{R}?type=AEDLocation").text
    assert "komae-secret" not in listed
    assert "pass@" not in listed
    # what was answered, written back, keeps the secrets
    echo = {
        "contextSourceInfo": got["contextSourceInfo"],
        "endpoint": got["endpoint"],
        "mode": "auxiliary",
    }
    assert client.patch(f"{R}/{rid}", json=echo, headers=JSON).status_code == 204
    # and the source gets them: see tests/broker/federation/test_forwarding.py
