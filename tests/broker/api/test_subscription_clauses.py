"""Subscriptions, clause by clause (ETSI GS CIM 009 v1.8.1 §5.8, §5.2.12-5.2.15, §5.3.1,
§5.13): each test quotes the text it checks, against a real HTTP receiver.

Terms are Japanese and come from an inline ``@context``, so that expansion, compaction
and the contexts a subscription creates implicitly are exercised on every path.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from fastapi.testclient import TestClient

from tests.conftest import JSON, LD, link
from tests.receiver import Receiver

S = "/ngsi-ld/v1/subscriptions"
E = "/ngsi-ld/v1/entities"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
#: an inline context: a subscription written under it gets an implicitly created one
INLINE = {
    "避難所": "https://komae.example/ns/避難所",
    "収容人数": "https://komae.example/ns/収容人数",
    "名称": "https://komae.example/ns/名称",
}
SHELTER = "urn:ngsi-ld:避難所:狛江第一小学校"


def shelter(capacity: int = 300, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": SHELTER,
        "type": "避難所",
        "名称": {"type": "Property", "value": "狛江第一小学校"},
        "収容人数": {"type": "Property", "value": capacity},
        "@context": [INLINE, CORE],
    }
    body.update(extra)
    return body


def sub(url: str, **members: Any) -> dict[str, Any]:
    notification = members.pop("notification", {})
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "避難所"}],
        "notification": {"endpoint": {"uri": url}, **notification},
        "@context": [INLINE, CORE],
    }
    body.update(members)
    return body


def create(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post(S, json=body, headers=LD)
    assert r.status_code == 201, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def problem(r: Any, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{kind}"


def pages(r: Any) -> dict[str, dict[str, str]]:
    """The pagination links of an answer: rel -> the query of the page it names."""
    out = {}
    for value in r.headers.get_list("link"):
        for target, rel in re.findall(r'<([^>]*)>;\s*rel="(prev|next)"', value):
            path, _, query = target.partition("?")
            assert path == S
            out[rel] = dict(parse_qsl(query))
    return out


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- §5.8.1 Create Subscription -------------------------------------------------------------


def test_create_generates_an_id_and_refuses_a_duplicate(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.8.1: "If the Subscription does not contain an id, the NGSI-LD System shall
    generate one"; "If [...] a Subscription with the same id [exists], an error of type
    AlreadyExists shall be raised"; §6.10.3.1: 201 with a Location header."""
    sid = create(client, sub(receiver.url))
    assert re.fullmatch(r"urn:ngsi-ld:Subscription:[0-9a-f-]{36}", sid)
    named = create(client, sub(receiver.url, id="urn:ngsi-ld:Subscription:狛江-避難所"))
    assert named == "urn:ngsi-ld:Subscription:%E7%8B%9B%E6%B1%9F-%E9%81%BF%E9%9B%A3%E6%89%80"
    again = client.post(
        S, json=sub(receiver.url, id="urn:ngsi-ld:Subscription:狛江-避難所"), headers=LD
    )
    problem(again, 409, "AlreadyExists")


