"""What a forwarded request carries and how a source's failures are handled (clauses
4.3.6.3, 6.3.17, 6.3.18), against a real HTTP context source on loopback."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi.testclient import TestClient

from broker.app import create_app
from tests.broker.federation.source import Source, source
from tests.conftest import JSON, link, make_settings

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
AED = "urn:ngsi-ld:AEDLocation:chofu-1"


def chofu_aed(**extra: Any) -> dict[str, Any]:
    return {
        "id": AED,
        "type": "AEDLocation",
        "name": {"type": "Property", "value": "調布市役所", "modifiedAt": "2026-04-01T00:00:00Z"},
        **extra,
    }


def register(client: TestClient, url: str, **extra: Any) -> None:
    body = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:chofu",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "AEDLocation"}]}],
        "endpoint": url,
        **extra,
    }
    r = client.post(R, json=body, headers=JSON)
    assert r.status_code == 201, r.text


def test_what_a_forwarded_request_carries(hub: TestClient, cs: Source) -> None:
    register(
        hub,
        cs.url + "/chofu",
        tenant="chofu",
        contextSourceInfo=[{"key": "X-API-Key", "value": "tokyo-to-chofu-0001"}],
    )
    # a read-modify-write of the registration keeps the (masked) credential
    got = hub.get(f"{R}/urn:ngsi-ld:ContextSourceRegistration:chofu").json()
    echo = {"contextSourceInfo": got["contextSourceInfo"]}
    assert (
        hub.patch(
            f"{R}/urn:ngsi-ld:ContextSourceRegistration:chofu", json=echo, headers=JSON
        ).status_code
        == 204
    )
    cs.answer("GET", f"/chofu/ngsi-ld/v1/entities/{AED}", 200, chofu_aed())
    r = hub.get(f"{E}/{AED}", headers={**link(CORE), "Via": "1.1 city-portal"})
    assert r.status_code == 200, r.text
    assert r.json()["name"]["value"] == "調布市役所"
    sent = cs.requests[-1]
    assert sent.method == "GET"
    assert sent.headers["via"] == "1.1 city-portal, 1.1 tokyo-hub"
    assert sent.headers["link"].startswith(f"<{CORE}>")
    assert sent.headers["ngsild-tenant"] == "chofu"
    assert sent.headers["x-api-key"] == "tokyo-to-chofu-0001"
    assert sent.headers["accept"] == "application/json"
    assert "options" not in sent.query  # nothing the client did not ask for


def test_a_request_that_comes_back_is_508(hub: TestClient) -> None:
    r = hub.get(f"{E}?type=AEDLocation", headers={"Via": "1.1 city-portal, 1.1 tokyo-hub"})
    assert r.status_code == 508
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LoopDetected"
    assert hub.get(f"{E}?type=AEDLocation", headers={"Via": "1.1 tokyo-hub-2"}).status_code == 200


def test_a_source_answering_508_makes_it_508(hub: TestClient, cs: Source) -> None:
    register(hub, cs.url)
    cs.answer("GET", "/ngsi-ld/v1/entities", 508, {"type": "LoopDetected"})
    assert hub.get(f"{E}?type=AEDLocation").status_code == 508


def test_timeout_then_cooldown(hub: TestClient, cs: Source) -> None:
    register(hub, cs.url, management={"timeout": 200, "cooldown": 60_000})
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [chofu_aed()])
    cs.delay = 1.0
    r = hub.get(f"{E}?type=AEDLocation")
    assert r.status_code == 200
    assert r.json() == []
    assert "timed out" in r.headers["NGSILD-Warning"]
    asked = len(cs.requests)
    cs.delay = 0.0
    r = hub.get(f"{E}?type=AEDLocation")
    assert "cooldown" in r.headers["NGSILD-Warning"]
    assert len(cs.requests) == asked  # left alone while it rests


def test_operations_and_modes(hub: TestClient, cs: Source) -> None:
    register(hub, cs.url, operations=["retrieveEntity"])
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [chofu_aed()])
    cs.answer("GET", f"/ngsi-ld/v1/entities/{AED}", 200, chofu_aed())
    assert hub.get(f"{E}?type=AEDLocation").json() == []  # queryEntity is not registered
    assert hub.get(f"{E}/{AED}").status_code == 200


def test_exclusive_source_owns_its_attributes(hub: TestClient, cs: Source) -> None:
    held = {
        "id": AED,
        "type": "AEDLocation",
        "電池残量": {"type": "Property", "value": 10, "observedAt": "2030-01-01T00:00:00Z"},
        "name": {"type": "Property", "value": "調布市役所"},
    }
    assert hub.post(E, json=held, headers=JSON).status_code == 201
    exclusive = {
        "mode": "exclusive",
        "information": [
            {"entities": [{"id": AED, "type": "AEDLocation"}], "propertyNames": ["電池残量"]}
        ],
    }
    # conflicts with what is held here: refused
    r = hub.post(
        R,
        json={
            "id": "urn:ngsi-ld:ContextSourceRegistration:x",
            "type": "ContextSourceRegistration",
            "endpoint": cs.url,
            **exclusive,
        },
        headers=JSON,
    )
    assert r.status_code == 409
    # once the attribute is gone here, the source owns it
    assert hub.delete(f"{E}/{AED}/attrs/電池残量").status_code == 204
    register(hub, cs.url, **exclusive)
    battery = {"type": "Property", "value": 95, "observedAt": "2026-04-01T00:00:00Z"}
    cs.answer(
        "GET",
        f"/ngsi-ld/v1/entities/{AED}",
        200,
        {"id": AED, "type": "AEDLocation", "電池残量": battery},
    )
    got = hub.get(f"{E}/{AED}").json()
    assert got["電池残量"]["value"] == 95
    assert got["name"]["value"] == "調布市役所"
    assert cs.requests[-1].query["attrs"] == "電池残量"  # only what it is registered for


def test_auxiliary_only_fills_in(hub: TestClient, cs: Source) -> None:
    mine = {
        "id": AED,
        "type": "AEDLocation",
        "name": {"type": "Property", "value": "調布市役所 本庁舎"},
    }
    assert hub.post(E, json=mine, headers=JSON).status_code == 201
    register(hub, cs.url, mode="auxiliary")
    aux = chofu_aed(開設時間={"type": "Property", "value": "8:30-17:15"})
    aux["name"]["observedAt"] = "2099-01-01T00:00:00Z"  # newer, yet only fills in
    cs.answer("GET", f"/ngsi-ld/v1/entities/{AED}", 200, aux)
    got = hub.get(f"{E}/{AED}").json()
    assert got["name"]["value"] == "調布市役所 本庁舎"
    assert got["開設時間"]["value"] == "8:30-17:15"


def test_csf_picks_the_sources_asked(hub: TestClient) -> None:
    with source() as komae, source() as chofu:
        for city, cs, name in (("komae", komae, "狛江市"), ("chofu", chofu, "調布市")):
            body = {
                "id": f"urn:ngsi-ld:ContextSourceRegistration:{city}",
                "type": "ContextSourceRegistration",
                "information": [{"entities": [{"type": "AEDLocation"}]}],
                "endpoint": cs.url,
                "自治体": name,
            }
            assert hub.post(R, json=body, headers=JSON).status_code == 201
            cs.answer("GET", "/ngsi-ld/v1/entities", 200, [])
        r = hub.get(E, params={"type": "AEDLocation", "csf": '自治体=="調布市"'})
        assert r.status_code == 200
        assert (len(komae.requests), len(chofu.requests)) == (0, 1)
        assert hub.get(E, params={"type": "AEDLocation", "csf": "自治体=="}).status_code == 400


def vehicle_registration(url: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{mode}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "公用車"}], **extra}],
        "endpoint": url,
        "mode": mode,
        "operations": ["redirectionOps"],
    }


CAR = "urn:ngsi-ld:公用車:品川500あ1234"


def car(**attrs: Any) -> dict[str, Any]:
    return {
        "id": CAR,
        "type": "公用車",
        **{k: {"type": "Property", "value": v} for k, v in attrs.items()},
    }


def test_inclusive_writes_go_to_both(hub: TestClient, cs: Source) -> None:
    assert (
        hub.post(R, json=vehicle_registration(cs.url, "inclusive"), headers=JSON).status_code == 201
    )
    cs.answer("POST", "/ngsi-ld/v1/entities", 201, None)
    r = hub.post(E, json=car(速度=40, 燃料=80), headers=JSON)
    assert r.status_code == 201, r.text
    sent = cs.requests[-1]
    assert (sent.method, sent.body["id"], sent.body["速度"]["value"]) == ("POST", CAR, 40)
    assert "via" in sent.headers
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).json()["速度"]["value"] == 40
    # the source refusing: 207, naming it; what succeeded here stays
    cs.answer(
        "PATCH",
        f"/ngsi-ld/v1/entities/{CAR}/attrs",
        400,
        {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData", "title": "Bad request"},
    )
    r = hub.patch(
        f"{E}/{CAR}/attrs", json={"速度": {"type": "Property", "value": 55}}, headers=JSON
    )
    assert r.status_code == 207, r.text
    [error] = r.json()["errors"]
    assert error["registrationId"] == "urn:ngsi-ld:ContextSourceRegistration:inclusive"
    assert error["error"]["status"] == 400
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).json()["速度"]["value"] == 55
    # local=true writes here only
    asked = len(cs.requests)
    assert hub.delete(f"{E}/{CAR}", params={"local": "true"}).status_code == 204
    assert len(cs.requests) == asked
    # an invalid entity is refused before anything is sent
    assert hub.post(E, json={**car(), "速度": None}, headers=JSON).status_code == 400
    assert len(cs.requests) == asked


def test_exclusive_attributes_are_written_at_the_source_only(hub: TestClient, cs: Source) -> None:
    reg = vehicle_registration(cs.url, "exclusive", propertyNames=["速度"])
    reg["information"][0]["entities"][0]["id"] = CAR
    assert hub.post(R, json=reg, headers=JSON).status_code == 201
    cs.answer("POST", "/ngsi-ld/v1/entities", 201, None)
    assert hub.post(E, json=car(速度=40, 燃料=80), headers=JSON).status_code == 201
    assert set(cs.requests[-1].body) == {"id", "type", "速度"}
    held = hub.get(f"{E}/{CAR}", params={"local": "true"}).json()
    assert "速度" not in held
    assert held["燃料"]["value"] == 80
    # an update of the exclusive attribute only goes to the source
    cs.answer("PATCH", f"/ngsi-ld/v1/entities/{CAR}/attrs/速度", 204, None)
    r = hub.patch(f"{E}/{CAR}/attrs/速度", json={"value": 60}, headers=JSON)
    assert r.status_code == 204, r.text
    assert cs.requests[-1].method == "PATCH"
    assert cs.requests[-1].body == {"value": 60}  # the attribute's fragment, whole


def test_exclusive_without_the_operation_is_a_conflict(hub: TestClient, cs: Source) -> None:
    reg = vehicle_registration(cs.url, "exclusive", propertyNames=["速度"])
    reg["information"][0]["entities"][0]["id"] = CAR
    reg["operations"] = ["retrieveOps"]
    assert hub.post(R, json=reg, headers=JSON).status_code == 201
    r = hub.post(E, json=car(速度=40), headers=JSON)
    assert r.status_code == 409
    assert cs.requests == []
    assert hub.post(E, json=car(燃料=80), headers=JSON).status_code == 201  # not its attribute


def test_a_refused_part_leaves_the_rest_done(hub: TestClient, cs: Source) -> None:
    """Clause 5.6.6.4 (Delete Entity) as 5.6.1.4 words it: a registration that does not
    accept the operation makes it "an error of type Conflict if the complete ...
    operation failed or ... a partial success if some parts of it succeeded"."""
    assert hub.post(E, json=car(燃料=80), headers=JSON).status_code == 201
    reg = vehicle_registration(cs.url, "exclusive", propertyNames=["速度"])
    reg["information"][0]["entities"][0]["id"] = CAR
    reg["operations"] = ["retrieveOps"]
    assert hub.post(R, json=reg, headers=JSON).status_code == 201
    r = hub.delete(f"{E}/{CAR}")
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["success"] == [CAR]
    (error,) = body["errors"]
    assert error["registrationId"] == "urn:ngsi-ld:ContextSourceRegistration:exclusive"
    assert error["error"]["type"] == "https://uri.etsi.org/ngsi-ld/errors/Conflict"
    assert cs.requests == []
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).status_code == 404
    # in a batch: the entity's other part is written, the refused one reported
    batch = [car(速度=40, 燃料=60)]
    r = hub.post("/ngsi-ld/v1/entityOperations/create", json=batch, headers=JSON)
    assert r.status_code == 207, r.text
    assert [e["registrationId"] for e in r.json()["errors"]] == [reg["id"]]
    held = hub.get(f"{E}/{CAR}", params={"local": "true"}).json()
    assert held["燃料"]["value"] == 60
    assert "速度" not in held


