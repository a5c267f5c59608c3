"""The internal entity form's checks (broker/model/entity.py), without any context."""

from __future__ import annotations

import pytest

from broker.errors import BadRequestData
from broker.model.entity import (
    check_datetime,
    check_entity_id,
    check_name,
    check_scope,
    infer_type,
    linked_ids,
    pick_language,
)
from broker.model.geo import COORDINATE_GEOMETRY_TYPES, GEOMETRY_TYPES, looks_like_geometry

SHELTER = "https://example.org/避難所"


def test_entity_ids_are_uris_japanese_included() -> None:
    assert (
        check_entity_id("urn:ngsi-ld:避難所:狛江第一小学校") == "urn:ngsi-ld:避難所:狛江第一小学校"
    )
    with pytest.raises(BadRequestData, match="must be a URI"):
        check_entity_id("狛江第一小学校")
    with pytest.raises(BadRequestData):
        check_entity_id(42)


def test_names_refuse_the_characters_ngsi_ld_forbids() -> None:
    assert check_name("収容人数") == "収容人数"
    for bad in ("収容 人数", "a=b", "a;b", "(x)", ""):
        with pytest.raises(BadRequestData, match="invalid attribute name"):
            check_name(bad)


def test_a_name_checked_once_is_not_checked_again_and_bad_names_stay_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names recur in every entity of a batch: one that passed is remembered, a refused
    one never is, and the memory is bounded."""
    import broker.model.entity as model_entity

    monkeypatch.setattr(model_entity, "_GOOD_NAMES", set())
    monkeypatch.setattr(model_entity, "_GOOD_NAMES_MAX", 2)
    assert check_name("気温") == "気温"
    assert check_name("気温") == "気温"
    for _ in range(2):
        with pytest.raises(BadRequestData, match="invalid attribute name"):
            check_name("気 温")
        with pytest.raises(BadRequestData, match="U\\+200B"):
            check_name("気\u200b温")
    check_name("湿度")
    check_name("風速")
    assert {"気温", "湿度"} == model_entity._GOOD_NAMES
    assert check_name("風速") == "風速"  # past the bound: checked again, still accepted


def test_scopes_look_like_paths() -> None:
    assert check_scope("/東京都/狛江市") == ["/東京都/狛江市"]
    assert check_scope(["/東京都", "/神奈川県/川崎市"]) == ["/東京都", "/神奈川県/川崎市"]
    with pytest.raises(BadRequestData, match="invalid scope"):
        check_scope("/東京都//狛江市")


def test_date_times_need_a_time_zone() -> None:
    assert check_datetime("2026-04-01T09:00:00+09:00", "observedAt") == "2026-04-01T09:00:00+09:00"
    with pytest.raises(BadRequestData, match="time zone"):
        check_datetime("2026-04-01T09:00:00", "observedAt")
    with pytest.raises(BadRequestData):
        check_datetime("2026-04-01", "observedAt")


def test_the_attribute_type_follows_from_the_value_member() -> None:
    assert infer_type({"value": 120}) == "Property"
    assert infer_type({"value": {"type": "Point", "coordinates": [139.58, 35.63]}}) == "GeoProperty"
    assert infer_type({"object": "urn:ngsi-ld:市:狛江"}) == "Relationship"
    assert infer_type({"languageMap": {"ja": "狛江市", "en": "Komae"}}) == "LanguageProperty"
    assert infer_type({"unitCode": "C62"}) is None


def test_linked_ids_are_the_relationship_objects_once_each() -> None:
    ent = {
        "id": "urn:ngsi-ld:避難所:1",
        "type": [SHELTER],
        "https://example.org/所在地": [
            {"type": "Relationship", "object": "urn:ngsi-ld:市:狛江"},
            {"type": "Relationship", "object": ["urn:ngsi-ld:市:狛江", "urn:ngsi-ld:区:1"]},
        ],
        "https://example.org/名称": [{"type": "Property", "value": "urn:ngsi-ld:市:調布"}],
    }
    assert linked_ids(ent) == ["urn:ngsi-ld:市:狛江", "urn:ngsi-ld:区:1"]


def test_a_language_is_picked_by_preference_then_by_primary_tag() -> None:
    names = {"ja": "狛江市", "en-GB": "Komae City"}
    assert pick_language(names, "en;q=0.5,ja") == ("ja", "狛江市")
    assert pick_language(names, "en") == ("en-GB", "Komae City")
    assert pick_language(names, "fr") == ("ja", "狛江市")  # nothing matches: the first


def test_one_geometry_type_set() -> None:
    assert set(COORDINATE_GEOMETRY_TYPES) | {"GeometryCollection"} == GEOMETRY_TYPES
    collection = {"type": "GeometryCollection", "geometries": []}
    assert looks_like_geometry(collection)
    assert not looks_like_geometry({"type": "Feature", "coordinates": [139.58, 35.63]})
