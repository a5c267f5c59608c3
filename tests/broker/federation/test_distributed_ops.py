"""Distributed temporal operations and query bodies between two real hubs (``renkei
serve`` processes, each with its own SQLite store): Komae's city hub holds the data,
the Tokyo prefecture hub holds registrations naming it, deleted after each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import broker

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
Q = "/ngsi-ld/v1/entityOperations/query"
R = "/ngsi-ld/v1/csourceRegistrations"
JSON = {"Content-Type": "application/json"}
LD = {"Content-Type": "application/ld+json"}

SHELTER = "urn:ngsi-ld:EvacuationShelter:狛江-1"
SHELTER_2 = "urn:ngsi-ld:EvacuationShelter:狛江-2"
GAUGE = "urn:ngsi-ld:WaterLevelObserved:多摩川-1"
#: an inline @context of the prefecture's own (no URL of its own: hosted by the hub)
VOCAB = {"AEDLocation": "https://tokyo.example/ns/AEDLocation", "名称": "https://schema.org/name"}


def at(day: int, hour: int = 9) -> str:
    return f"2026-09-{day:02d}T{hour:02d}:00:00Z"


def evacuees(*pairs: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"type": "Property", "value": v, "observedAt": t} for v, t in pairs]


def values(body: dict[str, Any], attr: str) -> list[Any]:
    return sorted(i["value"] for i in body.get(attr, []))


#: the registrations the running test made (deleted after it)
REGISTERED: list[str] = []


def register(url: str, name: str, endpoint: str, **extra: Any) -> None:
    body = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{name}",
        "type": "ContextSourceRegistration",
        "endpoint": endpoint,
        **extra,
    }
    r = httpx.post(f"{url}{R}", json=body, headers=LD if "@context" in body else JSON)
    assert r.status_code == 201, r.text
    REGISTERED.append(body["id"])


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("hubs")
    with broker(tmp / "komae.db") as komae, broker(tmp / "tokyo.db") as tokyo:
        for eid in (SHELTER, SHELTER_2):
            shelter = {
                "id": eid,
                "type": "EvacuationShelter",
                "避難者数": evacuees((120, at(1)), (300, at(2))),
            }
            r = httpx.post(f"{komae}{T}", json=shelter, headers=JSON)
            assert r.status_code == 201, r.text
        aeds = [
            {
                "@context": VOCAB,
                "id": f"urn:ngsi-ld:AEDLocation:狛江-{n}",
                "type": "AEDLocation",
                "名称": {"type": "Property", "value": name},
            }
            for n, name in ((1, "狛江市役所"), (2, "狛江市民センター"), (3, "狛江駅前"))
        ]
        r = httpx.post(f"{komae}/ngsi-ld/v1/entityOperations/create", json=aeds, headers=LD)
        assert r.status_code == 201, r.text
        yield {"komae": komae, "tokyo": tokyo}


@pytest.fixture(autouse=True)
def no_registrations_left(hubs: dict[str, str]) -> Iterator[None]:
    yield
    tokyo = hubs["tokyo"]
    while REGISTERED:
        assert httpx.delete(f"{tokyo}{R}/{REGISTERED.pop()}").status_code == 204


# -- temporal retrieve of one entity -------------------------------------------------------------


def test_temporal_retrieve_joins_what_the_city_holds(hubs: dict[str, str]) -> None:
    """Clause 5.7.3.4: "For any exclusive, redirect and inclusive Context Source, the
    request is forwarded for remote retrieval by matching endpoints. and remote
    Attribute data for the Entity is received. The result is then merged together with
    S1", S1 being what is held locally."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    register(
        tokyo,
        "inclusive",
        komae,
        information=[{"entities": [{"type": "EvacuationShelter"}]}],
    )
    # the prefecture's own instance of the same entity (written here only)
    own = {"id": SHELTER, "type": "EvacuationShelter", "避難者数": evacuees((450, at(3)))}
    r = httpx.post(f"{tokyo}{T}", json=own, headers=JSON, params={"local": "true"})
    assert r.status_code == 201, r.text
    got = httpx.get(f"{tokyo}{T}/{SHELTER}")
    assert got.status_code == 200, got.text
    assert values(got.json(), "避難者数") == [120, 300, 450]
    assert "NGSILD-Warning" not in got.headers
    # the temporal query is passed on with it (timerel narrows the instances there too)
    late = httpx.get(f"{tokyo}{T}/{SHELTER}", params={"timerel": "after", "timeAt": at(2, 0)})
    assert values(late.json(), "避難者数") == [300, 450]
    # local=true: this hub's own instances only; an id nobody holds: 404
    mine = httpx.get(f"{tokyo}{T}/{SHELTER}", params={"local": "true"})
    assert values(mine.json(), "避難者数") == [450]
    missing = httpx.get(f"{tokyo}{T}/urn:ngsi-ld:EvacuationShelter:稲城-9")
    assert missing.status_code == 404


