"""The URL of a forwarded request: the client's question, asked again of the source
(clauses 4.3.6.1, 5.7.1.4, 5.7.2.4), against a real HTTP context source on loopback.

A source is asked what the client asked, in the client's words and order, narrowed to
what its registration holds (clause 4.3.6.1: "all constraints specified in the
registration shall be respected"); nothing the client did not ask for is added (no
``options=sysAttrs``, ``count`` or page of the hub's own), so that a source sees the same
request whether a client or a hub sends it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.broker.federation.source import Source
from tests.conftest import JSON

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
BUS = "urn:ngsi-ld:Bus:京王-1"
STOP = "urn:ngsi-ld:BusStop:調布駅"


def bus() -> dict[str, Any]:
    return {
        "id": BUS,
        "type": "Bus",
        "路線": {"type": "Property", "value": "調布駅北口 → 深大寺"},
        "次の停留所": {"type": "Relationship", "object": STOP},
    }


def register(client: TestClient, url: str, *, operations: Any = None, **info: Any) -> None:
    body = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:京王バス",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Bus"}], **info}],
        "endpoint": url,
    }
    if operations is not None:
        body["operations"] = operations
    r = client.post(R, json=body, headers=JSON)
    assert r.status_code == 201, r.text


def test_a_query_is_asked_again_as_the_client_wrote_it(hub: TestClient, cs: Source) -> None:
    """Clause 5.7.2.4 (Query Entities) with an inclusive registration: the source is
    asked the client's query, parameters in the client's order, nothing added."""
    register(hub, cs.url)
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [bus()])
    r = hub.get(E, params={"attrs": "路線", "type": "Bus"})
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [BUS]
    assert r.json()[0]["路線"]["value"] == "調布駅北口 → 深大寺"
    sent = cs.requests[-1]
    assert list(sent.query.items()) == [("attrs", "路線"), ("type", "Bus")]


def test_what_the_registration_narrows_is_added_after_the_clients_own(
    hub: TestClient, cs: Source
) -> None:
    """Clause 4.3.6.1: "all constraints specified in the registration shall be
    respected": a source registered for one bus and its route only is asked for that
    id and that attribute, after what the client wrote."""
    register(hub, cs.url, propertyNames=["路線"])
    body = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:京王バス",
        "information": [{"entities": [{"id": BUS, "type": "Bus"}], "propertyNames": ["路線"]}],
    }
    r = hub.patch(f"{R}/urn:ngsi-ld:ContextSourceRegistration:京王バス", json=body, headers=JSON)
    assert r.status_code == 204, r.text
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [bus()])
    r = hub.get(E, params={"type": "Bus"})
    assert r.status_code == 200, r.text
    assert list(cs.requests[-1].query.items()) == [("type", "Bus"), ("id", BUS), ("attrs", "路線")]


def test_a_page_and_a_count_are_passed_on_only_when_asked(hub: TestClient, cs: Source) -> None:
    """Clause 5.7.2.4: the hub cuts the merged list into the client's page, so a source
    is asked for the first ``offset + limit`` entities, and counts when the client asked
    for a count; a query without them reaches the source without them."""
    register(hub, cs.url)
    cs.answer("GET", "/ngsi-ld/v1/entities", 200, [bus()], **{"NGSILD-Results-Count": "1"})
    r = hub.get(E, params={"type": "Bus", "offset": "2", "limit": "3", "count": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["NGSILD-Results-Count"] == "1"
    assert list(cs.requests[-1].query.items()) == [
        ("type", "Bus"),
        ("limit", str(2 + 3 + 1)),  # one more than the page tells whether one follows
        ("count", "true"),
    ]
    r = hub.get(E, params={"type": "Bus", "options": "keyValues"})
    assert r.status_code == 200, r.text
    assert r.json()[0]["路線"] == "調布駅北口 → 深大寺"  # rendered here, asked normalized
    assert list(cs.requests[-1].query.items()) == [("type", "Bus")]


def test_a_retrieve_is_asked_again_without_additions(hub: TestClient, cs: Source) -> None:
    """Clause 5.7.1.4 (Retrieve Entity): the source is asked for the entity by id, with
    ``options=sysAttrs`` only when the client asked for system attributes."""
    register(hub, cs.url)
    cs.answer("GET", f"/ngsi-ld/v1/entities/{BUS}", 200, bus())
    r = hub.get(f"{E}/{BUS}")
    assert r.status_code == 200, r.text
    assert r.json()["次の停留所"]["object"] == STOP
    assert cs.requests[-1].raw_query == ""
    r = hub.get(f"{E}/{BUS}", params={"options": "sysAttrs,keyValues"})
    assert r.status_code == 200, r.text
    assert cs.requests[-1].query == {"options": "sysAttrs"}


def test_a_write_is_forwarded_without_the_operations_defaults(hub: TestClient, cs: Source) -> None:
    """Clause 5.6.8 (Batch Entity Creation or Update): an upsert replaces the entities
    unless ``options=update`` is given, so ``options=replace`` names the default and
    the source is asked the same without it; ``options=update`` is passed on. Clause
    5.6.5: ``deleteAll`` is false unless given, likewise."""
    register(hub, cs.url, operations=["redirectionOps"])
    cs.answer("POST", "/ngsi-ld/v1/entityOperations/upsert", 204, None)
    cs.answer("DELETE", f"/ngsi-ld/v1/entities/{BUS}/attrs/路線", 204, None)
    upsert = "/ngsi-ld/v1/entityOperations/upsert"
    r = hub.post(upsert, params={"options": "replace"}, json=[bus()], headers=JSON)
    assert r.status_code in (201, 204), r.text
    assert cs.requests[-1].raw_query == ""
    assert cs.requests[-1].body[0]["路線"]["value"] == "調布駅北口 → 深大寺"
    r = hub.post(upsert, params={"options": "update"}, json=[bus()], headers=JSON)
    assert r.status_code == 204, r.text
    assert cs.requests[-1].query == {"options": "update"}
    r = hub.delete(f"{E}/{BUS}/attrs/路線", params={"deleteAll": "false"})
    assert r.status_code == 204, r.text
    assert cs.requests[-1].method == "DELETE"
    assert cs.requests[-1].raw_query == ""


def test_a_query_body_is_forwarded_with_the_clients_page_only(hub: TestClient, cs: Source) -> None:
    """Clause 5.7.2.4 with a Query body (``POST /entityOperations/query``) sent to a
    source that allows ``queryBatch`` only: the body is the client's selection; of the
    URL parameters, only the page and count the client asked for go along."""
    register(hub, cs.url, operations=["queryBatch"])
    cs.answer("POST", "/ngsi-ld/v1/entityOperations/query", 200, [bus()])
    query = {"type": "Query", "entities": [{"type": "Bus"}], "q": '路線=="調布駅北口 → 深大寺"'}
    path = "/ngsi-ld/v1/entityOperations/query"
    r = hub.post(path, json=query, headers=JSON)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [BUS]
    assert cs.requests[-1].body == query
    assert cs.requests[-1].raw_query == ""
    r = hub.post(path, params={"limit": "1", "count": "true"}, json=query, headers=JSON)
    assert r.status_code == 200, r.text
    assert list(cs.requests[-1].query.items()) == [("limit", "2"), ("count", "true")]


def test_a_temporal_query_is_asked_again_as_the_client_wrote_it(
    hub: TestClient, cs: Source
) -> None:
    """Clause 5.7.4 (Query Temporal Evolution of Entities) with a registration allowing
    ``queryTemporal``: the source is asked the client's temporal query, its parameters in
    the client's order, the page as the first ``offset + limit``, nothing added."""
    register(hub, cs.url, operations=["queryTemporal"])
    evolution = {
        "id": BUS,
        "type": "Bus",
        "路線": [
            {
                "type": "Property",
                "value": "調布駅北口 → 深大寺",
                "observedAt": "2026-09-01T09:00:00Z",
            }
        ],
    }
    cs.answer("GET", "/ngsi-ld/v1/temporal/entities", 200, [evolution])
    asked = {"type": "Bus", "timerel": "after", "timeAt": "2026-09-01T00:00:00Z"}
    r = hub.get("/ngsi-ld/v1/temporal/entities", params=asked)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [BUS]
    assert list(cs.requests[-1].query.items()) == list(asked.items())
    r = hub.get("/ngsi-ld/v1/temporal/entities", params={**asked, "offset": "1", "limit": "1"})
    assert r.status_code == 200, r.text
    assert r.json() == []  # the one evolution is on the first page
    assert list(cs.requests[-1].query.items()) == [*asked.items(), ("limit", str(1 + 1))]
