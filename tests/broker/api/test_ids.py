"""Ids and names: Japanese ids on every endpoint; invisible and control characters refused.

Against a real ``renkei serve`` (tests/support.py): headers are encoded by the real HTTP
server, and a dropped connection would show.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from broker.api.common import link_header
from broker.model.entity import id_segment, iri_to_uri
from tests.support import broker

V1 = "/ngsi-ld/v1"
SHELTER = "urn:ngsi-ld:Shelter:避難所1"
SUB = "urn:ngsi-ld:Subscription:避難所の通知"
OBSERVED = "2026-04-01T09:00:00Z"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        broker(tmp_path_factory.mktemp("ids") / "hub.db") as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def shelter(eid: str = SHELTER, **attrs: object) -> dict[str, object]:
    return {
        "id": eid,
        "type": "避難所",
        "名称": {"type": "Property", "value": "狛江第一小学校"},
        "収容人数": {"type": "Property", "value": 300, "observedAt": OBSERVED},
        **attrs,
    }


def subscription(sid: str = SUB) -> dict[str, object]:
    return {
        "id": sid,
        "type": "Subscription",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
    }


def test_japanese_entity_id_on_every_entity_endpoint(hub: httpx.Client) -> None:
    created = hub.post(f"{V1}/entities", json=shelter())
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location == f"{V1}/entities/urn:ngsi-ld:Shelter:%E9%81%BF%E9%9B%A3%E6%89%801"
    assert location.isascii()
    # the Location as given, and the id as a client library puts it in the URL
    for path in [location, f"{V1}/entities/{SHELTER}"]:
        got = hub.get(path)
        assert got.status_code == 200, path
        assert got.json()["id"] == SHELTER
        assert got.json()["名称"]["value"] == "狛江第一小学校"
    assert hub.post(f"{V1}/entities", json=shelter()).status_code == 409  # really stored once
    patch = hub.patch(f"{location}/attrs", json={"収容人数": {"type": "Property", "value": 280}})
    assert patch.status_code == 204, patch.text
    attr = hub.patch(f"{V1}/entities/{SHELTER}/attrs/収容人数", json={"value": 250})
    assert attr.status_code == 204, attr.text
    assert hub.get(location).json()["収容人数"]["value"] == 250
    listed = hub.get(f"{V1}/entities", params={"id": SHELTER, "type": "避難所"})
    assert [e["id"] for e in listed.json()] == [SHELTER]
    batch = hub.post(f"{V1}/entityOperations/create", json=[shelter("urn:ngsi-ld:Shelter:避難所2")])
    assert batch.status_code == 201, batch.text
    assert batch.json() == ["urn:ngsi-ld:Shelter:避難所2"]
    assert hub.delete(location).status_code == 204
    assert hub.get(location).status_code == 404
    assert hub.delete(f"{V1}/entities/urn:ngsi-ld:Shelter:避難所2").status_code == 204


def test_ids_with_percent_signs_and_reserved_characters_round_trip(hub: httpx.Client) -> None:
    eid = "urn:ngsi-ld:Shelter:100%25;a=b&c@d:避難"
    created = hub.post(f"{V1}/entities", json=shelter(eid))
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert "%2525" in location  # the id's own "%" is encoded, so one decoding restores it
    got = hub.get(location)
    assert got.status_code == 200
    assert got.json()["id"] == eid
    assert hub.delete(location).status_code == 204


def test_japanese_subscription_id(hub: httpx.Client) -> None:
    created = hub.post(f"{V1}/subscriptions", json=subscription())
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location == f"{V1}/subscriptions/{quote(SUB, safe=':')}"
    assert hub.get(location).json()["id"] == SUB
    assert hub.get(f"{V1}/subscriptions/{SUB}").status_code == 200
    patched = hub.patch(location, json={"description": "避難所の開設を知らせる"})
    assert patched.status_code == 204, patched.text
    assert hub.delete(f"{V1}/subscriptions/{SUB}").status_code == 204
    assert hub.get(location).status_code == 404


def test_japanese_id_on_the_temporal_api(hub: httpx.Client) -> None:
    eid = "urn:ngsi-ld:Shelter:避難所3"
    body = {
        "id": eid,
        "type": "避難所",
        "収容人数": [
            {"type": "Property", "value": 300, "observedAt": "2026-04-01T09:00:00Z"},
            {"type": "Property", "value": 120, "observedAt": "2026-04-01T12:00:00Z"},
        ],
    }
    created = hub.post(f"{V1}/temporal/entities", json=body)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location.isascii()
    assert location.endswith("%E9%81%BF%E9%9B%A3%E6%89%803")
    history = hub.get(location)
    assert history.status_code == 200, history.text
    assert [i["value"] for i in history.json()["収容人数"]] == [300, 120]
    assert hub.get(f"{V1}/temporal/entities/{eid}").status_code == 200
    assert hub.delete(location).status_code == 204
    assert hub.get(location).status_code == 404


REFUSED = [
    ("\x00", "NUL"),
    ("\x07", "BEL"),
    ("\x1b", "ESC"),
    ("\x7f", "DEL"),
    ("\x85", "next line"),
    ("\u00ad", "soft hyphen"),
    ("\u061c", "Arabic letter mark"),
    ("\u180e", "Mongolian vowel separator"),
    ("\u200b", "zero width space"),
    ("\u200d", "zero width joiner"),
    ("\u200e", "left-to-right mark"),
    ("\u202e", "right-to-left override"),
    ("\u2066", "left-to-right isolate"),
    ("\u2028", "line separator"),
    ("\u2060", "word joiner"),
    ("\ufeff", "BOM"),
    ("\ufdd0", "noncharacter"),
    ("\uffff", "noncharacter"),
    ("\U0001fffe", "noncharacter"),
    ("\ufe0f", "variation selector 16"),
    ("\U000e0100", "variation selector 17"),
    ("\u3164", "Hangul filler"),
    ("\u115f", "Hangul choseong filler"),
    ("\uffa0", "halfwidth Hangul filler"),
    ("\u034f", "combining grapheme joiner"),
    ("\U000e0041", "tag latin capital A"),
]


@pytest.mark.parametrize(("ch", "label"), REFUSED, ids=[label for _, label in REFUSED])
def test_invisible_and_control_characters_are_refused_everywhere(
    hub: httpx.Client, ch: str, label: str
) -> None:
    code = f"U+{ord(ch):04X}"
    bad_id = f"urn:ngsi-ld:Shelter:避難{ch}所"
    attempts = {
        "create id": hub.post(f"{V1}/entities", json=shelter(bad_id)),
        "create type": hub.post(
            f"{V1}/entities", json={"id": "urn:ngsi-ld:Shelter:x", "type": f"避難{ch}所"}
        ),
        "create attribute": hub.post(
            f"{V1}/entities",
            json={"id": "urn:ngsi-ld:Shelter:y", "type": "避難所", f"名{ch}称": "a"},
        ),
        "create sub-attribute": hub.post(
            f"{V1}/entities",
            json={
                "id": "urn:ngsi-ld:Shelter:z",
                "type": "避難所",
                "名称": {"type": "Property", "value": "a", f"出{ch}典": "b"},
            },
        ),
        "batch": hub.post(f"{V1}/entityOperations/upsert", json=[shelter(bad_id)]),
        "retrieve": hub.get(f"{V1}/entities/{quote(bad_id)}"),
        "patch": hub.patch(f"{V1}/entities/{quote(bad_id)}/attrs", json={"名称": "a"}),
        "delete": hub.delete(f"{V1}/entities/{quote(bad_id)}"),
        "query": hub.get(f"{V1}/entities", params={"type": f"避難{ch}所"}),
        "subscription": hub.post(
            f"{V1}/subscriptions", json=subscription(f"urn:ngsi-ld:Subscription:{ch}1")
        ),
        "temporal": hub.post(f"{V1}/temporal/entities", json=shelter(bad_id)),
        "temporal retrieve": hub.get(f"{V1}/temporal/entities/{quote(bad_id)}"),
    }
    for what, r in attempts.items():
        if what == "batch":  # per-entity errors in a 207 (or a 400 for the whole batch)
            assert r.status_code in (207, 400), (what, r.status_code, r.text)
            assert code in r.text, (what, r.text)
            continue
        assert r.status_code == 400, (what, r.status_code, r.text)
        problem = r.json()
        assert problem["type"].endswith("BadRequestData"), (what, problem)
        assert code in problem["detail"], (what, problem["detail"])
    # nothing was stored: no entity of either type, no subscription
    for kind in ["避難所", f"避難{ch}所"]:
        listed = hub.get(f"{V1}/entities", params={"type": kind})
        assert listed.status_code in (200, 400)
        assert listed.status_code == 400 or listed.json() == []
    subs = hub.get(f"{V1}/subscriptions").json()
    assert [s["id"] for s in subs if ch in s["id"]] == []


def test_header_encodings() -> None:
    assert (
        id_segment("urn:ngsi-ld:Shelter:避難所1")
        == "urn:ngsi-ld:Shelter:%E9%81%BF%E9%9B%A3%E6%89%801"
    )
    assert id_segment("urn:x:a/b?c#d%e") == "urn:x:a%2Fb%3Fc%23d%25e"
    assert id_segment("urn:x:a;b=c&d@e!") == "urn:x:a;b=c&d@e!"  # sub-delims stay
    # an IRI as a URI: non-ASCII and characters never allowed in URIs encoded, %XX kept
    assert iri_to_uri("https://例え.jp/コンテキスト.jsonld?a=1#x") == (
        "https://%E4%BE%8B%E3%81%88.jp/%E3%82%B3%E3%83%B3%E3%83%86%E3%82%AD%E3%82%B9%E3%83%88"
        ".jsonld?a=1#x"
    )
    assert iri_to_uri("https://example.org/a%20b.jsonld") == "https://example.org/a%20b.jsonld"
    assert iri_to_uri("https://example.org/<a> b") == "https://example.org/%3Ca%3E%20b"
    link = link_header("https://例え.jp/ctx.jsonld")
    assert link.startswith("<https://%E4%BE%8B%E3%81%88.jp/ctx.jsonld>;")