def test_an_auxiliary_source_only_adds_instances_nobody_else_has(hubs: dict[str, str]) -> None:
    """Clause 5.7.3.4: "For any auxiliary Context Source Registrations the remote
    Attribute data received is added to S1 only when the Attribute instance, whose value
    of the timeproperty ... is not present in any of the Attribute instances received
    from elsewhere."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    register(
        tokyo,
        "auxiliary",
        komae,
        mode="auxiliary",
        information=[{"entities": [{"type": "EvacuationShelter"}]}],
    )
    # the prefecture's own reading at day 2 wins over the city's at the same time
    own = {"id": SHELTER_2, "type": "EvacuationShelter", "避難者数": evacuees((299, at(2)))}
    r = httpx.post(f"{tokyo}{T}", json=own, headers=JSON, params={"local": "true"})
    assert r.status_code == 201, r.text
    got = httpx.get(f"{tokyo}{T}/{SHELTER_2}")
    assert got.status_code == 200, got.text
    assert values(got.json(), "避難者数") == [120, 299]


# -- temporal writes -----------------------------------------------------------------------------


def test_temporal_writes_go_to_a_redirect_source(hubs: dict[str, str]) -> None:
    """Clauses 5.6.11-5.6.16: "If any redirect Context Source Registrations exist that
    match against the input data, that input data is forwarded for remote processing",
    and the attributes forwarded are "removed from the Fragment and not processed
    further": nothing of the gauge is written at the prefecture."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    register(
        tokyo,
        "redirect",
        komae,
        mode="redirect",
        information=[{"entities": [{"type": "WaterLevelObserved"}]}],
        operations=[
            "upsertTemporal",
            "appendAttrsTemporal",
            "deleteAttrsTemporal",
            "deleteTemporal",
            "retrieveTemporal",
        ],
    )
    gauge = {
        "id": GAUGE,
        "type": "WaterLevelObserved",
        "水位": [{"type": "Property", "value": 1.2, "observedAt": at(1)}],
        "流量": [{"type": "Property", "value": 80, "observedAt": at(1)}],
    }
    r = httpx.post(f"{tokyo}{T}", json=gauge, headers=JSON)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith("/ngsi-ld/v1/temporal/entities/")
    assert values(httpx.get(f"{komae}{T}/{GAUGE}").json(), "水位") == [1.2]
    assert httpx.get(f"{tokyo}{T}/{GAUGE}", params={"local": "true"}).status_code == 404
    more = {"水位": [{"type": "Property", "value": 1.8, "observedAt": at(2)}]}
    r = httpx.post(f"{tokyo}{T}/{GAUGE}/attrs", json=more, headers=JSON)
    assert r.status_code == 204, r.text
    through = httpx.get(f"{tokyo}{T}/{GAUGE}")  # read back through the prefecture
    assert values(through.json(), "水位") == [1.2, 1.8]
    r = httpx.delete(f"{tokyo}{T}/{GAUGE}/attrs/流量")
    assert r.status_code == 204, r.text
    assert "流量" not in httpx.get(f"{komae}{T}/{GAUGE}").json()
    assert httpx.delete(f"{tokyo}{T}/{GAUGE}").status_code == 204
    assert httpx.get(f"{komae}{T}/{GAUGE}").status_code == 404