def test_redirect_writes_only_at_the_source(hub: TestClient, cs: Source) -> None:
    assert (
        hub.post(R, json=vehicle_registration(cs.url, "redirect"), headers=JSON).status_code == 201
    )
    cs.answer("POST", "/ngsi-ld/v1/entities", 201, None)
    r = hub.post(E, json=car(速度=40), headers=JSON)
    assert r.status_code == 201
    assert unquote(r.headers["location"]).endswith(CAR)
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).status_code == 404
    cs.answer("DELETE", f"/ngsi-ld/v1/entities/{CAR}", 204, None)
    assert hub.delete(f"{E}/{CAR}").status_code == 204
    assert cs.requests[-1].method == "DELETE"


def test_batches_are_split_by_source(hub: TestClient, cs: Source) -> None:
    reg = vehicle_registration(cs.url, "redirect")
    reg["information"][0]["entities"][0]["idPattern"] = ".*品川.*"
    assert hub.post(R, json=reg, headers=JSON).status_code == 201
    cs.answer("POST", "/ngsi-ld/v1/entityOperations/create", 201, [CAR])
    other = {**car(速度=10), "id": "urn:ngsi-ld:公用車:多摩300い5678"}
    r = hub.post("/ngsi-ld/v1/entityOperations/create", json=[car(速度=40), other], headers=JSON)
    assert r.status_code == 201, r.text
    assert sorted(r.json()) == sorted([CAR, other["id"]])
    sent = cs.requests[-1]
    assert sent.path == "/ngsi-ld/v1/entityOperations/create"
    assert [e["id"] for e in sent.body] == [CAR]  # only what the source is registered for
    assert hub.get(f"{E}/{other['id']}", params={"local": "true"}).status_code == 200
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).status_code == 404
    # the source refusing its part: 207 naming it; the rest is done
    cs.answer(
        "POST",
        "/ngsi-ld/v1/entityOperations/delete",
        400,
        {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"},
    )
    r = hub.post("/ngsi-ld/v1/entityOperations/delete", json=[CAR, other["id"]], headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["success"] == [other["id"]]
    assert [e["entityId"] for e in r.json()["errors"]] == [CAR]
    assert cs.requests[-1].body == [CAR]


def test_retrieve_from_a_source_that_only_answers_queries(hub: TestClient, cs: Source) -> None:
    register(hub, cs.url, operations=["queryEntity"])
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [chofu_aed()])
    r = hub.get(f"{E}/{AED}")
    assert r.status_code == 200, r.text
    assert r.json()["name"]["value"] == "調布市役所"
    assert cs.requests[-1].query["id"] == AED
    assert cs.requests[-1].query["type"] == "AEDLocation"
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [])
    assert hub.get(f"{E}/{AED}").status_code == 404


