"""Query Entities against the clauses, one test per rule: the q grammar (clause 4.9) over
HTTP, parameter validation (clause 5.7.2), pagination links (clauses 5.5.9 and 6.3.10),
``expandValues`` and the Orion-LD compatible unfiltered query setting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.conftest import JSON, make_settings

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"


def shelter(n: int, **attrs: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Shelter:{n}", "type": "Shelter", **attrs}


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def load(client: TestClient) -> None:
    body = [
        shelter(
            1,
            name=prop("狛江第一小学校", kana=prop("こまえだいいち")),
            address=prop({"street-address": {"number": 810, "town": "和泉本町"}, "city": "狛江市"}),
            capacity=prop(300),
            opened=prop("2020-04-01"),
            category={"type": "VocabProperty", "vocab": "school"},
        ),
        shelter(
            2,
            name=prop("緑野小学校"),
            address=prop({"street-address": {"number": 12, "town": "東和泉"}, "city": "狛江市"}),
            capacity=prop(150),
            opened=prop("2021-10-01"),
            category={"type": "VocabProperty", "vocab": "park"},
        ),
        shelter(
            3,
            name=prop('"中央"公民館'),
            address=prop({"street-address": {"number": 3}, "city": "調布市"}),
            capacity=prop(80),
            tags=prop(["洪水", "地震"]),
        ),
    ]
    r = client.post("/ngsi-ld/v1/entityOperations/upsert", json=body, headers=JSON)
    assert r.status_code == 201, r.text


def found(client: TestClient, q: str, **params: str) -> list[int]:
    r = client.get(E, params={"type": "Shelter", "q": q, **params})
    assert r.status_code == 200, r.text
    return sorted(int(e["id"].rsplit(":", 1)[1]) for e in r.json())


# -- clause 4.9: the query language ----------------------------------------------------------


def test_trailing_path_with_dots_is_the_same_as_bracketed_keys(client: TestClient) -> None:
    # clause 4.9: TrailingPath = "[" AttrName *("." AttrName) "]" -- the keys of a
    # compound value may be given dotted inside one bracket or one bracket each
    load(client)
    assert found(client, "address[street-address.number]==810") == [1]
    assert found(client, "address[street-address][number]==810") == [1]
    assert found(client, 'address[street-address.town]=="東和泉"') == [2]
    assert found(client, "address[street-address.town]") == [1, 2]  # existence of a key
    assert found(client, "!address[street-address.town]") == [3]
    assert found(client, 'address[city]=="狛江市";address[street-address.number]<100') == [2]


def test_attribute_paths_name_sub_attributes(client: TestClient) -> None:
    # clause 4.9: an attribute path "attr.sub" names a sub-attribute (Property of a Property)
    load(client)
    assert found(client, 'name.kana=="こまえだいいち"') == [1]
    assert found(client, "name.kana") == [1]
    assert found(client, "!name.kana") == [2, 3]


def test_values_quoted_numbers_dates_ranges_and_lists(client: TestClient) -> None:
    # clause 4.9: quotedStr, Number, date; Range = ComparableValue ".." ComparableValue and
    # ValueList = Value 1*("," Value) go with == and != only
    load(client)
    assert found(client, 'name=="緑野小学校"') == [2]
    assert found(client, r'name=="\"中央\"公民館"') == [3]  # a quote inside a quoted string
    assert found(client, "capacity>=150") == [1, 2]
    assert found(client, "capacity==100..300") == [1, 2]
    assert found(client, "capacity!=100..300") == [3]
    assert found(client, "capacity==80,300") == [1, 3]
    assert found(client, "capacity!=80,300") == [2]
    assert found(client, "opened>2021-01-01") == [2]
    assert found(client, "opened==2020-01-01..2020-12-31") == [1]
    assert found(client, 'tags=="地震"') == [3]  # an array value matches by any element


def test_patterns_and_the_logical_operators(client: TestClient) -> None:
    # clause 4.9: patternOp "~=" and notPatternOp "!~=" take a regular expression;
    # ";" is and, "|" is or, and parentheses group
    load(client)
    assert found(client, "name~=小学校$") == [1, 2]
    assert found(client, "name!~=小学校$") == [3]
    assert found(client, 'name~="^狛江"') == [1]
    assert found(client, "capacity>100;name~=緑") == [2]
    assert found(client, "capacity<100|name~=緑") == [2, 3]
    assert found(client, '(capacity<100|capacity>200);address[city]=="狛江市"') == [1]


def test_expand_values_expands_the_values_compared(client: TestClient) -> None:
    # clause 4.9 with the expandValues parameter: the values compared with the attributes
    # named are terms expanded with the request's @context, as a VocabProperty's are
    load(client)
    assert found(client, 'category=="school"') == []  # a VocabProperty holds an IRI
    assert found(client, f'category=="{VOCAB}school"') == [1]
    assert found(client, 'category=="school"', expandValues="category") == [1]
    assert found(client, 'category=="school","park"', expandValues="category") == [1, 2]
    assert found(client, 'name=="緑野小学校"', expandValues="category") == [2]


# -- clause 5.7.2: parameters checked, 400 BadRequestData naming the parameter --------------


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"q": "capacity=="}, "q"),
        ({"q": "capacity>>3"}, "q"),
        ({"q": 'name=="open'}, "q"),
        ({"q": "address[street-address.]==1"}, "q"),
        ({"q": "address[]"}, "q"),
        ({"q": "(capacity>1"}, "q"),
        ({"q": "capacity>=1..3"}, "q"),
        ({"q": "capacity>1,2"}, "q"),
        ({"q": "name~=(避難"}, "q"),
        ({"id": "避難所 1"}, "id"),
        ({"idPattern": "urn:("}, "idPattern"),
        ({"type": "Shel ter"}, "type"),
        ({"attrs": "capa city"}, "attrs"),
        ({"georel": "near;maxDistance==500"}, "georel"),
        ({"georel": "within", "geometry": "Point", "coordinates": "[139.5"}, "coordinates"),
        ({"geoQ": "{not json"}, "geoQ"),
        ({"scopeQ": "Tokyo"}, "scopeQ"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "x"}, "offset"),
        ({"orderBy": "capacity;sideways"}, "orderBy"),
        ({"joinLevel": "0"}, "joinLevel"),
        ({"lang": " "}, "lang"),
        ({"count": "yes"}, "count"),
    ],
)
def test_invalid_parameters_are_bad_request_data_naming_the_parameter(
    client: TestClient, params: dict[str, str], parameter: str
) -> None:
    # clause 5.7.2: "If ... the query or geo-query ... are not syntactically valid an
    # error of type BadRequestData shall be raised" -- the title says which parameter
    r = client.get(E, params={"type": "Shelter", **params})
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == ERR + "BadRequestData", problem
    assert parameter in problem["title"], problem
    assert problem["detail"]


def test_a_query_needs_a_selection(client: TestClient) -> None:
    # clause 5.7.2: a query without entity types, attribute names, q or a geo-query is
    # refused with BadRequestData
    load(client)
    r = client.get(E)
    assert r.status_code == 400
    assert r.json()["type"] == ERR + "BadRequestData"
    assert client.get(E, params={"limit": "5"}).status_code == 400


# -- clauses 5.5.9 and 6.3.10: pagination ------------------------------------------------------


def _links(r: Any) -> dict[str, str]:
    """rel -> target of the response's pagination links."""
    out = {}
    for value in r.headers.get_list("link"):
        for part in value.split(", <"):
            target, _, params = part.lstrip("<").partition(">")
            for rel in ("next", "prev"):
                if f'rel="{rel}"' in params:
                    out[rel] = target
    return out