def test_an_exclusive_source_takes_its_attributes_of_a_temporal_write(
    hubs: dict[str, str],
) -> None:
    """Clause 5.6.11.4: "If an exclusive Context Source Registration already exists for
    this Entity id (URI), Attributes from matching input data are forwarded for remote
    processing"; the others are written here. A registration that does not accept the
    operation makes it a Conflict."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    gauge = "urn:ngsi-ld:WaterLevelObserved:野川-1"
    register(
        tokyo,
        "exclusive",
        komae,
        mode="exclusive",
        information=[
            {
                "entities": [{"type": "WaterLevelObserved", "id": gauge}],
                "propertyNames": ["水位"],
            }
        ],
        operations=["upsertTemporal", "retrieveTemporal"],
    )
    body = {
        "id": gauge,
        "type": "WaterLevelObserved",
        "水位": [{"type": "Property", "value": 0.7, "observedAt": at(4)}],
        "水温": [{"type": "Property", "value": 18.5, "observedAt": at(4)}],
    }
    r = httpx.post(f"{tokyo}{T}", json=body, headers=JSON)
    assert r.status_code == 201, r.text
    there = httpx.get(f"{komae}{T}/{gauge}").json()
    assert values(there, "水位") == [0.7]
    assert "水温" not in there
    here = httpx.get(f"{tokyo}{T}/{gauge}", params={"local": "true"}).json()
    assert values(here, "水温") == [18.5]
    assert "水位" not in here
    # appendAttrsTemporal is not among its operations: the gauge's 水位 cannot be added
    more = {"水位": [{"type": "Property", "value": 0.9, "observedAt": at(5)}]}
    r = httpx.post(f"{tokyo}{T}/{gauge}/attrs", json=more, headers=JSON)
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Conflict"
    # invalid input is refused before anything is sent on
    bad = {**body, "水位": [{"type": "Property"}]}
    r = httpx.post(f"{tokyo}{T}", json=bad, headers=JSON)
    assert r.status_code == 400, r.text
    assert values(httpx.get(f"{komae}{T}/{gauge}").json(), "水位") == [0.7]


# -- query bodies ----------------------------------------------------------------------------------


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["id"] for e in response.json())


#: two entity selectors of one Query body: an id and an idPattern (Komae's 1 and 3)
TWO_SELECTORS = [
    {"type": "AEDLocation", "id": "urn:ngsi-ld:AEDLocation:狛江-1"},
    {"type": "AEDLocation", "idPattern": ".*-3$"},
]


def test_a_query_body_reaches_a_source_allowing_query_batch_only(hubs: dict[str, str]) -> None:
    """Clause 4.3.6.1: sources "may indicate that they are only willing to respond to a
    limited subset of API operations. Context Brokers shall respect this". A source
    registered for queryBatch only is asked with a Query body, for a Query body with
    several entity selectors and for a GET query alike."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    register(
        tokyo,
        "batch",
        komae,
        information=[{"entities": [{"type": "AEDLocation"}]}],
        operations=["queryBatch"],
        **{"@context": VOCAB},
    )
    query = {
        "@context": VOCAB,
        "type": "Query",
        "entities": TWO_SELECTORS,
    }
    r = httpx.post(f"{tokyo}{Q}", json=query, headers=LD)
    assert ids(r) == ["urn:ngsi-ld:AEDLocation:狛江-1", "urn:ngsi-ld:AEDLocation:狛江-3"]
    assert "NGSILD-Warning" not in r.headers
    names = {e["名称"]["value"] for e in r.json()}
    assert names == {"狛江市役所", "狛江駅前"}
    # a GET query, sent on as a Query body (the @context by a Link header)
    hosted = httpx.post(f"{tokyo}/ngsi-ld/v1/jsonldContexts", json={"@context": VOCAB})
    assert hosted.status_code == 201, hosted.text
    url = tokyo + hosted.headers["Location"]
    r = httpx.get(
        f"{tokyo}{E}",
        params={"type": "AEDLocation", "q": '名称=="狛江市民センター"'},
        headers={"Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"'},
    )
    assert ids(r) == ["urn:ngsi-ld:AEDLocation:狛江-2"]


def test_a_query_body_reaches_a_source_allowing_query_entity_only(hubs: dict[str, str]) -> None:
    """The same Query body with its inline @context, to a source registered for
    queryEntity only: one GET /entities per entity selector, the @context named by a
    Link header to where this hub hosts it."""
    tokyo, komae = hubs["tokyo"], hubs["komae"]
    register(
        tokyo,
        "entity",
        komae,
        information=[{"entities": [{"type": "AEDLocation"}]}],
        operations=["queryEntity"],
        **{"@context": VOCAB},
    )
    query = {
        "@context": VOCAB,
        "type": "Query",
        "entities": TWO_SELECTORS,
        "attrs": ["名称"],
    }
    r = httpx.post(f"{tokyo}{Q}", json=query, headers=LD, params={"count": "true"})
    assert ids(r) == ["urn:ngsi-ld:AEDLocation:狛江-1", "urn:ngsi-ld:AEDLocation:狛江-3"]
    assert r.headers["NGSILD-Results-Count"] == "2"
    assert "NGSILD-Warning" not in r.headers