def test_purge_goes_to_the_sources_too(hub: TestClient, cs: Source) -> None:
    assert (
        hub.post(R, json=vehicle_registration(cs.url, "inclusive"), headers=JSON).status_code == 201
    )
    assert hub.post(E, json=car(速度=40), headers=JSON).status_code in (201, 207)
    cs.answer("DELETE", "/ngsi-ld/v1/entities", 204, None)
    r = hub.delete(E, params={"type": "公用車"})
    assert r.status_code == 204, r.text
    assert (cs.requests[-1].method, cs.requests[-1].query) == ("DELETE", {"type": "公用車"})
    assert hub.get(f"{E}/{CAR}", params={"local": "true"}).status_code == 404
    cs.answer("DELETE", "/ngsi-ld/v1/entities", 500, None)
    r = hub.delete(E, params={"type": "公用車"})
    assert r.status_code == 207
    assert (
        r.json()["errors"][0]["registrationId"] == "urn:ngsi-ld:ContextSourceRegistration:inclusive"
    )


def test_a_query_body_is_sent_on_by_the_operation_allowed(hub: TestClient, cs: Source) -> None:
    """A Query body goes to a source allowing ``queryBatch`` (federationOps does) as a
    Query body, and to one allowing ``queryEntity`` only as GET /entities parameters."""
    register(hub, cs.url)
    cs.answer("POST", "/ngsi-ld/v1/entityOperations/query", 200, [chofu_aed()])
    body = {"type": "Query", "entities": [{"type": "AEDLocation"}], "q": 'name=="調布市役所"'}
    r = hub.post("/ngsi-ld/v1/entityOperations/query", json=body, headers=JSON)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [AED]
    sent = cs.requests[-1]
    assert sent.body == body
    assert sent.query == {}  # no page, count or options the client did not ask for
    assert hub.delete(f"{R}/urn:ngsi-ld:ContextSourceRegistration:chofu").status_code == 204
    register(hub, cs.url, operations=["queryEntity"])
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [chofu_aed()])
    r = hub.post("/ngsi-ld/v1/entityOperations/query", json=body, headers=JSON)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [AED]
    assert cs.requests[-1].query["type"] == "AEDLocation"
    assert cs.requests[-1].query["q"] == 'name=="調布市役所"'


