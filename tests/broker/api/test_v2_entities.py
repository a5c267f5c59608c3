"""The NGSI v2 API over plain HTTP: entities, attributes, values, types, batch, errors,
Fiware-Service/ServicePath, and the same entities seen through NGSI-LD."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.utils import get_openapi
from fastapi.testclient import TestClient

from broker.api import v2 as ngsi_v2
from tests.conftest import JSON
from tests.receiver import Receiver

E = "/v2/entities"
TEXT = {"Content-Type": "text/plain"}


def room(eid: str = "Room1", temperature: Any = 23, **attrs: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "type": "Room",
        "temperature": {"value": temperature, "type": "Number"},
        "pressure": {"value": 720, "type": "Integer"},
        **attrs,
    }


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_create_retrieve_delete(client: TestClient) -> None:
    r = client.post(E, json=room())
    assert r.status_code == 201
    assert r.headers["location"] == "/v2/entities/Room1?type=Room"
    assert error(client.post(E, json=room())) == (422, "Unprocessable")
    got = client.get(f"{E}/Room1").json()
    assert got == {
        "id": "Room1",
        "type": "Room",
        "temperature": {"type": "Number", "value": 23, "metadata": {}},
        "pressure": {"type": "Integer", "value": 720, "metadata": {}},
    }
    assert client.get(f"{E}/Room1?options=keyValues").json() == {
        "id": "Room1",
        "type": "Room",
        "temperature": 23,
        "pressure": 720,
    }
    assert client.get(f"{E}/Room1?options=values&attrs=pressure,temperature").json() == [720, 23]
    assert error(client.get(f"{E}/Room1?type=Car")) == (404, "NotFound")
    assert client.delete(f"{E}/Room1?type=Car").status_code == 404
    assert client.delete(f"{E}/Room1").status_code == 204
    assert client.get(f"{E}/Room1").json() == {
        "error": "NotFound",
        "description": "The requested entity has not been found. Check type and id",
    }


def test_defaults_key_values_and_upsert(client: TestClient) -> None:
    r = client.post(
        f"{E}?options=keyValues", json={"id": "避難所1", "名前": "狛江第一小学校", "定員": 120}
    )
    assert r.status_code == 201
    got = client.get(f"{E}/避難所1").json()
    assert got["type"] == "Thing"
    assert got["名前"] == {"type": "Text", "value": "狛江第一小学校", "metadata": {}}
    assert got["定員"]["type"] == "Number"
    r = client.post(f"{E}?options=upsert,keyValues", json={"id": "避難所1", "定員": 150})
    assert r.status_code == 204
    assert client.get(f"{E}/避難所1?options=keyValues").json()["定員"] == 150


def test_attribute_types_metadata_and_special_types(client: TestClient) -> None:
    body = {
        "id": "Sensor1",
        "type": "Sensor",
        "temperature": {
            "value": 21.5,
            "type": "Temperature",
            "metadata": {
                "accuracy": {"value": 0.5},
                "unitCode": {"value": "CEL"},
                "observedAt": {"type": "DateTime", "value": "2026-04-01T09:00:00+09:00"},
            },
        },
        "observed": {"type": "DateTime", "value": "2026-04-01T09:00:00+09:00"},
        "refRoom": {"type": "Relationship", "value": "Room1"},
        "position": {"type": "geo:point", "value": "35.634, 139.578"},
        "route": {"type": "geo:line", "value": ["35.63, 139.57", "35.64, 139.58"]},
        "area": {"type": "geo:box", "value": ["35.6, 139.5", "35.7, 139.6"]},
        "location": {
            "type": "geo:json",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
        "address": {"value": {"city": "狛江市", "zip": "201-8585"}},
        "nothing": {"value": None},
    }
    assert client.post(E, json=body).status_code == 201
    got = client.get(f"{E}/Sensor1").json()
    assert got["temperature"] == {
        "type": "Temperature",
        "value": 21.5,
        "metadata": {
            "accuracy": {"type": "Number", "value": 0.5},
            "unitCode": {"type": "Text", "value": "CEL"},
            "observedAt": {"type": "DateTime", "value": "2026-04-01T00:00:00.000Z"},
        },
    }
    assert got["observed"]["value"] == "2026-04-01T00:00:00.000Z"
    assert got["refRoom"]["value"] == "Room1"
    assert got["position"] == {"type": "geo:point", "value": "35.634, 139.578", "metadata": {}}
    assert got["route"]["value"] == ["35.63, 139.57", "35.64, 139.58"]
    assert got["area"]["value"] == ["35.6, 139.5", "35.7, 139.6"]
    assert got["address"]["type"] == "StructuredValue"
    assert got["nothing"] == {"type": "None", "value": None, "metadata": {}}
    # builtins only when asked for
    some = client.get(
        f"{E}/Sensor1?attrs=dateCreated,temperature&metadata=dateModified,accuracy"
    ).json()
    assert list(some) == ["id", "type", "dateCreated", "temperature"]
    assert set(some["temperature"]["metadata"]) == {"accuracy", "dateModified"}
    # the same entity through NGSI-LD, without a Link header
    ld = client.get("/ngsi-ld/v1/entities?type=Sensor").json()[0]
    assert ld["temperature"]["unitCode"] == "CEL"
    assert ld["temperature"]["accuracy"] == {"type": "Property", "value": 0.5}
    assert ld["location"]["type"] == "GeoProperty"
    assert ld["position"]["value"] == {"type": "Point", "coordinates": [139.578, 35.634]}
    assert ld["refRoom"] == {"type": "Relationship", "object": "Room1"}


def test_bad_input_gets_v2_errors(client: TestClient) -> None:
    cases = [
        (client.post(E, json={"id": "a<b", "type": "T"}), (400, "BadRequest")),
        (client.post(E, json={"id": "x" * 257}), (400, "BadRequest")),
        (client.post(E, json={"id": "with space"}), (400, "BadRequest")),
        (client.post(E, json={"type": "T"}), (400, "BadRequest")),
        (client.post(E, json={"id": "A", "id2": {"value": "x=1"}}), (400, "BadRequest")),
        (client.post(E, json={"id": "A", "p": {"value": 1, "foo": 2}}), (400, "BadRequest")),
        (
            client.post(E, json={"id": "A", "p": {"type": "geo:point", "value": "x"}}),
            (400, "BadRequest"),
        ),
        (
            client.post(E, json={"id": "A", "p": {"type": "DateTime", "value": "soon"}}),
            (400, "BadRequest"),
        ),
        (
            client.post(
                E, json={"id": "A", "p": {"value": 1, "metadata": {"m": {"value": "(x)"}}}}
            ),
            (400, "BadRequest"),
        ),
        (client.post(E, content=b"{bad", headers=JSON), (400, "ParseError")),
        (
            client.post(E, content=b"<x/>", headers={"Content-Type": "application/xml"}),
            (415, "UnsupportedMediaType"),
        ),
        (client.get(f"{E}?limit=1001"), (400, "BadRequest")),
        (client.get(f"{E}?q=a>"), (400, "BadRequest")),
        (client.get(f"{E}?georel=near&geometry=point&coords=1,2"), (400, "BadRequest")),
        (client.get(f"{E}?options=nonsense"), (400, "BadRequest")),
        (client.put(E), (405, "MethodNotAllowed")),
        (client.get("/v2/nothing"), (404, "NotFound")),
        (client.get(E, headers={"Fiware-Service": "bad service"}), (400, "BadRequest")),
        (client.get(E, headers={"Fiware-ServicePath": "relative"}), (400, "BadRequest")),
        (
            client.get(E, headers={"Fiware-ServicePath": ",".join(f"/p{i}" for i in range(11))}),
            (400, "BadRequest"),
        ),
        (
            client.post(E, json={"id": "A"}, headers={"Fiware-ServicePath": "/a,/b"}),
            (400, "BadRequest"),
        ),
        (client.post("/v2/subscriptions", json={}), (400, "BadRequest")),
        (client.post("/v2/registrations", json={}), (501, "NotImplemented")),
        (client.post("/v2/op/notify", json={}), (400, "BadRequest")),
    ]
    for response, expected in cases:
        assert error(response) == expected, response.request.url
        assert "description" in response.json()
    assert client.get(E).json() == []  # nothing was half-written


def test_attrs_operations(client: TestClient) -> None:
    client.post(E, json=room())
    assert client.post(f"{E}/Room1/attrs", json={"humidity": {"value": 40}}).status_code == 204
    r = client.post(f"{E}/Room1/attrs?options=append", json={"humidity": {"value": 41}})
    assert error(r) == (422, "Unprocessable")
    r = client.patch(f"{E}/Room1/attrs", json={"temperature": {"value": 25}, "ghost": {"value": 1}})
    assert error(r) == (422, "Unprocessable")
    assert client.get(f"{E}/Room1?options=keyValues").json()["temperature"] == 23  # nothing written
    # metadata are kept on update unless overrideMetadata
    client.patch(
        f"{E}/Room1/attrs", json={"temperature": {"value": 24, "metadata": {"m": {"value": 1}}}}
    )
    client.patch(f"{E}/Room1/attrs", json={"temperature": {"value": 25}})
    assert client.get(f"{E}/Room1/attrs/temperature").json() == {
        "type": "Number",
        "value": 25,
        "metadata": {"m": {"type": "Number", "value": 1}},
    }
    client.patch(f"{E}/Room1/attrs?options=overrideMetadata", json={"temperature": {"value": 26}})
    assert client.get(f"{E}/Room1/attrs/temperature").json()["metadata"] == {}
    assert (
        client.patch(f"{E}/Room1/attrs?options=keyValues", json={"temperature": 27}).status_code
        == 204
    )
    assert client.get(f"{E}/Room1/attrs?options=keyValues").json() == {
        "temperature": 27,
        "pressure": 720,
        "humidity": 40,
    }
    assert client.put(f"{E}/Room1/attrs", json={"co2": {"value": 400}}).status_code == 204
    assert client.get(f"{E}/Room1/attrs?options=keyValues").json() == {"co2": 400}
    assert client.put(f"{E}/Room1/attrs/co2", json={"value": 410, "type": "ppm"}).status_code == 204
    assert client.get(f"{E}/Room1/attrs/co2").json()["type"] == "ppm"
    assert error(client.put(f"{E}/Room1/attrs/ghost", json={"value": 1})) == (404, "NotFound")
    assert client.get(f"{E}/Room1/attrs/ghost").json()["description"] == (
        "The entity does not have such an attribute"
    )
    assert client.delete(f"{E}/Room1/attrs/co2").status_code == 204
    assert error(client.delete(f"{E}/Room1/attrs/co2")) == (404, "NotFound")


def test_attribute_value_as_json_and_text(client: TestClient) -> None:
    client.post(
        E,
        json=room(
            名前={"value": "会議室A"},
            address={"value": {"city": "狛江市"}},
        ),
    )
    v = f"{E}/Room1/attrs/temperature/value"
    r = client.get(v, headers={"Accept": "text/plain"})
    assert (r.status_code, r.text, r.headers["content-type"].split(";")[0]) == (
        200,
        "23",
        "text/plain",
    )
    assert error(client.get(v, headers={"Accept": "application/json"})) == (406, "NotAcceptable")
    assert (
        client.get(f"{E}/Room1/attrs/名前/value", headers={"Accept": "text/plain"}).text
        == '"会議室A"'
    )
    r = client.get(f"{E}/Room1/attrs/address/value")
    assert r.json() == {"city": "狛江市"}
    assert r.headers["content-type"] == "application/json"
    assert client.put(v, content="25.5", headers=TEXT).status_code == 204
    assert client.get(f"{E}/Room1/attrs/temperature").json()["value"] == 25.5
    assert client.get(f"{E}/Room1/attrs/temperature").json()["type"] == "Number"
    client.put(f"{E}/Room1/attrs/名前/value", content='"会議室B"'.encode(), headers=TEXT)
    assert client.get(f"{E}/Room1?options=keyValues").json()["名前"] == "会議室B"
    client.put(f"{E}/Room1/attrs/address/value", json={"city": "調布市"})
    assert client.get(f"{E}/Room1/attrs/address/value").json() == {"city": "調布市"}
    assert error(client.put(v, content="hot", headers=TEXT)) == (400, "BadRequest")
    assert error(client.put(f"{E}/Room1/attrs/ghost/value", content="1", headers=TEXT)) == (
        404,
        "NotFound",
    )


def test_queries(client: TestClient) -> None:
    rooms = [
        room(
            "Room1",
            18,
            name={"value": "北会議室"},
            location={"type": "geo:point", "value": "35.634, 139.578"},
        ),
        room(
            "Room2",
            23,
            name={"value": "南会議室"},
            location={"type": "geo:point", "value": "35.60, 139.60"},
        ),
        room("Room3", 30, info={"value": {"floor": 3, "wing": "east"}}),
        {"id": "Car1", "type": "Car", "speed": {"value": 40}},
    ]
    for body in rooms:
        assert client.post(E, json=body).status_code == 201

    def ids(url: str) -> list[str]:
        r = client.get(url)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()]

    assert ids(f"{E}?type=Room&q=temperature>20&orderBy=!temperature") == ["Room3", "Room2"]
    assert ids(f"{E}?q=temperature==18,30&orderBy=id") == ["Room1", "Room3"]
    assert ids(f"{E}?q=temperature==19..25") == ["Room2"]
    assert ids(f"{E}?q=info.floor==3") == ["Room3"]
    assert ids(f"{E}?q=name~=北") == ["Room1"]
    assert ids(f"{E}?q=!temperature") == ["Car1"]
    assert ids(f"{E}?q=speed") == ["Car1"]
    assert ids(f"{E}?idPattern=^Room[12]&orderBy=id") == ["Room1", "Room2"]
    assert ids(f"{E}?typePattern=^Ca") == ["Car1"]
    assert ids(f"{E}?typePattern=^Nothing") == []
    assert ids(f"{E}?id=Room2,Car1&orderBy=id") == ["Car1", "Room2"]
    assert ids(f"{E}?georel=near;maxDistance:1000&geometry=point&coords=35.634,139.578") == [
        "Room1"
    ]
    assert ids(f"{E}?georel=coveredBy&geometry=box&coords=35.5,139.59;35.62,139.61") == ["Room2"]
    assert ids(f"{E}?georel=near;minDistance:1000&geometry=point&coords=35.634,139.578") == [
        "Room2"
    ]
    r = client.get(
        f"{E}?type=Room&limit=1&offset=1&orderBy=id&options=count,keyValues&attrs=temperature"
    )
    assert r.headers["fiware-total-count"] == "3"
    assert r.json() == [{"id": "Room2", "type": "Room", "temperature": 23}]
    assert (
        client.get(f"{E}?type=Room&orderBy=id&options=unique&attrs=pressure").json() == [[720]] * 3
    )


def test_types(client: TestClient) -> None:
    client.post(E, json=room("Room1"))
    client.post(E, json=room("Room2", "warm"))
    client.post(E, json={"id": "Car1", "type": "Car", "speed": {"value": 40}})
    types = client.get("/v2/types?options=count").json()
    assert types == [
        {"type": "Car", "attrs": {"speed": {"types": ["Number"]}}, "count": 1},
        {
            "type": "Room",
            "attrs": {"pressure": {"types": ["Integer"]}, "temperature": {"types": ["Number"]}},
            "count": 2,
        },
    ]
    assert client.get("/v2/types?options=values").json() == ["Car", "Room"]
    assert client.get("/v2/types?options=count").headers["fiware-total-count"] == "2"
    assert client.get("/v2/types/Room").json()["count"] == 2
    assert error(client.get("/v2/types/Boat")) == (404, "NotFound")


def test_batch_update_and_query(client: TestClient) -> None:
    op = "/v2/op/update"
    r = client.post(op, json={"actionType": "append", "entities": [room("Room1"), room("Room2")]})
    assert r.status_code == 204
    r = client.post(
        op,
        json={
            "actionType": "appendStrict",
            "entities": [{"id": "Room1", "temperature": {"value": 1}}],
        },
    )
    assert error(r) == (422, "Unprocessable")
    r = client.post(
        op, json={"actionType": "update", "entities": [{"id": "Room9", "x": {"value": 1}}]}
    )
    assert error(r) == (404, "NotFound")
    r = client.post(
        op,
        json={
            "actionType": "update",
            "entities": [{"id": "Room1", "type": "Room", "temperature": {"value": 30}}],
        },
    )
    assert r.status_code == 204
    r = client.post(
        op, json={"actionType": "replace", "entities": [{"id": "Room2", "co2": {"value": 5}}]}
    )
    assert r.status_code == 204
    r = client.post(
        op, json={"actionType": "delete", "entities": [{"id": "Room1", "pressure": {}}]}
    )
    assert r.status_code == 204
    q = client.post(
        "/v2/op/query?options=keyValues",
        json={
            "entities": [{"idPattern": ".*", "type": "Room"}],
            "expression": {"q": "temperature>25"},
        },
    )
    assert q.json() == [{"id": "Room1", "type": "Room", "temperature": 30}]
    q = client.post(
        "/v2/op/query?options=keyValues&orderBy=id",
        json={"entities": [{"id": "Room2"}], "attrs": ["co2"]},
    )
    assert q.json() == [{"id": "Room2", "type": "Room", "co2": 5}]
    r = client.post(
        op, json={"actionType": "delete", "entities": [{"id": "Room1"}, {"id": "Room2"}]}
    )
    assert r.status_code == 204
    assert client.get(E).json() == []
    assert error(client.post(op, json={"actionType": "explode", "entities": [room()]})) == (
        400,
        "BadRequest",
    )


def test_services_and_service_paths_isolate(client: TestClient) -> None:
    def post(body: dict[str, Any], **headers: str) -> None:
        assert client.post(E, json=body, headers=headers).status_code == 201

    post(
        room("Room1"),
        **{
            "Fiware-Service": "komae",
            "Fiware-ServicePath": "/庁舎".encode().decode("latin-1") if False else "/honcho/floor1",
        },
    )
    post(room("Room2"), **{"Fiware-Service": "komae", "Fiware-ServicePath": "/honcho/floor2"})
    post(room("Room3"), **{"Fiware-Service": "komae", "Fiware-ServicePath": "/annex"})
    post(room("Room1"), **{"Fiware-Service": "chofu"})

    def ids(**headers: str) -> list[str]:
        return sorted(e["id"] for e in client.get(f"{E}?type=Room", headers=headers).json())

    assert ids(**{"Fiware-Service": "komae"}) == ["Room1", "Room2", "Room3"]
    assert ids(**{"Fiware-Service": "Komae", "Fiware-ServicePath": "/honcho/floor1"}) == ["Room1"]
    assert ids(**{"Fiware-Service": "komae", "Fiware-ServicePath": "/honcho/#"}) == [
        "Room1",
        "Room2",
    ]
    assert ids(**{"Fiware-Service": "komae", "Fiware-ServicePath": "/honcho/floor2, /annex"}) == [
        "Room2",
        "Room3",
    ]
    assert ids(**{"Fiware-Service": "komae", "Fiware-ServicePath": "/nowhere"}) == []
    assert ids(**{"Fiware-Service": "chofu"}) == ["Room1"]
    assert ids() == []
    assert ids(**{"Fiware-Service": "inagi"}) == []
    h = {"Fiware-Service": "komae", "Fiware-ServicePath": "/annex"}
    assert client.get(f"{E}/Room1", headers=h).status_code == 404
    assert (
        client.patch(f"{E}/Room1/attrs", json={"temperature": {"value": 1}}, headers=h).status_code
        == 404
    )
    # the same tenant and scope through NGSI-LD
    ld = client.get(
        "/ngsi-ld/v1/entities?type=Room&scopeQ=/honcho/%23", headers={"NGSILD-Tenant": "komae"}
    )
    assert sorted(e["id"] for e in ld.json()) == ["Room1", "Room2"]
    assert ld.json()[0]["scope"].startswith("/honcho/")


def test_cross_api_round_trips(client: TestClient) -> None:
    # NGSI-LD -> v2
    ld = {
        "id": "urn:ngsi-ld:Shelter:komae-1",
        "type": "Shelter",
        "name": {"type": "Property", "value": "狛江第一小学校"},
        "capacity": {"type": "Property", "value": 300, "unitCode": "C62"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
        "operator": {"type": "Relationship", "object": "urn:ngsi-ld:City:komae"},
    }
    assert client.post("/ngsi-ld/v1/entities", json=ld, headers=JSON).status_code == 201
    got = client.get(f"{E}/urn:ngsi-ld:Shelter:komae-1").json()
    assert got["name"] == {"type": "Text", "value": "狛江第一小学校", "metadata": {}}
    assert got["capacity"]["metadata"] == {"unitCode": {"type": "Text", "value": "C62"}}
    assert got["location"]["type"] == "geo:json"
    assert got["operator"] == {
        "type": "Relationship",
        "value": "urn:ngsi-ld:City:komae",
        "metadata": {},
    }
    # v2 -> NGSI-LD, by id when the v2 id is a URI
    client.post(
        E,
        json={
            "id": "urn:ngsi-ld:Room:1",
            "type": "Room",
            "temperature": {"value": 20, "type": "Number"},
        },
    )
    r = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Room:1")
    assert r.json()["temperature"] == {"type": "Property", "value": 20}
    assert r.json()["type"] == "Room"
    # an NGSI-LD update is seen by v2, and a v2 update by NGSI-LD
    client.patch(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:Room:1/attrs",
        json={"temperature": {"type": "Property", "value": 21}},
        headers=JSON,
    )
    assert (
        client.get(
            f"{E}/urn:ngsi-ld:Room:1/attrs/temperature/value", headers={"Accept": "text/plain"}
        ).text
        == "21"
    )
    client.put(f"{E}/urn:ngsi-ld:Room:1/attrs/temperature/value", content="22", headers=TEXT)
    assert (
        client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Room:1?options=keyValues").json()[
            "temperature"
        ]
        == 22
    )


def test_v2_writes_build_history_and_fire_ngsi_ld_subscriptions(
    client: TestClient, receiver: Receiver
) -> None:
    sub = {
        "type": "Subscription",
        "entities": [{"type": "Room"}],
        "watchedAttributes": ["temperature"],
        "notification": {"endpoint": {"uri": receiver.url}, "format": "keyValues"},
    }
    assert client.post("/ngsi-ld/v1/subscriptions", json=sub, headers=JSON).status_code == 201
    client.post(E, json={"id": "urn:ngsi-ld:Room:2", "type": "Room", "temperature": {"value": 20}})
    receiver.wait(1)
    client.put(f"{E}/urn:ngsi-ld:Room:2/attrs/temperature/value", content="24", headers=TEXT)
    got = receiver.wait(2)
    assert [n[1]["data"][0]["temperature"] for n in got[:2]] == [20, 24]
    history = client.get(
        "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Room:2?options=temporalValues"
    ).json()
    assert [v[0] for v in history["temperature"]["values"]] == [20, 24]


def test_version_entry_point_and_openapi(client: TestClient) -> None:
    version = client.get("/version").json()
    assert "version" in version["orion"]  # Orion's shape, which v2 clients read
    # and Orion-LD's, which NGSI-LD clients read to recognise the broker
    assert version["orionld version"]
    assert version["orion version"] == version["orion"]["version"]
    assert version["uptime"].endswith(" s")
    assert version["renkei"]["ngsi-ld"]
    assert client.get("/v2").json()["entities_url"] == "/v2/entities"
    spec = get_openapi(title="v2", version="0", routes=ngsi_v2.router.routes)
    params = {p["name"] for p in spec["paths"]["/v2/entities"]["get"]["parameters"]}
    assert {"q", "mq", "georel", "coords", "idPattern", "options", "fiware-service"} <= params
    assert "fiware-servicepath" in params
    value = spec["paths"]["/v2/entities/{entity_id}/attrs/{attr_name}/value"]["put"]
    assert set(value["requestBody"]["content"]) == {"application/json", "text/plain"}