def test_pages_link_to_the_next_and_previous_page(client: TestClient) -> None:
    # clause 5.5.9: a query answers at most "limit" entities from "offset"; the HTTP
    # binding links the pages with Link headers of relation "next" and "prev"
    for n in range(7):
        client.post(E, json=shelter(100 + n, capacity=prop(n)), headers=JSON)
    params = {"type": "Shelter", "q": "capacity>=0", "orderBy": "capacity", "limit": "3"}
    seen: list[str] = []
    r = client.get(E, params=params, headers={"Accept": "application/ld+json"})
    assert "prev" not in _links(r)
    pages = 1
    while True:
        assert r.status_code == 200, r.text
        seen += [e["id"] for e in r.json()]
        links = _links(r)
        if "next" not in links:
            break
        assert 'type="application/ld+json"' in r.headers["link"]
        r = client.get(links["next"], headers={"Accept": "application/ld+json"})
        pages += 1
        assert "prev" in _links(r)
    assert pages == 3
    assert seen == [f"urn:ngsi-ld:Shelter:{100 + n}" for n in range(7)]
    # the links keep every other parameter, and walk back from the last page
    back = client.get(_links(r)["prev"])
    assert [e["id"] for e in back.json()] == seen[3:6]
    # a page that ends exactly at the last entity has no next
    exact = client.get(E, params={**params, "limit": "7"})
    assert _links(exact) == {}
    # application/json answers carry the context link beside the page links
    first = client.get(E, params=params)
    assert any("json-ld#context" in v for v in first.headers.get_list("link"))
    assert set(_links(first)) == {"next"}


# -- clients written for Orion-LD ---------------------------------------------------------------


@pytest.fixture
def unfiltered(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, allow_unfiltered_queries=True, default_limit=2)
    with TestClient(create_app(settings)) as c:
        yield c


def test_unfiltered_queries_answer_every_entity_when_allowed(unfiltered: TestClient) -> None:
    # RENKEI_ALLOW_UNFILTERED_QUERIES=true: GET /entities with no selection answers every
    # entity of the tenant, paged, as Orion-LD does (clause 5.7.2 would refuse it)
    client = unfiltered
    load(client)
    client.post(E, json={"id": "urn:ngsi-ld:Park:1", "type": "Park"}, headers=JSON)
    other = {"NGSILD-Tenant": "chofu", **JSON}
    client.post(E, json={"id": "urn:ngsi-ld:Park:2", "type": "Park"}, headers=other)
    ids: list[str] = []
    r = client.get(E)
    while True:
        assert r.status_code == 200, r.text
        assert len(r.json()) <= 2  # the default page size
        ids += [e["id"] for e in r.json()]
        nxt = _links(r).get("next")
        if nxt is None:
            break
        r = client.get(nxt)
    assert sorted(ids) == [
        "urn:ngsi-ld:Park:1",
        "urn:ngsi-ld:Shelter:1",
        "urn:ngsi-ld:Shelter:2",
        "urn:ngsi-ld:Shelter:3",
    ]
    tenant = client.get(E, headers={"NGSILD-Tenant": "chofu"})
    assert [e["id"] for e in tenant.json()] == ["urn:ngsi-ld:Park:2"]
    # a purge still needs a selection: the setting only opens queries
    assert client.delete(E).status_code == 400


def test_unfiltered_queries_stay_refused_by_default(client: TestClient) -> None:
    load(client)
    assert client.get(E).status_code == 400