def test_configured_credentials_for_an_endpoint(tmp_path: Any, cs: Source) -> None:
    headers = {cs.url + "/": {"X-API-Key": "tokyo-hub-key-0002", "X-Org": "tokyo"}}
    settings = make_settings(tmp_path, federation_headers=headers)
    with TestClient(create_app(settings)) as client:
        info = [
            {"key": "X-Org", "value": "tocho"},
            {"key": "備考", "value": "都庁"},
            {"key": "Via", "value": "x"},
        ]
        register(client, cs.url + "/chofu", contextSourceInfo=info)
        cs.answer("GET", f"/chofu/ngsi-ld/v1/entities/{AED}", 200, chofu_aed())
        assert client.get(f"{E}/{AED}").status_code == 200
        sent = cs.requests[-1].headers
        assert sent["x-api-key"] == "tokyo-hub-key-0002"
        assert sent["x-org"] == "tocho"  # the registration's own wins
        assert sent["via"].startswith("1.1 renkei-")  # the registration cannot replace it
        assert "備考" not in str(sent)  # no header can carry it


def test_local_only_sources_are_asked_for_their_own_data(hub: TestClient, cs: Source) -> None:
    register(hub, cs.url, management={"localOnly": True})
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [chofu_aed()])
    assert [e["id"] for e in hub.get(E, params={"type": "AEDLocation"}).json()] == [AED]
    assert cs.requests[-1].query["local"] == "true"


