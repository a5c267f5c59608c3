"""Entity maps of distributed queries (ETSI GS CIM 009 v1.8.1/v1.9.1, clauses 5.2.39,
5.7.2.4, 5.5.9.3): two real hubs (``renkei serve`` processes on 127.0.0.1, each with
its own SQLite store), Shibuya's holding its car parks and Tokyo's holding one of its
own and an inclusive registration of Shibuya's; and a recording context source to see
what each page asks of whom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.model.entity import iri_to_uri
from tests.broker.federation.source import Source
from tests.conftest import JSON, make_settings
from tests.support import broker

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
REG = "urn:ngsi-ld:ContextSourceRegistration:渋谷区"
SHIBUYA = "urn:ngsi-ld:駐車場:渋谷-"
TOCHO = "urn:ngsi-ld:駐車場:都庁-1"


def parking(eid: str, name: str) -> dict[str, Any]:
    return {
        "id": eid,
        "type": "駐車場",
        "名称": {"type": "Property", "value": name},
        "空き台数": {"type": "Property", "value": 12},
    }


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("entitymaps")
    with broker(tmp / "shibuya.db") as shibuya, broker(tmp / "tokyo.db") as tokyo:
        made = [parking(f"{SHIBUYA}{n}", f"渋谷第{n}駐車場") for n in (1, 2, 3)]
        r = httpx.post(f"{shibuya}/ngsi-ld/v1/entityOperations/create", json=made, headers=JSON)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{tokyo}{E}", json=parking(TOCHO, "都庁駐車場"), headers=JSON)
        assert r.status_code == 201, r.text
        reg = {
            "id": REG,
            "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "駐車場"}]}],
            "endpoint": shibuya,
            "management": {"timeout": 3000},
        }
        r = httpx.post(f"{tokyo}{R}", json=reg, headers=JSON)
        assert r.status_code == 201, r.text
        yield {"shibuya": shibuya, "tokyo": tokyo}


def ids(response: Any) -> list[str]:
    """The ids of a query answer (from a test client or an httpx client)."""
    return [e["id"] for e in response.json()]


def test_a_distributed_query_maps_each_entity_to_who_holds_it(hubs: dict[str, str]) -> None:
    """Clause 5.2.39: entityMap is "A set of key-value pairs whose keys shall be strings
    representing Entity ids and whose values shall be an array holding every
    CSourceRegistration id which is relevant ... The key "@none" shall be used to refer
    to an Entity that is held locally"; linkedMaps holds "CSourceRegistration ids ...
    and whose values shall represent the associated EntityMap id used by the
    ContextSource". Clause 5.7.2.4: "If an EntityMap is in use for this operation, and
    an EntityMap entry linked to a Context Source Registration is found, the location of
    the EntityMap shall be passed as part of the forwarded request". Clause 5.5.9.3:
    the set of entities is fixed by the query that made the map."""
    tokyo, shibuya = hubs["tokyo"], hubs["shibuya"]
    q = {"type": "駐車場", "limit": "2", "count": "true"}
    first = httpx.get(f"{tokyo}{E}", params={**q, "entityMap": "true"})
    assert first.status_code == 201, first.text
    assert ids(first) == [f"{SHIBUYA}1", f"{SHIBUYA}2"]
    assert first.headers["NGSILD-Results-Count"] == "4"
    where = first.headers["NGSILD-EntityMap"]
    made = httpx.get(f"{tokyo}{where}").json()
    assert made["entityMap"] == {
        f"{SHIBUYA}1": [REG],
        f"{SHIBUYA}2": [REG],
        f"{SHIBUYA}3": [REG],
        TOCHO: ["@none"],
    }
    # Shibuya's hub made a map of its own part, linked from Tokyo's
    linked = made["linkedMaps"][REG]
    theirs = httpx.get(f"{shibuya}{linked}")
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["entityMap"] == {f"{SHIBUYA}{n}": ["@none"] for n in (1, 2, 3)}

    # a car park opened at Shibuya after the map was made is not in this query's pages
    r = httpx.post(f"{shibuya}{E}", json=parking(f"{SHIBUYA}0", "渋谷第零駐車場"), headers=JSON)
    assert r.status_code == 201, r.text
    second = httpx.get(
        f"{tokyo}{E}", params={**q, "offset": "2"}, headers={"NGSILD-EntityMap": where}
    )
    assert second.status_code == 200, second.text
    assert second.headers["NGSILD-EntityMap"] == where
    assert ids(second) == [f"{SHIBUYA}3", TOCHO]
    assert 'rel="next"' not in second.headers.get("Link", "")

    # one closed at Shibuya leaves the map when a page comes to it (5.5.9.3)
    assert httpx.delete(f"{shibuya}{E}/{SHIBUYA}3").status_code == 204
    third = httpx.get(
        f"{tokyo}{E}", params={**q, "offset": "2"}, headers={"NGSILD-EntityMap": where}
    )
    assert ids(third) == [TOCHO]
    assert third.headers["NGSILD-Results-Count"] == "3"
    assert f"{SHIBUYA}3" not in httpx.get(f"{tokyo}{where}").json()["entityMap"]
    # Shibuya's own map was used for its part and kept its other entities
    assert sorted(httpx.get(f"{shibuya}{linked}").json()["entityMap"]) == [
        f"{SHIBUYA}1",
        f"{SHIBUYA}2",
    ]
    # without a map, the same query sees what is there now
    now = httpx.get(f"{tokyo}{E}", params={"type": "駐車場", "limit": "10"})
    assert ids(now) == [f"{SHIBUYA}0", f"{SHIBUYA}1", f"{SHIBUYA}2", TOCHO]


# -- what each page asks of whom: a recording source -----------------------------------------


@pytest.fixture
def hub(tmp_path: Path, cs: Source) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, hub_id="tokyo-hub"))) as c:
        reg = {
            "id": REG,
            "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "駐車場"}]}],
            "endpoint": cs.url,
        }
        assert c.post(R, json=reg, headers=JSON).status_code == 201
        for n in (1, 2):
            assert (
                c.post(
                    E, json=parking(f"urn:ngsi-ld:駐車場:あ-{n}", "都"), headers=JSON
                ).status_code
                == 201
            )
        yield c


def test_a_page_asks_only_the_sources_the_map_names(hub: TestClient, cs: Source) -> None:
    """Clause 5.7.2.4: "If the data has not expired, only the retrieved EntityMap shall
    be used to determine which Context Source Registrations match", and the location of
    the source's own map "shall be passed as part of the forwarded request". A page
    holding only this hub's entities asks no source; a page holding a source's entities
    asks it for those alone, by id, with its map."""
    remote = [parking(f"{SHIBUYA}{n}", f"渋谷第{n}駐車場") for n in (1, 2)]
    theirs = "/ngsi-ld/v1/entityMaps/urn:ngsi-ld:EntityMap:shibuya"
    cs.answer(
        "GET",
        "/ngsi-ld/v1/entities",
        200,
        remote,
        **{"NGSILD-EntityMap": theirs, "NGSILD-Results-Count": "2"},
    )
    q = {"type": "駐車場", "limit": "2"}
    first = hub.get(E, params={**q, "entityMap": "true"})
    assert first.status_code == 201, first.text
    made = cs.requests[0]
    assert made.query["entityMap"] == "true"
    where = first.headers["NGSILD-EntityMap"]
    assert hub.get(where).json()["linkedMaps"] == {REG: theirs}
    # ids sort as あ-1, あ-2, 渋谷-1, 渋谷-2: the first page is this hub's alone
    asked = len(cs.requests)
    again = hub.get(E, params=q, headers={"NGSILD-EntityMap": where})
    assert ids(again) == ["urn:ngsi-ld:駐車場:あ-1", "urn:ngsi-ld:駐車場:あ-2"]
    assert len(cs.requests) == asked
    # the second page is the source's: asked for exactly those two, with its map
    second = hub.get(E, params={**q, "offset": "2"}, headers={"NGSILD-EntityMap": where})
    assert ids(second) == [f"{SHIBUYA}1", f"{SHIBUYA}2"]
    sent = cs.requests[-1]
    assert sent.query["id"] == f"{SHIBUYA}1,{SHIBUYA}2"
    assert sent.headers["ngsild-entitymap"] == theirs
    # retrieving one entity with the map: only the map says who holds it (clause
    # 5.7.1.4: "only the retrieved Entity Map shall be used to determine which Context
    # Source Registrations match the Entity ID")
    asked = len(cs.requests)
    one = hub.get(f"{E}/urn:ngsi-ld:駐車場:あ-1", headers={"NGSILD-EntityMap": where})
    assert one.status_code == 200, one.text
    assert len(cs.requests) == asked
    assert hub.get(f"{E}/urn:ngsi-ld:駐車場:あ-1").status_code == 200
    assert len(cs.requests) == asked + 1  # without the map, the registration matches
    # a source that fails: its entities stay in the map, and the answer says why
    cs.answer("GET", "/ngsi-ld/v1/entities", 500, {"type": "InternalError"})
    failed = hub.get(E, params={**q, "offset": "2"}, headers={"NGSILD-EntityMap": where})
    assert failed.status_code == 200
    assert ids(failed) == []
    # the header is ASCII: the registration's Japanese id goes percent-encoded
    assert iri_to_uri(REG) in failed.headers["NGSILD-Warning"]
    assert len(hub.get(where).json()["entityMap"]) == 4


def test_ids_sent_to_a_source_are_split_to_keep_urls_short() -> None:
    """A page forwarded by id names at most ID_CHARS encoded characters of ids per
    request, so a page of a thousand Japanese ids does not exceed a request line."""
    from urllib.parse import quote

    from broker.core.distributed import ID_CHARS, _chunks

    many = [f"urn:ngsi-ld:駐車場:渋谷区道玄坂-{n}" for n in range(1000)]
    chunks = _chunks(many)
    assert len(chunks) > 1
    assert [eid for chunk in chunks for eid in chunk] == many
    assert all(len(quote(",".join(c), safe=":,")) <= ID_CHARS for c in chunks)
