"""How entities are represented, against the clauses: ``format`` and ``options``
(clause 6.3.6), ``lang`` (clause 4.15), ``jsonKeys``, and the ``Prefer`` header for
GeoJSON (clause 6.3.6) and for earlier versions of the specification (clause 4.3.6.8)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import JSON

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
EID = "urn:ngsi-ld:Park:野川公園"
GEO = {"Accept": "application/geo+json"}


@pytest.fixture
def park(client: TestClient) -> None:
    body = {
        "id": EID,
        "type": "Park",
        "scope": "/東京/狛江",
        "name": {
            "type": "LanguageProperty",
            "languageMap": {"ja": "野川公園", "en": "Nogawa Park"},
        },
        "category": {"type": "VocabProperty", "vocab": "park"},
        "facilities": {"type": "ListProperty", "valueList": ["トイレ", "水道"]},
        "spec": {"type": "JsonProperty", "json": {"面積": 396346, "開園": "1980-06-01"}},
        "managedBy": {"type": "ListRelationship", "objectList": [{"object": "urn:ngsi-ld:Org:都"}]},
        "area": {"type": "Property", "value": 39.6, "unitCode": "HAR"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.5269, 35.6856]},
        },
    }
    assert client.post(E, json=body, headers=JSON).status_code == 201


# -- clause 6.3.6: format and options ------------------------------------------------------------


def test_format_names_the_representation_and_wins_over_options(
    client: TestClient, park: None
) -> None:
    # clause 6.3.6: format=normalized|concise|simplified|keyValues; a format given both
    # ways is taken from format
    simplified = client.get(f"{E}/{EID}", params={"format": "simplified"}).json()
    assert simplified["area"] == 39.6
    assert client.get(f"{E}/{EID}", params={"format": "keyValues"}).json() == simplified
    concise = client.get(f"{E}/{EID}", params={"format": "concise", "options": "keyValues"})
    assert concise.json()["area"] == {"value": 39.6, "unitCode": "HAR"}
    normalized = client.get(f"{E}/{EID}", params={"format": "normalized"}).json()
    assert normalized["area"]["type"] == "Property"
    bad = client.get(f"{E}/{EID}", params={"format": "flat"})
    assert bad.status_code == 400
    assert "format" in bad.json()["title"]
    assert client.get(f"{E}/{EID}", params={"options": "concise,keyValues"}).status_code == 400


# -- clause 4.15: lang ---------------------------------------------------------------------------


def test_lang_picks_one_language_and_star_any(client: TestClient, park: None) -> None:
    # clause 4.15: with lang, a LanguageProperty is given as a Property in the language
    # asked for (by preference, as Accept-Language); "*" takes any language it holds
    en = client.get(f"{E}/{EID}", params={"lang": "en"}).json()["name"]
    assert en == {"type": "Property", "value": "Nogawa Park", "lang": "en"}
    ranked = client.get(f"{E}/{EID}", params={"lang": "fr,ja;q=0.9,en;q=0.8"}).json()["name"]
    assert ranked["lang"] == "ja"
    anyone = client.get(f"{E}/{EID}", params={"lang": "*"}).json()["name"]
    assert anyone["type"] == "Property"
    assert anyone["lang"] in ("ja", "en")
    plain = client.get(f"{E}/{EID}", params={"lang": "*", "format": "simplified"}).json()
    assert plain["name"] in ("野川公園", "Nogawa Park")


# -- jsonKeys ------------------------------------------------------------------------------------


def test_json_keys_names_are_checked(client: TestClient, park: None) -> None:
    # jsonKeys names attributes whose compound values have plain JSON keys; the hub
    # keeps every compound value's keys as written, so q reaches them either way
    ok = client.get(E, params={"type": "Park", "q": "spec[面積]>300000", "jsonKeys": "spec"})
    assert [e["id"] for e in ok.json()] == [EID]
    bad = client.get(E, params={"type": "Park", "jsonKeys": "sp ec"})
    assert bad.status_code == 400
    assert "jsonKeys" in bad.json()["title"]


# -- clause 6.3.6: Prefer body=json on GeoJSON -------------------------------------------------


def test_geojson_context_in_the_body_unless_body_json_is_preferred(
    client: TestClient, park: None
) -> None:
    # clause 6.3.6: a GeoJSON answer carries its @context in the body; with
    # "Prefer: body=json" it comes in a Link header instead
    feature = client.get(f"{E}/{EID}", headers=GEO)
    assert feature.headers["content-type"].startswith("application/geo+json")
    assert "@context" in feature.json()
    assert "link" not in feature.headers
    plain = client.get(f"{E}/{EID}", headers={**GEO, "Prefer": "body=json"})
    assert plain.json()["type"] == "Feature"
    assert "@context" not in plain.json()
    assert "json-ld#context" in plain.headers["link"]
    listed = client.get(E, params={"type": "Park"}, headers={**GEO, "Prefer": "body=json"})
    assert listed.json()["type"] == "FeatureCollection"
    assert "@context" not in listed.json()
    assert "json-ld#context" in listed.headers["link"]
    ld = client.get(f"{E}/{EID}", headers={**GEO, "Prefer": "body=ld+json"})
    assert "@context" in ld.json()


# -- clause 4.3.6.8: Prefer ngsi-ld=<version> ---------------------------------------------------


def _retrieve(client: TestClient, prefer: str, **params: str) -> Any:
    return client.get(f"{E}/{EID}", params=params, headers={"Prefer": prefer})


def test_an_earlier_version_gets_the_attribute_types_it_knows(
    client: TestClient, park: None
) -> None:
    # clause 4.3.6.8: a client "may wish to indicate that it is only capable of
    # interpreting responses which conform to a specific NGSI-LD specification, in which
    # case the Context Source shall endeavour to amend its payload accordingly";
    # Table 4.3.6.8-1 gives each newer attribute type's fallback
    r = _retrieve(client, "ngsi-ld=1.6")
    assert r.status_code == 203  # the payload was changed
    assert r.headers["preference-applied"] == "ngsi-ld=1.6"
    body = r.json()
    assert body["category"] == {"type": "Property", "value": "park"}
    assert body["facilities"] == {"type": "Property", "value": ["トイレ", "水道"]}
    assert body["spec"] == {"type": "Property", "value": {"面積": 396346, "開園": "1980-06-01"}}
    assert body["managedBy"]["type"] == "Relationship"
    assert body["managedBy"]["object"] == [{"object": "urn:ngsi-ld:Org:都"}]
    assert body["name"]["type"] == "LanguageProperty"  # known since 1.4
    assert body["scope"] == "/東京/狛江"
    assert body["area"] == {"type": "Property", "value": 39.6, "unitCode": "HAR"}

    old = _retrieve(client, "ngsi-ld=1.3").json()
    assert old["name"] == {"type": "Property", "value": {"ja": "野川公園", "en": "Nogawa Park"}}
    assert "scope" not in old


def test_the_native_version_leaves_the_payload_as_it_is(client: TestClient, park: None) -> None:
    # clause 4.3.6.8: a payload already conformant is not changed (200), and the answer
    # says which version it conforms to
    plain = client.get(f"{E}/{EID}").json()
    for prefer in ("ngsi-ld=1.8", "NGSI-LD=1.9.1", "body=json, ngsi-ld=1.8"):
        r = _retrieve(client, prefer)
        assert r.status_code == 200, prefer
        assert r.headers["preference-applied"] == "ngsi-ld=1.8"
        assert r.json() == plain
    unrelated = _retrieve(client, "respond-async")
    assert unrelated.status_code == 200
    assert "preference-applied" not in unrelated.headers


def test_queries_are_amended_too(client: TestClient, park: None) -> None:
    r = client.get(E, params={"type": "Park"}, headers={"Prefer": "ngsi-ld=1.5"})
    assert r.status_code == 203
    assert r.json()[0]["category"] == {"type": "Property", "value": "park"}
    concise = client.get(
        E, params={"type": "Park", "format": "concise"}, headers={"Prefer": "ngsi-ld=1.5"}
    )
    assert concise.json()[0]["category"] == {"type": "Property", "value": "park"}
    geo = client.get(E, params={"type": "Park"}, headers={**GEO, "Prefer": "ngsi-ld=1.5"})
    assert geo.status_code == 203
    assert geo.json()["features"][0]["properties"]["spec"]["type"] == "Property"