def test_a_forwarded_query_string_is_written_as_clients_write_it(
    hub: TestClient, cs: Source
) -> None:
    """Ids, lists and georel go out as the specification's examples write them
    (``id=urn:ngsi-ld:...,urn:ngsi-ld:...``): RFC 3986 allows ``:``, ``,`` and ``;`` in a
    query; what would change its meaning (``&``, ``=``, quotes, spaces) is escaped."""
    register(hub, cs.url)
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [])
    other = "urn:ngsi-ld:AEDLocation:調布-2"
    r = hub.get(
        E,
        params={"type": "AEDLocation", "id": f"{AED},{other}", "q": 'name=="調布 市役所"'},
    )
    assert r.status_code == 200, r.text
    sent = cs.requests[-1]
    assert f"id={AED},urn:ngsi-ld:AEDLocation:%E8%AA%BF%E5%B8%83-2" in sent.raw_query
    assert "q=name%3D%3D%22%E8%AA%BF%E5%B8%83%20%E5%B8%82%E5%BD%B9%E6%89%80%22" in sent.raw_query
    assert sent.query["id"] == f"{AED},{other}"
    assert sent.query["q"] == 'name=="調布 市役所"'


def test_a_context_source_info_value_taken_from_the_request(hub: TestClient, cs: Source) -> None:
    """Clause 4.3.6.5: "the special value "urn:ngsi-ld:request" can be used to indicate
    that the respective value is to be taken from the request that triggered the given
    request, if present"."""
    register(
        hub,
        cs.url,
        contextSourceInfo=[
            {"key": "X-Chofu-Operator", "value": "urn:ngsi-ld:request"},
            {"key": "X-API-Key", "value": "tokyo-to-chofu-0001"},
        ],
    )
    cs.answer("GET", f"/ngsi-ld/v1/entities/{AED}", 200, chofu_aed())
    r = hub.get(f"{E}/{AED}", headers={"X-Chofu-Operator": "bousai-ka-01"})
    assert r.status_code == 200, r.text
    sent = cs.requests[-1].headers
    assert sent["x-chofu-operator"] == "bousai-ka-01"
    assert sent["x-api-key"] == "tokyo-to-chofu-0001"
    # not in the request: not sent (never the placeholder itself)
    assert hub.get(f"{E}/{AED}").status_code == 200
    assert "x-chofu-operator" not in cs.requests[-1].headers
