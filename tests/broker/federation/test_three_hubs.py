"""Three real hubs (``renkei serve`` processes, each with its own SQLite store): two
cities, Komae and Chofu, each holding its own AEDs and evacuation shelters, and a
prefecture hub holding nothing but one inclusive registration per city (clause 4.3.6).
What a client asks the prefecture hub, it answers from both cities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import broker, free_port, start_broker

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
JSON = {"Content-Type": "application/json"}

KOMAE_HALL = [139.5786, 35.6348]
CHOFU_HALL = [139.5413, 35.6506]


def aed(city: str, n: int, name: str, lon: float, lat: float) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:{city}-{n}",
        "type": "AEDLocation",
        "name": {"type": "Property", "value": name},
        "設置場所": {"type": "Property", "value": f"{name} 1階"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


def shelter(city: str, n: int, name: str, capacity: int, lon: float, lat: float) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:EvacuationShelter:{city}-{n}",
        "type": "EvacuationShelter",
        "name": {"type": "Property", "value": name},
        "収容人数": {"type": "Property", "value": capacity},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


KOMAE = [
    aed("komae", 1, "狛江市役所", *KOMAE_HALL),
    aed("komae", 2, "狛江市民センター", 139.5771, 35.6362),
    shelter("komae", 1, "狛江第一小学校", 450, 139.5795, 35.6327),
]
CHOFU = [
    aed("chofu", 1, "調布市役所", *CHOFU_HALL),
    shelter("chofu", 1, "調布第一中学校", 600, 139.5440, 35.6480),
    shelter("chofu", 2, "調布市総合体育館", 900, 139.5580, 35.6560),
]


def registration(city: str, url: str, name: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{city}",
        "type": "ContextSourceRegistration",
        "registrationName": name,
        "information": [{"entities": [{"type": "AEDLocation"}, {"type": "EvacuationShelter"}]}],
        "endpoint": url,
        "management": {"timeout": 3000},
    }


def seed(url: str, entities: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{url}/ngsi-ld/v1/entityOperations/create", json=entities, headers=JSON)
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def hubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("hubs")
    with (
        broker(tmp / "komae.db") as komae,
        broker(tmp / "chofu.db") as chofu,
        broker(tmp / "tokyo.db") as tokyo,
    ):
        seed(komae, KOMAE)
        seed(chofu, CHOFU)
        for city, url, name in (("komae", komae, "狛江市"), ("chofu", chofu, "調布市")):
            r = httpx.post(f"{tokyo}{R}", json=registration(city, url, name), headers=JSON)
            assert r.status_code == 201, r.text
        yield {"komae": komae, "chofu": chofu, "tokyo": tokyo}


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["id"] for e in response.json())


def test_a_query_sees_both_cities(hubs: dict[str, str]) -> None:
    tokyo = hubs["tokyo"]
    r = httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation", "count": "true"})
    assert ids(r) == [
        "urn:ngsi-ld:AEDLocation:chofu-1",
        "urn:ngsi-ld:AEDLocation:komae-1",
        "urn:ngsi-ld:AEDLocation:komae-2",
    ]
    assert r.headers["NGSILD-Results-Count"] == "3"
    assert "NGSILD-Warning" not in r.headers
    names = {e["name"]["value"] for e in r.json()}
    assert names == {"狛江市役所", "狛江市民センター", "調布市役所"}
    # q and attrs are passed on in the client's terms
    big = httpx.get(f"{tokyo}{E}", params={"type": "EvacuationShelter", "q": "収容人数>500"})
    assert ids(big) == [
        "urn:ngsi-ld:EvacuationShelter:chofu-1",
        "urn:ngsi-ld:EvacuationShelter:chofu-2",
    ]
    kv = httpx.get(
        f"{tokyo}{E}",
        params={"type": "EvacuationShelter", "attrs": "収容人数", "format": "keyValues"},
    ).json()
    assert {e["id"]: e["収容人数"] for e in kv} == {
        "urn:ngsi-ld:EvacuationShelter:komae-1": 450,
        "urn:ngsi-ld:EvacuationShelter:chofu-1": 600,
        "urn:ngsi-ld:EvacuationShelter:chofu-2": 900,
    }
    # paging across the sources: ordered by id, then cut
    pages = [
        ids(
            httpx.get(
                f"{tokyo}{E}",
                params={"type": "AEDLocation,EvacuationShelter", "limit": 2, "offset": o},
            )
        )
        for o in (0, 2, 4)
    ]
    assert [i for page in pages for i in page] == sorted(e["id"] for e in KOMAE + CHOFU)


def test_local_true_asks_nobody(hubs: dict[str, str]) -> None:
    r = httpx.get(f"{hubs['tokyo']}{E}", params={"type": "AEDLocation", "local": "true"})
    assert ids(r) == []
    missing = httpx.get(
        f"{hubs['tokyo']}{E}/urn:ngsi-ld:AEDLocation:chofu-1", params={"local": "true"}
    )
    assert missing.status_code == 404


def test_retrieve_from_the_city_holding_it(hubs: dict[str, str]) -> None:
    r = httpx.get(f"{hubs['tokyo']}{E}/urn:ngsi-ld:AEDLocation:chofu-1")
    assert r.status_code == 200, r.text
    assert r.json()["name"]["value"] == "調布市役所"
    assert httpx.get(f"{hubs['tokyo']}{E}/urn:ngsi-ld:AEDLocation:inagi-1").status_code == 404


def test_geo_query_and_geojson(hubs: dict[str, str]) -> None:
    tokyo = hubs["tokyo"]
    near = {
        "type": "AEDLocation,EvacuationShelter",
        "georel": "near;maxDistance==600",
        "geometry": "Point",
        "coordinates": f"[{CHOFU_HALL[0]},{CHOFU_HALL[1]}]",
    }
    assert ids(httpx.get(f"{tokyo}{E}", params=near)) == [
        "urn:ngsi-ld:AEDLocation:chofu-1",
        "urn:ngsi-ld:EvacuationShelter:chofu-1",
    ]
    geo = httpx.get(
        f"{tokyo}{E}",
        params={"type": "EvacuationShelter"},
        headers={"Accept": "application/geo+json"},
    )
    assert geo.status_code == 200
    assert geo.headers["content-type"].startswith("application/geo+json")
    body = geo.json()
    assert body["type"] == "FeatureCollection"
    assert {f["properties"]["name"]["value"] for f in body["features"]} == {
        "狛江第一小学校",
        "調布第一中学校",
        "調布市総合体育館",
    }
    assert all(f["geometry"]["type"] == "Point" for f in body["features"])


def test_merge_newest_attribute_wins(hubs: dict[str, str], tmp_path: Path) -> None:
    """The prefecture holds an older copy of a Chofu shelter: the newer city value wins,
    and an attribute only the prefecture has is kept."""
    tokyo, chofu = hubs["tokyo"], hubs["chofu"]
    eid = "urn:ngsi-ld:EvacuationShelter:chofu-1"
    copy = {
        "id": eid,
        "type": "EvacuationShelter",
        "収容人数": {"type": "Property", "value": 100, "observedAt": "2020-04-01T00:00:00Z"},
        "都の備考": {"type": "Property", "value": "都が確認済み"},
    }
    assert httpx.post(f"{tokyo}{E}", json=copy, headers=JSON).status_code == 201
    try:
        patch = {
            "収容人数": {"type": "Property", "value": 650, "observedAt": "2026-04-01T00:00:00Z"}
        }
        assert httpx.patch(f"{chofu}{E}/{eid}/attrs", json=patch, headers=JSON).status_code == 204
        got = httpx.get(f"{tokyo}{E}/{eid}").json()
        assert got["収容人数"]["value"] == 650
        assert got["都の備考"]["value"] == "都が確認済み"
        assert got["name"]["value"] == "調布第一中学校"
        listed = httpx.get(f"{tokyo}{E}", params={"type": "EvacuationShelter", "count": "true"})
        assert listed.headers["NGSILD-Results-Count"] == "3"  # the copy counts once
        assert {e["id"]: e.get("収容人数", {}).get("value") for e in listed.json()}[eid] == 650
    finally:
        httpx.delete(f"{tokyo}{E}/{eid}")
        back = {"収容人数": {"type": "Property", "value": 600}}
        httpx.patch(f"{chofu}{E}/{eid}/attrs", json=back, headers=JSON)


def test_a_city_hub_down_gives_a_partial_answer(hubs: dict[str, str], tmp_path: Path) -> None:
    tokyo = hubs["tokyo"]
    port = free_port()
    inagi = start_broker(tmp_path / "inagi.db", port)
    url = f"http://127.0.0.1:{port}"
    try:
        seed(url, [aed("inagi", 1, "稲城市役所", 139.5047, 35.6380)])
        reg = registration("inagi", url, "稲城市")
        assert httpx.post(f"{tokyo}{R}", json=reg, headers=JSON).status_code == 201
        assert "urn:ngsi-ld:AEDLocation:inagi-1" in ids(
            httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation"})
        )
        inagi.terminate()
        inagi.wait(timeout=10)
        r = httpx.get(f"{tokyo}{E}", params={"type": "AEDLocation"})
        assert ids(r) == [
            "urn:ngsi-ld:AEDLocation:chofu-1",
            "urn:ngsi-ld:AEDLocation:komae-1",
            "urn:ngsi-ld:AEDLocation:komae-2",
        ]
        warning = r.headers["NGSILD-Warning"]
        assert warning.startswith("199 urn:ngsi-ld:ContextSourceRegistration:inagi ")
        assert url in warning
        one = httpx.get(f"{tokyo}{E}/urn:ngsi-ld:AEDLocation:komae-1")
        assert one.status_code == 200
        assert one.json()["name"]["value"] == "狛江市役所"
        assert "inagi" in one.headers["NGSILD-Warning"]  # Inagi may hold any AED: asked
    finally:
        if inagi.poll() is None:
            inagi.kill()
            inagi.wait()
        if inagi.stderr is not None:
            inagi.stderr.close()
        httpx.delete(f"{tokyo}{R}/urn:ngsi-ld:ContextSourceRegistration:inagi")


def test_a_registration_loop_is_508(hubs: dict[str, str]) -> None:
    komae, chofu = hubs["komae"], hubs["chofu"]
    loop = {**JSON, "NGSILD-Tenant": "loop"}
    assert (
        httpx.post(
            f"{komae}{R}", json=registration("chofu", chofu, "調布市"), headers=loop
        ).status_code
        == 201
    )
    assert (
        httpx.post(
            f"{chofu}{R}", json=registration("komae", komae, "狛江市"), headers=loop
        ).status_code
        == 201
    )
    r = httpx.get(f"{komae}{E}", params={"type": "AEDLocation"}, headers={"NGSILD-Tenant": "loop"})
    assert r.status_code == 508, r.text
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LoopDetected"
    # the tenant without the loop is unaffected
    assert httpx.get(f"{komae}{E}", params={"type": "AEDLocation"}).status_code == 200


def test_a_temporal_query_sees_both_cities(hubs: dict[str, str]) -> None:
    tokyo, komae, chofu = hubs["tokyo"], hubs["komae"], hubs["chofu"]
    for url, eid, values in (
        (komae, "urn:ngsi-ld:EvacuationShelter:komae-1", [300, 420]),
        (chofu, "urn:ngsi-ld:EvacuationShelter:chofu-2", [800]),
    ):
        for n, value in enumerate(values):
            attr = {
                "避難者数": {
                    "type": "Property",
                    "value": value,
                    "observedAt": f"2026-09-0{n + 1}T09:00:00Z",
                }
            }
            r = httpx.post(f"{url}{E}/{eid}/attrs", json=attr, headers=JSON)
            assert r.status_code == 204, r.text
    r = httpx.get(
        f"{tokyo}/ngsi-ld/v1/temporal/entities",
        params={
            "type": "EvacuationShelter",
            "attrs": "避難者数",
            "timerel": "after",
            "timeAt": "2026-08-01T00:00:00Z",
            "count": "true",
        },
    )
    assert r.status_code == 200, r.text
    got = {e["id"]: [i["value"] for i in e["避難者数"]] for e in r.json()}
    assert got == {
        "urn:ngsi-ld:EvacuationShelter:chofu-2": [800],
        "urn:ngsi-ld:EvacuationShelter:komae-1": [300, 420],
    }
    assert r.headers["NGSILD-Results-Count"] == "2"


def test_a_subscription_on_the_prefecture_hears_both_cities(hubs: dict[str, str]) -> None:
    from tests.receiver import Receiver

    tokyo, komae, chofu = hubs["tokyo"], hubs["komae"], hubs["chofu"]
    receiver = Receiver()
    sid = "urn:ngsi-ld:Subscription:都の避難所監視"
    try:
        sub = {
            "id": sid,
            "type": "Subscription",
            "entities": [{"type": "EvacuationShelter"}],
            "watchedAttributes": ["開設状況"],
            "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}},
        }
        r = httpx.post(f"{tokyo}/ngsi-ld/v1/subscriptions", json=sub, headers=JSON)
        assert r.status_code == 201, r.text
        assert "NGSILD-Warning" not in r.headers
        opened = {"開設状況": {"type": "Property", "value": "開設"}}
        for url, eid in (
            (komae, "urn:ngsi-ld:EvacuationShelter:komae-1"),
            (chofu, "urn:ngsi-ld:EvacuationShelter:chofu-1"),
        ):
            assert httpx.post(f"{url}{E}/{eid}/attrs", json=opened, headers=JSON).status_code == 204
        got = receiver.wait_for(
            lambda rs: (
                {d["id"] for _h, n in rs for d in n["data"]}
                >= {
                    "urn:ngsi-ld:EvacuationShelter:komae-1",
                    "urn:ngsi-ld:EvacuationShelter:chofu-1",
                }
            ),
            what="a notification from each city",
        )
        assert {n["subscriptionId"] for _h, n in got} == {sid}
        # deleting it at the prefecture deletes it at the cities too
        assert httpx.delete(f"{tokyo}/ngsi-ld/v1/subscriptions/{sid}").status_code == 204
        for url in (komae, chofu):
            assert httpx.get(f"{url}/ngsi-ld/v1/subscriptions/{sid}").status_code == 404
    finally:
        receiver.close()


def test_an_ogc_collection_read_sees_both_cities(hubs: dict[str, str]) -> None:
    tokyo = hubs["tokyo"]
    listed = httpx.get(f"{tokyo}/ogc/collections", params={"f": "json"}).json()
    assert {"AEDLocation", "EvacuationShelter"} <= {c["id"] for c in listed["collections"]}
    page = httpx.get(f"{tokyo}/ogc/collections/EvacuationShelter/items", params={"f": "json"})
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["type"] == "FeatureCollection"
    assert {f["properties"]["name"] for f in body["features"]} == {
        "狛江第一小学校",
        "調布第一中学校",
        "調布市総合体育館",
    }
    assert body["numberMatched"] == 3
    # a bounding box around Chofu's city hall, and a property filter
    box = httpx.get(
        f"{tokyo}/ogc/collections/EvacuationShelter/items",
        params={"f": "json", "bbox": "139.53,35.64,139.55,35.66"},
    ).json()
    assert [f["properties"]["name"] for f in box["features"]] == ["調布第一中学校"]
    by_capacity = httpx.get(
        f"{tokyo}/ogc/collections/EvacuationShelter/items", params={"f": "json", "収容人数": "900"}
    ).json()
    assert [f["properties"]["name"] for f in by_capacity["features"]] == ["調布市総合体育館"]