def test_create_refuses_what_the_data_type_restricts(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.8.1: "If the data types and restrictions expressed by clause 5.2.12 are not met
    by the Subscription, then an error of type BadRequestData shall be raised." Each body
    below breaks one restriction of §5.2.12-5.2.15; nothing is stored."""
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    broken: dict[str, dict[str, Any]] = {
        # §5.2.14 showChanges: "showChanges cannot be true in case format is keyValues"
        "showChanges with keyValues": sub(
            receiver.url, notification={"format": "keyValues", "showChanges": True}
        ),
        # §5.2.12 timeInterval: "cannot be present together with watchedAttributes"
        "timeInterval and watchedAttributes": sub(
            receiver.url, timeInterval=60, watchedAttributes=["収容人数"]
        ),
        # §5.2.12 throttling: "It cannot be present together with timeInterval"
        "timeInterval and throttling": sub(receiver.url, timeInterval=60, throttling=5),
        # §5.2.12 entities/watchedAttributes: "at least one of them shall be present"
        "nothing watched": {k: v for k, v in sub(receiver.url).items() if k != "entities"},
        # §5.2.12 expiresAt: a DateTime (§5.8.1: in the past is BadRequestData)
        "expiresAt in the past": sub(receiver.url, expiresAt="2020-01-01T00:00:00Z"),
        "expiresAt not a DateTime": sub(receiver.url, expiresAt="来週"),
        # §5.2.12 type: "It shall be equal to Subscription"
        "wrong type": {**sub(receiver.url), "type": "購読"},
        # §5.2.12 id: a URI
        "id not a URI": sub(receiver.url, id="購読1"),
        # §5.2.12 notification: mandatory
        "no notification": {k: v for k, v in sub(receiver.url).items() if k != "notification"},
        # §5.2.15 endpoint uri: a URI
        "endpoint not a URI": sub("通知先"),
        # §5.2.15 accept: application/json or application/ld+json (geo+json: 501)
        "endpoint accept": sub(
            receiver.url, notification={"endpoint": {"uri": receiver.url, "accept": "text/csv"}}
        ),
        # §5.2.14 format
        "unknown format": sub(receiver.url, notification={"format": "表形式"}),
        # §5.2.12 q / geoQ / notificationTrigger / throttling / isActive
        "q grammar": sub(receiver.url, q="収容人数>>10"),
        "geoQ georel": sub(
            receiver.url,
            geoQ={"geometry": "Point", "coordinates": [139.57, 35.63], "georel": "近く"},
        ),
        "notificationTrigger": sub(receiver.url, notificationTrigger=["attributeChanged"]),
        "throttling negative": sub(receiver.url, throttling=-1),
        "isActive not boolean": sub(receiver.url, isActive="はい"),
        "entities without a type": sub(receiver.url, entities=[{"id": SHELTER}]),
    }
    accepted = []
    for what, body in broken.items():
        r = client.post(S, json=body, headers=LD)
        if r.status_code != 400:
            accepted.append((what, r.status_code, r.text))
            continue
        problem(r, 400, "BadRequestData")
        assert r.json().get("title"), what
    assert accepted == []
    assert client.get(S).json() == []
    # the valid forms of the same members are accepted
    create(client, sub(receiver.url, expiresAt=future, throttling=5, q="収容人数>10"))


# -- §5.8.3 Retrieve Subscription and its representation ------------------------------------


def test_retrieve_shows_every_member_with_defaults_and_status(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.8.3: "The Subscription [...] shall be returned". §5.2.12: notificationTrigger
    "default: attributeCreated and attributeUpdated", status "active | paused | expired"
    "provided by the system when querying the details of a subscription"; §5.2.14 format
    "If not present, default is normalized"; §5.2.15 accept "default application/json";
    timesSent/timesFailed "Provided by the system when querying the details of a
    subscription". Terms are compacted with the @context of the retrieve request."""
    future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sid = create(
        client,
        sub(
            receiver.url,
            subscriptionName="避難所の空き",
            description="収容人数の変化を通知",
            watchedAttributes=["収容人数"],
            q="収容人数<1000",
            expiresAt=future,
            throttling=2,
            lang="ja",
            notification={"attributes": ["収容人数", "名称"]},
        ),
    )
    own = client.get(f"{S}/{sid}").json()["jsonldContext"]
    r = client.get(f"{S}/{sid}", headers={"Accept": "application/ld+json", **link(own)})
    assert r.status_code == 200
    got = r.json()
    assert got.pop("@context") == own  # the terms below read in it
    assert got.pop("jsonldContext") == own
    assert got == {
        "id": sid,
        "type": "Subscription",
        "subscriptionName": "避難所の空き",
        "description": "収容人数の変化を通知",
        "entities": [{"type": "避難所"}],
        "watchedAttributes": ["収容人数"],
        "notificationTrigger": ["attributeCreated", "attributeUpdated"],
        "q": "収容人数<1000",
        "expiresAt": future,
        "throttling": 2,
        "lang": "ja",
        "status": "active",
        "notification": {
            "attributes": ["収容人数", "名称"],
            "format": "normalized",
            "endpoint": {"uri": receiver.url, "accept": "application/json"},
            "timesSent": 0,
            "timesFailed": 0,
        },
    }
    # read under the core context alone, the same terms are full IRIs
    plain = client.get(f"{S}/{sid}").json()
    assert plain["entities"] == [{"type": INLINE["避難所"]}]
    assert plain["watchedAttributes"] == [INLINE["収容人数"]]
    assert plain["notification"]["attributes"] == [INLINE["収容人数"], INLINE["名称"]]


def test_sys_attrs_show_created_and_modified(client: TestClient, receiver: Receiver) -> None:
    """§5.8.3/§6.11.3.1 options=sysAttrs: "createdAt" and "modifiedAt" of the
    Subscription (§5.2.12: "System generated") are shown only when asked for; an update
    (§5.8.2) moves modifiedAt and keeps createdAt."""
    sid = create(client, sub(receiver.url))
    assert "createdAt" not in client.get(f"{S}/{sid}").json()
    first = client.get(f"{S}/{sid}?options=sysAttrs").json()
    assert iso(first["createdAt"]) == iso(first["modifiedAt"])
    assert client.patch(f"{S}/{sid}", json={"throttling": 3}, headers=JSON).status_code == 204
    second = client.get(f"{S}/{sid}?options=sysAttrs").json()
    assert second["createdAt"] == first["createdAt"]
    assert iso(second["modifiedAt"]) > iso(first["modifiedAt"])
    listed = client.get(f"{S}?options=sysAttrs").json()
    assert listed[0]["createdAt"] == first["createdAt"]


def test_retrieve_errors(client: TestClient) -> None:
    """§5.8.3: "If the Subscription id is not present or it is not a valid URI, then an
    error of type BadRequestData shall be raised"; "If there is no existing Subscription
    that matches the id [...] ResourceNotFound"."""
    problem(client.get(f"{S}/購読"), 400, "BadRequestData")
    problem(client.get(f"{S}/urn:ngsi-ld:Subscription:無い"), 404, "ResourceNotFound")
    problem(client.delete(f"{S}/urn:ngsi-ld:Subscription:無い"), 404, "ResourceNotFound")
    problem(
        client.patch(f"{S}/urn:ngsi-ld:Subscription:無い", json={"throttling": 1}, headers=JSON),
        404,
        "ResourceNotFound",
    )


# -- §5.8.4 Query Subscriptions -------------------------------------------------------------


def test_query_pages_with_count_and_link_headers(client: TestClient, receiver: Receiver) -> None:
    """§5.8.4: "the Subscriptions [...] shall be returned", paged (§5.5.9): "limit" and
    "offset"; §6.3.13 count: "NGSILD-Results-Count"; §6.3.9 (pagination): the Link header
    with rel="next" / rel="prev" points at the neighbouring pages; §6.3.5: an
    application/json answer carries the @context in a Link header, an application/ld+json
    one in every element."""
    ids = [create(client, sub(receiver.url, subscriptionName=f"避難所{i}")) for i in range(5)]
    first = client.get(f"{S}?limit=2&count=true", headers=link(CORE))
    assert first.status_code == 200
    assert [s["id"] for s in first.json()] == ids[:2]
    assert first.headers["ngsild-results-count"] == "5"
    assert any(
        'rel="http://www.w3.org/ns/json-ld#context"' in v for v in first.headers.get_list("link")
    )
    assert pages(first) == {"next": {"count": "true", "limit": "2", "offset": "2"}}
    middle = client.get(f"{S}?limit=2&offset=2")
    assert [s["id"] for s in middle.json()] == ids[2:4]
    assert pages(middle) == {
        "prev": {"limit": "2", "offset": "0"},
        "next": {"limit": "2", "offset": "4"},
    }
    last = client.get(f"{S}?limit=2&offset=4")
    assert [s["id"] for s in last.json()] == ids[4:]
    assert pages(last) == {"prev": {"limit": "2", "offset": "2"}}
    assert pages(client.get(S)) == {}  # one page holds them all
    ld = client.get(f"{S}?limit=2", headers={"Accept": "application/ld+json"}).json()
    assert all(item["@context"] == CORE for item in ld)
    assert all(item["entities"] == [{"type": INLINE["避難所"]}] for item in ld)
    assert client.get(f"{S}?limit=0").json() == []
    problem(client.get(f"{S}?offset=-1"), 400, "BadRequestData")


# -- §5.8.2 Update Subscription -------------------------------------------------------------


def test_update_merges_and_validates(client: TestClient, receiver: Receiver) -> None:
    """§5.8.2: "For each term in the SubscriptionFragment, if the target Subscription
    does not contain it, it shall be added, otherwise its value shall be replaced";
    "If the data types and restrictions expressed by clause 5.2.12 are not met by the
    Subscription resulting from the update, an error of type BadRequestData shall be
    raised" (and nothing changes); isActive false makes the status "paused"."""
    sid = create(client, sub(receiver.url, q="収容人数>10"))
    fragment = {"watchedAttributes": ["名称"], "isActive": False, "@context": [INLINE, CORE]}
    assert client.patch(f"{S}/{sid}", json=fragment, headers=LD).status_code == 204
    own = link(client.get(f"{S}/{sid}").json()["jsonldContext"])
    shown = client.get(f"{S}/{sid}", headers=own).json()
    assert shown["watchedAttributes"] == ["名称"]
    assert shown["q"] == "収容人数>10"  # kept
    assert shown["status"] == "paused"
    r = client.patch(
        f"{S}/{sid}",
        json={"notification": {"format": "keyValues", "showChanges": True}},
        headers=JSON,
    )
    problem(r, 400, "BadRequestData")
    problem(
        client.patch(f"{S}/{sid}", json={"expiresAt": "2020-01-01T00:00:00Z"}, headers=JSON),
        400,
        "BadRequestData",
    )
    problem(
        client.patch(f"{S}/{sid}", json={"timeInterval": 30}, headers=JSON), 400, "BadRequestData"
    )
    after = client.get(f"{S}/{sid}", headers=own).json()
    assert after["notification"]["format"] == "normalized"
    assert "expiresAt" not in after
    assert "timeInterval" not in after
    assert client.patch(f"{S}/{sid}", json={"isActive": True}, headers=JSON).status_code == 204
    assert client.get(f"{S}/{sid}").json()["status"] == "active"


def test_an_expired_subscription_says_so_and_is_silent(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.2.12 status: "expired" once expiresAt has passed; §5.8.6: notifications are sent
    only while the Subscription is active."""
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    sid = create(client, sub(receiver.url, expiresAt=soon))
    live = create(client, sub(receiver.url))

    def expired() -> bool:
        return bool(client.get(f"{S}/{sid}").json()["status"] == "expired")

    from tests.support import eventually

    eventually(expired, timeout=5, what="the subscription to expire")
    client.post(E, json=shelter(), headers=LD)
    notes = receiver.wait(1)
    assert [n["subscriptionId"] for _, n in notes] == [live]
    receiver.quiet(1, bound=0.5)


# -- §5.8.5 Delete Subscription -------------------------------------------------------------


def test_delete_stops_notifications(client: TestClient, receiver: Receiver) -> None:
    """§5.8.5: "The Subscription [...] shall be deleted"; afterwards retrieving it is
    ResourceNotFound and changes notify nothing."""
    gone = create(client, sub(receiver.url))
    kept = create(client, sub(receiver.url))
    assert client.delete(f"{S}/{gone}").status_code == 204
    problem(client.get(f"{S}/{gone}"), 404, "ResourceNotFound")
    client.post(E, json=shelter(), headers=LD)
    assert [n["subscriptionId"] for _, n in receiver.wait(1)] == [kept]
    receiver.quiet(1, bound=0.5)


# -- §5.3.1 / §5.8.6 Notification contents --------------------------------------------------


def test_notification_members_and_format(client: TestClient, receiver: Receiver) -> None:
    """§5.3.1 Notification: "id" (URI, unique), "type" = "Notification",
    "subscriptionId", "notifiedAt" ("Time at which the notification was sent"), "data";
    §5.2.14 format normalized / concise / keyValues; "attributes": "Entity Attribute
    Names [...] to be included in the notification" (id and type always)."""
    before = datetime.now(UTC)
    formats = {}
    for fmt in ("normalized", "concise", "keyValues"):
        formats[fmt] = create(
            client, sub(receiver.url, notification={"format": fmt, "attributes": ["収容人数"]})
        )
    client.post(E, json=shelter(), headers=LD)
    notes = {n["subscriptionId"]: n for _, n in receiver.wait(3)}
    ids = set()
    for fmt, sid in formats.items():
        note = notes[sid]
        assert note["type"] == "Notification"
        assert note["id"].startswith("urn:ngsi-ld:Notification:")
        ids.add(note["id"])
        assert before <= iso(note["notifiedAt"]) <= datetime.now(UTC)
        assert len(note["data"]) == 1
        entity = note["data"][0]
        assert set(entity) == {"id", "type", "収容人数"}, fmt
        assert entity["id"] == SHELTER
        assert entity["type"] == "避難所"
        assert (
            entity["収容人数"]
            == {
                "normalized": {"type": "Property", "value": 300},
                "concise": 300,  # concise: a Property holding only its value is that value
                "keyValues": 300,
            }[fmt]
        )
    assert len(ids) == 3


def test_notification_sys_attrs(client: TestClient, receiver: Receiver) -> None:
    """§5.2.14 sysAttrs: "If true, the system generated Attributes createdAt and
    modifiedAt are included in the response payload body" (default false)."""
    with_sys = create(client, sub(receiver.url, notification={"sysAttrs": True}))
    without = create(client, sub(receiver.url))
    client.post(E, json=shelter(), headers=LD)
    notes = {n["subscriptionId"]: n["data"][0] for _, n in receiver.wait(2)}
    shown = notes[with_sys]
    assert iso(shown["createdAt"]) <= iso(shown["modifiedAt"])
    assert "createdAt" in shown["収容人数"]
    assert "modifiedAt" in shown["収容人数"]
    plain = notes[without]
    assert "createdAt" not in plain
    assert "modifiedAt" not in plain
    assert "createdAt" not in plain["収容人数"]


def test_notification_show_changes(client: TestClient, receiver: Receiver) -> None:
    """§5.2.14 showChanges: "If true, the previous value (previousValue) of Properties or
    languageMap (previousLanguageMap) of Language Properties or object (previousObject)
    of Relationships is provided in addition to the current one. This requires that it
    exists, i.e. in case of modifications and deletions, but not in the case of
    creations."""
    create(
        client,
        sub(
            receiver.url,
            notificationTrigger=["entityCreated", "attributeUpdated", "attributeDeleted"],
            notification={"showChanges": True},
        ),
    )
    ctx = [
        {
            **INLINE,
            "管理者": "https://komae.example/ns/管理者",
            "案内": "https://komae.example/ns/案内",
        },
        CORE,
    ]
    body = shelter(
        管理者={"type": "Relationship", "object": "urn:ngsi-ld:市役所:狛江市"},
        案内={"type": "LanguageProperty", "languageMap": {"ja": "開設中"}},
    )
    client.post(E, json={**body, "@context": ctx}, headers=LD)
    created = receiver.wait(1)[0][1]["data"][0]
    assert "previousValue" not in created["収容人数"]
    client.patch(
        f"{E}/{SHELTER}/attrs",
        json={
            "収容人数": {"type": "Property", "value": 250},
            "管理者": {"type": "Relationship", "object": "urn:ngsi-ld:市役所:調布市"},
            "案内": {"type": "LanguageProperty", "languageMap": {"ja": "満員"}},
            "@context": ctx,
        },
        headers=LD,
    )
    updated = receiver.wait(2)[1][1]["data"][0]
    full = "https://komae.example/ns/"  # terms the subscription's context does not name
    assert updated["収容人数"]["previousValue"] == 300
    assert updated[f"{full}管理者"]["previousObject"] == "urn:ngsi-ld:市役所:狛江市"
    assert updated[f"{full}案内"]["previousLanguageMap"] == {"ja": "開設中"}
    hosted = client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": INLINE}, headers=JSON)
    gone = client.delete(f"{E}/{SHELTER}/attrs/収容人数", headers=link(hosted.headers["location"]))
    assert gone.status_code == 204, gone.text
    deleted = receiver.wait(3)[2][1]["data"][0]["収容人数"]
    assert deleted["value"] == "urn:ngsi-ld:null"
    assert deleted["previousValue"] == 250


# -- §5.13 contexts a subscription creates implicitly ---------------------------------------


def test_an_inline_context_becomes_an_implicitly_created_one(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.13 (kind "ImplicitlyCreated"): an @context given inline (not a single URI) is
    stored by the broker and served under a URL of its own, which a Subscription's
    jsonldContext names (§5.2.12: "If not provided, the @context used for the
    subscription shall be used as a default") and which application/json notifications
    point at in their Link header (§6.3.5)."""
    sid = create(client, sub(receiver.url, notification={"format": "keyValues"}))
    url = client.get(f"{S}/{sid}").json()["jsonldContext"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    served = client.get(f"/{path}")
    assert served.status_code == 200
    assert served.json()["@context"] == [INLINE, CORE]
    listed = client.get("/ngsi-ld/v1/jsonldContexts?details=true&kind=ImplicitlyCreated").json()
    assert any(c["URL"] == url and c["kind"] == "ImplicitlyCreated" for c in listed)
    client.post(E, json=shelter(), headers=LD)
    headers, note = receiver.wait(1)[0]
    assert url.split("://", 1)[1] in headers["link"]
    assert note["data"][0]["収容人数"] == 300  # compacted with that context
    # an ld+json endpoint gets the context in the body instead
    receiver2 = Receiver()
    try:
        create(
            client,
            sub(
                receiver2.url,
                notification={"endpoint": {"uri": receiver2.url, "accept": "application/ld+json"}},
            ),
        )
        client.patch(
            f"{E}/{SHELTER}/attrs", json={"収容人数": 10, "@context": [INLINE, CORE]}, headers=LD
        )
        headers2, note2 = receiver2.wait(1)[0]
        assert headers2["content-type"] == "application/ld+json"
        assert note2["@context"] == [INLINE, CORE]
        assert "link" not in headers2
    finally:
        receiver2.close()


def test_json_ld_context_member_names_the_notification_context(
    client: TestClient, receiver: Receiver
) -> None:
    """§5.2.12 jsonldContext: "The dereferenceable URI of the JSON-LD @context to be used
    when sending a notification resulting from the subscription"."""
    hosted = client.post(
        "/ngsi-ld/v1/jsonldContexts",
        json={"@context": {"定員": INLINE["収容人数"], "避難所": INLINE["避難所"]}},
        headers=JSON,
    )
    assert hosted.status_code == 201
    url = hosted.headers["location"]
    if url.startswith("/"):
        url = f"http://testserver{url}"
    create(client, sub(receiver.url, jsonldContext=url, notification={"format": "keyValues"}))
    client.post(E, json=shelter(), headers=LD)
    headers, note = receiver.wait(1)[0]
    assert note["data"][0]["定員"] == 300
    assert url.split("://", 1)[1] in headers["link"]
