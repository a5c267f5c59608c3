"""Attribute operations against their clauses: Update Attributes (5.6.2), Append
Attributes (5.6.3) and Partial Attribute Update (5.6.4), every "shall" of their
behaviour, and the name checks of clause 4.6.2 on each of them (and on replace and
delete of one attribute). A refused request changes nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.conftest import JSON

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
EID = "urn:ngsi-ld:Shelter:狛江第一"


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


@pytest.fixture
def shelter(client: TestClient) -> dict[str, Any]:
    body = {
        "id": EID,
        "type": "Shelter",
        "name": prop("狛江第一小学校"),
        "capacity": prop(300, unitCode="C62", observedAt="2026-04-01T00:00:00Z"),
        "waterLevel": [prop(1.2, datasetId="urn:ngsi-ld:Dataset:川"), prop(0.4)],
    }
    assert client.post(E, json=body, headers=JSON).status_code == 201
    return stored(client)


def stored(client: TestClient) -> dict[str, Any]:
    r = client.get(f"{E}/{EID}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def problem(r: Any, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["type"] == ERR + kind, r.text


BAD_NAMES = ["避難 所", "a<b", "a;b", "a\u200bb", ""]


# -- clause 5.6.2: Update Attributes -------------------------------------------------------------


def test_update_attributes(client: TestClient, shelter: dict[str, Any]) -> None:
    # 5.6.2: a matching attribute (same name and datasetId) shall be replaced by the one
    # in the fragment; one the entity lacks is added (as the conformance tests expect
    # since 1.6.1); the answer is 204 when every attribute was updated
    r = client.patch(
        f"{E}/{EID}/attrs",
        json={
            "capacity": prop(280),
            "waterLevel": prop(1.5, datasetId="urn:ngsi-ld:Dataset:川"),
            "operator": prop("狛江市"),
        },
        headers=JSON,
    )
    assert r.status_code == 204, r.text
    now = stored(client)
    assert now["capacity"] == prop(280)  # replaced whole: unitCode and observedAt gone
    assert prop(1.5, datasetId="urn:ngsi-ld:Dataset:川") in now["waterLevel"]
    assert prop(0.4) in now["waterLevel"]  # the default instance untouched
    assert now["operator"] == prop("狛江市")


def test_update_attributes_deletes_with_ngsi_ld_null(
    client: TestClient, shelter: dict[str, Any]
) -> None:
    # 5.6.2 (clause 4.5.0's NGSI-LD Null): an instance whose value is "urn:ngsi-ld:null"
    # shall be deleted
    null = prop("urn:ngsi-ld:null", datasetId="urn:ngsi-ld:Dataset:川")
    r = client.patch(f"{E}/{EID}/attrs", json={"waterLevel": null}, headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)["waterLevel"] == prop(0.4)


# -- clause 5.6.3: Append Attributes ------------------------------------------------------------


def test_append_attributes(client: TestClient, shelter: dict[str, Any]) -> None:
    # 5.6.3: attributes the entity lacks shall be appended; existing ones (same name and
    # datasetId) overwritten unless noOverwrite is given
    r = client.post(
        f"{E}/{EID}/attrs",
        json={"name": prop("第一小"), "waterLevel": prop(2.0, datasetId="urn:ngsi-ld:Dataset:雨")},
        headers=JSON,
    )
    assert r.status_code == 204, r.text
    now = stored(client)
    assert now["name"] == prop("第一小")
    assert len(now["waterLevel"]) == 3


def test_append_with_no_overwrite_reports_what_was_kept(
    client: TestClient, shelter: dict[str, Any]
) -> None:
    # 5.6.3: with noOverwrite, existing attributes shall be left as they are and reported
    # in notUpdated (207); the others are appended
    r = client.post(
        f"{E}/{EID}/attrs",
        params={"options": "noOverwrite"},
        json={"name": prop("上書き"), "operator": prop("狛江市")},
        headers=JSON,
    )
    assert r.status_code == 207, r.text
    result = r.json()
    assert result["updated"] == [VOCAB + "operator"]
    assert [n["attributeName"] for n in result["notUpdated"]] == [VOCAB + "name"]
    assert all(n["reason"] for n in result["notUpdated"])
    now = stored(client)
    assert now["name"] == shelter["name"]
    assert now["operator"] == prop("狛江市")


# -- clause 5.6.4: Partial Attribute Update -----------------------------------------------------


def test_partial_attribute_update(client: TestClient, shelter: dict[str, Any]) -> None:
    # 5.6.4: only the members the fragment gives are changed; the rest of the instance
    # stays; the instance is the one of the datasetId the fragment names
    r = client.patch(f"{E}/{EID}/attrs/capacity", json={"value": 250}, headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)["capacity"] == prop(
        250, unitCode="C62", observedAt="2026-04-01T00:00:00Z"
    )
    r = client.patch(
        f"{E}/{EID}/attrs/waterLevel",
        json={"value": 1.9, "datasetId": "urn:ngsi-ld:Dataset:川"},
        headers=JSON,
    )
    assert r.status_code == 204, r.text
    levels = stored(client)["waterLevel"]
    assert prop(1.9, datasetId="urn:ngsi-ld:Dataset:川") in levels
    assert prop(0.4) in levels


def test_partial_attribute_update_of_what_is_not_there(
    client: TestClient, shelter: dict[str, Any]
) -> None:
    # 5.6.4: "If the target Entity does not exist" / "does not contain the target
    # Attribute" (or its datasetId) an error of type ResourceNotFound shall be raised
    problem(
        client.patch(f"{E}/urn:ngsi-ld:Shelter:無い/attrs/name", json={"value": 1}, headers=JSON),
        404,
        "ResourceNotFound",
    )
    problem(
        client.patch(f"{E}/{EID}/attrs/収容人数", json={"value": 1}, headers=JSON),
        404,
        "ResourceNotFound",
    )
    problem(
        client.patch(
            f"{E}/{EID}/attrs/capacity",
            json={"value": 1, "datasetId": "urn:ngsi-ld:Dataset:無い"},
            headers=JSON,
        ),
        404,
        "ResourceNotFound",
    )
    assert stored(client) == shelter


def test_partial_attribute_update_keeps_the_attribute_type(
    client: TestClient, shelter: dict[str, Any]
) -> None:
    # 5.6.4 with clause 5.5: a fragment of another attribute type, or an empty one, is
    # BadRequestData
    for fragment in ({"type": "Relationship", "object": "urn:ngsi-ld:Org:1"}, {}):
        r = client.patch(f"{E}/{EID}/attrs/capacity", json=fragment, headers=JSON)
        problem(r, 400, "BadRequestData")
    assert stored(client) == shelter


# -- what all three refuse, before anything is written ---------------------------------------


OPERATIONS = ["update", "append", "partial"]


def _send(client: TestClient, op: str, eid: str, attr: str, value: dict[str, Any]) -> Any:
    if op == "update":
        return client.patch(f"{E}/{eid}/attrs", json={attr: value}, headers=JSON)
    if op == "append":
        return client.post(f"{E}/{eid}/attrs", json={attr: value}, headers=JSON)
    return client.patch(f"{E}/{eid}/attrs/{attr}", json=value, headers=JSON)


@pytest.mark.parametrize("op", OPERATIONS)
def test_an_invalid_entity_id_is_bad_request_data(client: TestClient, op: str) -> None:
    # 5.6.2, 5.6.3, 5.6.4: "If the Entity Id is not present or it is not a valid URI,
    # then an error of type BadRequestData shall be raised"
    problem(_send(client, op, "避難所", "name", prop("x")), 400, "BadRequestData")


@pytest.mark.parametrize("op", ["update", "append"])
def test_an_unknown_entity_is_resource_not_found(client: TestClient, op: str) -> None:
    # 5.6.2, 5.6.3: "If the NGSI-LD endpoint does not know about this Entity ... an error
    # of type ResourceNotFound shall be raised"
    r = _send(client, op, "urn:ngsi-ld:Shelter:無い", "name", prop("x"))
    problem(r, 404, "ResourceNotFound")


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_attribute_names_are_checked(
    client: TestClient, shelter: dict[str, Any], op: str, name: str
) -> None:
    # clause 4.6.2: a name with characters outside the grammar "should" be refused with
    # BadRequestData; 5.6.2-5.6.4: a fragment not meeting clause 5.5 "shall" be, and the
    # entity is left as it was
    if op == "partial" and not name:
        return  # an empty path segment is another route (the attrs collection)
    problem(_send(client, op, EID, name, prop(1)), 400, "BadRequestData")
    assert stored(client) == shelter


@pytest.mark.parametrize("op", OPERATIONS)
def test_sub_attribute_names_are_checked(
    client: TestClient, shelter: dict[str, Any], op: str
) -> None:
    value = prop(1, **{"測定 方法": prop("目視")})
    problem(_send(client, op, EID, "capacity", value), 400, "BadRequestData")
    assert stored(client) == shelter


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_replace_and_delete_check_the_attribute_name(
    client: TestClient, shelter: dict[str, Any], method: str
) -> None:
    # clauses 5.6.5 (Delete Attribute) and 5.6.19 (Replace Attribute) name the attribute
    # in the path the same way
    r = client.request(method, f"{E}/{EID}/attrs/a%20b", json=prop(1), headers=JSON)
    problem(r, 400, "BadRequestData")
    assert stored(client) == shelter


def test_japanese_names_are_names(client: TestClient, shelter: dict[str, Any]) -> None:
    # clause 4.6.2: a name starts with a Unicode letter; kanji and kana are letters
    r = client.post(f"{E}/{EID}/attrs", json={"収容人数": prop(300)}, headers=JSON)
    assert r.status_code == 204, r.text
    r = client.patch(f"{E}/{EID}/attrs/収容人数", json={"value": 310}, headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)["収容人数"] == prop(310)


@pytest.mark.parametrize(
    "written",
    [
        "{iri}",  # as it is, its "/" in the path
        "{quoted}",  # percent-encoded: https%3A%2F%2F...
    ],
)
def test_an_attribute_is_addressed_by_its_full_iri_in_the_path(
    client: TestClient, shelter: dict[str, Any], written: str
) -> None:
    """Clause 5.5.7: "NGSI-LD API operations allow clients to use short-hand strings as
    non-qualified names, particularly for Property, Relationship or Type names ... NGSI-LD
    systems shall expand terms to URIs, in order to obtain and store Fully Qualified
    Names." A term is a short-hand: the Fully Qualified Name it expands to, written in
    the path of clause 6.7 (``/entities/{entityId}/attrs/{attrId}``) as it is or
    percent-encoded, addresses the same attribute (here ``capacity`` of the default
    @vocab) for PATCH, PUT and DELETE."""
    iri = f"{VOCAB}capacity"
    path = written.format(iri=iri, quoted=quote(iri, safe=""))
    r = client.patch(f"{E}/{EID}/attrs/{path}", json={"value": 450}, headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)["capacity"]["value"] == 450
    r = client.put(f"{E}/{EID}/attrs/{path}", json=prop(500), headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)["capacity"]["value"] == 500
    # an attribute named by an IRI of another vocabulary is that attribute
    other = "https://example.org/防災/収容人数"
    r = client.post(f"{E}/{EID}/attrs", json={other: prop(1)}, headers=JSON)
    assert r.status_code in (204, 207), r.text
    other_path = written.format(iri=other, quoted=quote(other, safe=""))
    r = client.patch(f"{E}/{EID}/attrs/{other_path}", json={"value": 2}, headers=JSON)
    assert r.status_code == 204, r.text
    assert stored(client)[other]["value"] == 2
    assert client.delete(f"{E}/{EID}/attrs/{path}").status_code == 204
    assert "capacity" not in stored(client)
    assert client.delete(f"{E}/{EID}/attrs/{other_path}").status_code == 204
    assert other not in stored(client)
    assert client.delete(f"{E}/{EID}/attrs/{path}").status_code == 404
