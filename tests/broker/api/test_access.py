"""Access control on every door of the broker's HTTP APIs, with real API keys and real
tokens from a test OIDC issuer on 127.0.0.1 (tests/support_oidc.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.routing import _iter_routes_with_context
from fastapi.testclient import TestClient
from starlette.routing import Route

from broker.api.auth import authorize
from broker.app import create_app
from broker.auth import hash_key
from tests.conftest import JSON, make_settings
from tests.receiver import Receiver
from tests.support_oidc import OidcIssuer, oidc_issuer

KEYS = {
    "komae-writer": "komae-writer-key-0001",
    "aed-editor": "aed-editor-key-0002",
    "aed-reader": "aed-reader-key-0003",
    "hub-admin": "hub-admin-key-0004",
    "aed-watcher": "aed-watcher-key-0005",
}
ENTITIES = "/ngsi-ld/v1/entities"
KOMAE = {"NGSILD-Tenant": "komae"}
CHOFU = {"NGSILD-Tenant": "chofu"}


def auth_yaml(issuer: OidcIssuer) -> str:
    return f"""
api_keys:
  - {{name: komae-writer, key_sha256: "{hash_key(KEYS["komae-writer"])}", roles: [writer], tenants: [komae]}}
  - {{name: aed-editor, key_sha256: "{hash_key(KEYS["aed-editor"])}", roles: [aed-editor], tenants: [komae]}}
  - {{name: aed-reader, key_sha256: "{hash_key(KEYS["aed-reader"])}", roles: [aed-reader], tenants: [komae]}}
  - {{name: hub-admin, key_sha256: "{hash_key(KEYS["hub-admin"])}", roles: [admin], tenants: ["*"]}}
  - {{name: aed-watcher, key_sha256: "{hash_key(KEYS["aed-watcher"])}", roles: [aed-watcher], tenants: [komae]}}
oidc:
  issuer: {issuer.issuer}
  audience: renkei
  jwks_url: {issuer.jwks_url}
  roles_claim: realm_access.roles
  tenants_claim: tenants
roles:
  writer: {{read: ["*"], write: ["*"], subscribe: ["*"]}}
  aed-editor: {{read: ["*"], write: [AEDLocation]}}
  aed-reader: {{read: [AEDLocation], subscribe: ["*"]}}
  aed-watcher: {{read: ["*"], subscribe: [AEDLocation]}}
  admin: {{read: ["*"], write: ["*"], subscribe: ["*"], admin: true}}
anonymous:
  read: ["AEDLocation@komae"]
"""


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def aed(eid: str, name: str = "狛江市役所") -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:{eid}",
        "type": "AEDLocation",
        "name": {"type": "Property", "value": name},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
    }


def shelter(eid: str, name: str = "狛江第一小学校") -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:EvacuationShelter:{eid}",
        "type": "EvacuationShelter",
        "name": {"type": "Property", "value": name},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.58, 35.63]},
        },
    }


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    with oidc_issuer() as state:
        yield state


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def hub(tmp_path: Path, issuer: OidcIssuer, audit_path: Path) -> Iterator[TestClient]:
    auth = tmp_path / "auth.yaml"
    auth.write_text(auth_yaml(issuer), encoding="utf-8")
    settings = make_settings(
        tmp_path, auth_file=auth, audit_log=audit_path, outbound_allow=["127.0.0.1"]
    )
    with TestClient(create_app(settings)) as c:
        admin = {**key("hub-admin"), **JSON}
        for tenant in ("komae", "chofu"):
            h = {**admin, "NGSILD-Tenant": tenant}
            r = c.post(
                "/ngsi-ld/v1/entityOperations/create", headers=h, json=[aed("1"), shelter("1")]
            )
            assert r.status_code == 201, r.text
        yield c


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["id"] for e in response.json())


# -- every route has the dependency ------------------------------------------------------------

#: Routes that are no API: the OpenAPI document and its pages.
DOC_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _calls(dependant: Any) -> list[Any]:
    out = []
    for d in dependant.dependencies:
        out.append(d.call)
        out.extend(_calls(d))
    return out


def test_every_route_has_the_access_dependency(tmp_path: Path) -> None:
    """A route added without the dependency fails here. The probes (/health...) are
    let through inside the dependency itself; /metrics needs admin."""
    app = create_app(make_settings(tmp_path))
    seen = 0
    # FastAPI includes routers lazily: the effective route (prefix, dependencies of the
    # app and of every router on the way) is the context it resolves each one to
    for route, context in _iter_routes_with_context(app.routes):
        dependant = context.dependant if context is not None else getattr(route, "dependant", None)
        if dependant is None:
            assert isinstance(route, Route), route
            assert route.path in DOC_PATHS, route.path
            continue
        assert authorize in _calls(dependant), f"{route.path} has no access check"  # type: ignore[attr-defined]
        seen += 1
    assert seen > 80


# -- credentials -------------------------------------------------------------------------------


def test_bad_credentials_are_401_with_a_challenge(hub: TestClient, issuer: OidcIssuer) -> None:
    aed_url = f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1"
    now = int(time.time())
    bad = [
        {"X-API-Key": "no-such-key"},
        {"Authorization": "Bearer " + issuer.sign({"exp": now - 3600, "tenants": ["komae"]})},
        {"Authorization": "Bearer " + issuer.sign({"aud": "other", "tenants": ["komae"]})},
        {
            "Authorization": "Bearer "
            + issuer.sign({"iss": "http://127.0.0.1:1/x", "tenants": ["komae"]})
        },
        {"Authorization": "Bearer " + issuer.sign({"tenants": ["komae"]})[:-4] + "AAAA"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]
    for headers in bad:
        for method, url in (
            ("GET", aed_url),
            ("GET", ENTITIES + "?type=AEDLocation"),
            ("POST", ENTITIES),
        ):
            r = hub.request(method, url, headers={**KOMAE, **JSON, **headers}, json=aed("9"))
            assert r.status_code == 401, (headers, method, r.text)
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="renkei"')
            assert r.json()["type"].endswith("/Unauthorized")


def test_a_token_from_the_issuer_works_on_the_fast_path(
    hub: TestClient, issuer: OidcIssuer
) -> None:
    token = issuer.sign(
        {"preferred_username": "山田", "realm_access": {"roles": ["writer"]}, "tenants": ["komae"]},
        kid="ec-1",
    )
    h = {"Authorization": f"Bearer {token}", **KOMAE, **JSON}
    assert hub.post(ENTITIES, headers=h, json=aed("狛江駅", "狛江駅")).status_code == 201
    got = hub.get(f"{ENTITIES}/urn:ngsi-ld:AEDLocation:狛江駅", headers=h)
    assert got.status_code == 200
    assert got.json()["name"]["value"] == "狛江駅"
    # the same token in another tenant: creation refused, entity missing
    other = {**h, **CHOFU}
    assert hub.post(ENTITIES, headers=other, json=aed("調布駅")).status_code == 403
    assert hub.get(f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1", headers=other).status_code == 404


# -- anonymous: exactly the open types ---------------------------------------------------------


def test_anonymous_reads_see_exactly_the_open_types(hub: TestClient) -> None:
    assert ids(hub.get(ENTITIES + "?type=AEDLocation,EvacuationShelter", headers=KOMAE)) == [
        "urn:ngsi-ld:AEDLocation:1"
    ]
    assert ids(hub.get(ENTITIES + "?local=true", headers=KOMAE)) == ["urn:ngsi-ld:AEDLocation:1"]
    counted = hub.get(ENTITIES + "?local=true&count=true", headers=KOMAE)
    assert counted.headers["NGSILD-Results-Count"] == "1"
    assert hub.get("/ngsi-ld/v1/types", headers=KOMAE).json()["typeList"] == ["AEDLocation"]
    attrs = hub.get("/ngsi-ld/v1/attributes", headers=KOMAE).json()["attributeList"]
    assert sorted(attrs) == ["location", "name"]
    shelter_url = f"{ENTITIES}/urn:ngsi-ld:EvacuationShelter:1"
    missing = f"{ENTITIES}/urn:ngsi-ld:EvacuationShelter:nothing"
    assert hub.get(shelter_url, headers=KOMAE).status_code == 404
    assert hub.get(missing, headers=KOMAE).status_code == 404
    # the default tenant and chofu are not open: nothing there
    assert hub.get(f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1", headers=CHOFU).status_code == 404
    # OGC and the map: only the open collection, without a tenant header too
    cols = [c["id"] for c in hub.get("/ogc/collections").json()["collections"]]
    assert [c for c in cols if not c.startswith("layer~")] == ["komae~AEDLocation"]
    assert hub.get("/ogc/collections/komae~EvacuationShelter/items").status_code == 404
    assert hub.get("/ogc/collections/chofu~AEDLocation/items").status_code == 404
    items = hub.get("/ogc/collections/komae~AEDLocation/items").json()
    assert [f["properties"]["name"] for f in items["features"]] == ["狛江市役所"]
    # no write of any kind
    for method, url, body in (
        ("POST", ENTITIES, aed("2")),
        ("POST", "/ngsi-ld/v1/entityOperations/upsert", [aed("2")]),
        ("DELETE", f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1", None),
        ("DELETE", ENTITIES + "?type=AEDLocation", None),
        ("POST", "/ngsi-ld/v1/subscriptions", {"type": "Subscription"}),
        ("POST", "/ngsi-ld/v1/jsonldContexts", {"@context": {"a": "http://a/"}}),
        ("POST", "/ngsi-ld/v1/temporal/entities", aed("2")),
    ):
        r = hub.request(method, url, headers={**KOMAE, **JSON}, json=body)
        assert r.status_code == 401, (method, url, r.text)
    assert hub.get(f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1", headers=KOMAE).status_code == 200


# -- cross-tenant --------------------------------------------------------------------------------


def test_another_tenant_answers_as_missing(hub: TestClient) -> None:
    w = key("komae-writer")
    url = f"{ENTITIES}/urn:ngsi-ld:AEDLocation:1"
    theirs = hub.get(url, headers={**w, **CHOFU})
    none = hub.get(url, headers={**key("hub-admin"), "NGSILD-Tenant": "nowhere"})
    assert theirs.status_code == none.status_code == 404
    # exactly the answer of a tenant that does not exist (naming the header's own value)
    assert theirs.json() == orjson.loads(none.content.replace(b"nowhere", b"chofu"))
    q = hub.get(ENTITIES + "?type=AEDLocation", headers={**w, **CHOFU})
    q_none = hub.get(
        ENTITIES + "?type=AEDLocation", headers={**key("hub-admin"), "NGSILD-Tenant": "nowhere"}
    )
    assert (q.status_code, q.json()) == (q_none.status_code, q_none.json())
    for method, url_, body in (
        ("POST", ENTITIES, aed("2")),
        ("PATCH", f"{url}/attrs", {"name": {"type": "Property", "value": "x"}}),
        ("DELETE", url, None),
        ("POST", "/ngsi-ld/v1/entityOperations/upsert", [aed("1")]),
        ("POST", "/ngsi-ld/v1/entityOperations/delete", ["urn:ngsi-ld:AEDLocation:1"]),
        ("DELETE", ENTITIES + "?type=AEDLocation", None),
        ("POST", "/ngsi-ld/v1/temporal/entities", aed("1")),
        ("POST", "/ngsi-ld/v1/subscriptions", {"type": "Subscription"}),
    ):
        r = hub.request(method, url_, headers={**w, **CHOFU, **JSON}, json=body)
        assert r.status_code == 403, (method, url_, r.text)
        assert "chofu" not in r.text
    admin = {**key("hub-admin"), **CHOFU}
    assert hub.get(url, headers=admin).json()["name"]["value"] == "狛江市役所"  # untouched
    # v2: Fiware-Service is the tenant, v2's error shape
    v2 = hub.get("/v2/entities?type=AEDLocation", headers={**w, "Fiware-Service": "chofu"})
    assert v2.status_code == 404 or v2.json() == []
    made = hub.post(
        "/v2/entities",
        headers={**w, **JSON, "Fiware-Service": "chofu"},
        json={"id": "AED-2", "type": "AEDLocation"},
    )
    assert made.status_code == 403
    assert made.json()["error"] == "Forbidden"


# -- cross-type ----------------------------------------------------------------------------------


def test_a_type_the_role_may_not_write_is_refused_on_every_door(hub: TestClient) -> None:
    e = {**key("aed-editor"), **KOMAE, **JSON}
    assert hub.post(ENTITIES, headers=e, json=aed("2", "狛江駅前")).status_code == 201
    assert hub.post(ENTITIES, headers=e, json=shelter("2")).status_code == 403
    shelter_url = f"{ENTITIES}/urn:ngsi-ld:EvacuationShelter:1"
    patch = {"name": {"type": "Property", "value": "書き換え"}}
    assert hub.patch(f"{shelter_url}/attrs", headers=e, json=patch).status_code == 403
    assert hub.delete(shelter_url, headers=e).status_code == 403
    batch = hub.post(
        "/ngsi-ld/v1/entityOperations/upsert", headers=e, json=[aed("3"), shelter("3")]
    )
    assert batch.status_code == 207, batch.text
    assert batch.json()["success"] == ["urn:ngsi-ld:AEDLocation:3"]
    assert [x["entityId"] for x in batch.json()["errors"]] == ["urn:ngsi-ld:EvacuationShelter:3"]
    gone = hub.post(
        "/ngsi-ld/v1/entityOperations/delete",
        headers=e,
        json=["urn:ngsi-ld:EvacuationShelter:1", "urn:ngsi-ld:AEDLocation:3"],
    )
    assert gone.status_code == 207
    assert hub.delete(ENTITIES + "?type=EvacuationShelter", headers=e).status_code == 403
    assert hub.delete(ENTITIES + "?local=true", headers=e).status_code == 403
    temporal = hub.post("/ngsi-ld/v1/temporal/entities", headers=e, json=shelter("4"))
    assert temporal.status_code == 403
    v2 = hub.post(
        "/v2/entities",
        headers={**e, "Fiware-Service": "komae"},
        json={"id": "S9", "type": "EvacuationShelter"},
    )
    assert v2.status_code == 403
    assert v2.json()["error"] == "Forbidden"
    # the shelter is still there, unchanged
    admin = {**key("hub-admin"), **KOMAE}
    assert hub.get(shelter_url, headers=admin).json()["name"]["value"] == "狛江第一小学校"


def test_reads_are_filtered_to_readable_types(hub: TestClient) -> None:
    r = {**key("aed-reader"), **KOMAE}
    assert ids(hub.get(ENTITIES + "?local=true", headers=r)) == ["urn:ngsi-ld:AEDLocation:1"]
    q = hub.post(
        "/ngsi-ld/v1/entityOperations/query",
        headers={**r, **JSON},
        json={"type": "Query", "entities": [{"type": "EvacuationShelter"}]},
    )
    assert q.status_code == 200
    assert q.json() == []
    assert hub.get("/ngsi-ld/v1/types", headers=r).json()["typeList"] == ["AEDLocation"]
    temporal = hub.get(
        "/ngsi-ld/v1/temporal/entities?type=AEDLocation,EvacuationShelter", headers=r
    )
    assert sorted(e["id"] for e in temporal.json()) == ["urn:ngsi-ld:AEDLocation:1"]
    cols = [c["id"] for c in hub.get("/ogc/collections", headers=r).json()["collections"]]
    assert [c for c in cols if not c.startswith("layer~")] == ["AEDLocation"]
    # a writer of every type sees both
    w = {**key("komae-writer"), **KOMAE}
    assert len(ids(hub.get(ENTITIES + "?local=true", headers=w))) == 2


# -- admin ---------------------------------------------------------------------------------------


def test_contexts_need_admin(hub: TestClient) -> None:
    body = {"@context": {"避難所": "https://example.org/Shelter"}}
    w = {**key("komae-writer"), **JSON}
    assert hub.post("/ngsi-ld/v1/jsonldContexts", headers=w, json=body).status_code == 403
    a = {**key("hub-admin"), **JSON}
    made = hub.post("/ngsi-ld/v1/jsonldContexts", headers=a, json=body)
    assert made.status_code == 201
    assert hub.delete(made.headers["location"], headers=w).status_code == 403
    assert hub.delete(made.headers["location"], headers=a).status_code == 204


def test_registrations_need_admin(hub: TestClient) -> None:
    """A registration makes the hub call another host with its own credentials: every
    operation on them, reading included, needs admin."""
    reg = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:調布",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "AEDLocation"}]}],
        "endpoint": "http://127.0.0.1:9/",
    }
    base = "/ngsi-ld/v1/csourceRegistrations"
    item = f"{base}/{reg['id']}"
    for who in ("komae-writer", "aed-reader"):
        h = {**key(who), **JSON, **KOMAE}
        assert hub.post(base, headers=h, json=reg).status_code == 403
    assert hub.post(base, headers={**JSON, **KOMAE}, json=reg).status_code == 401
    a = {**key("hub-admin"), **JSON, **KOMAE}
    assert hub.post(base, headers=a, json=reg).status_code == 201
    w = {**key("komae-writer"), **KOMAE}
    for method, url in (("get", item), ("get", f"{base}?type=AEDLocation"), ("delete", item)):
        assert hub.request(method, url, headers=w).status_code == 403
    assert hub.patch(item, headers={**w, **JSON}, json={"mode": "auxiliary"}).status_code == 403
    assert hub.get(item, headers=a).status_code == 200
    assert hub.delete(item, headers=a).status_code == 204


# -- subscriptions -------------------------------------------------------------------------------


def test_notifications_carry_only_what_the_owner_may_read(hub: TestClient) -> None:
    receiver = Receiver()
    try:
        r = {**key("aed-reader"), **KOMAE, **JSON}
        sub = {
            "type": "Subscription",
            "entities": [{"type": "AEDLocation"}, {"type": "EvacuationShelter"}],
            "notification": {
                "endpoint": {
                    "uri": receiver.url,
                    "receiverInfo": [{"key": "Authorization", "value": "Bearer s3cret-0001"}],
                }
            },
        }
        made = hub.post("/ngsi-ld/v1/subscriptions", headers=r, json=sub)
        assert made.status_code == 201, made.text
        w = {**key("komae-writer"), **KOMAE, **JSON}
        assert hub.post(ENTITIES, headers=w, json=shelter("5")).status_code == 201
        assert hub.post(ENTITIES, headers=w, json=aed("5", "狛江駅北口")).status_code == 201
        got = receiver.wait(1)
        # the shelter was written first; after the AED's notification, wait a bound
        time.sleep(0.5)
        sent = [d["id"] for _h, body in receiver.received for d in body["data"]]
        assert sent == ["urn:ngsi-ld:AEDLocation:5"]
        assert got[0][0].get("authorization") == "Bearer s3cret-0001"
        # the secret is answered masked, and a PATCH echoing it keeps it
        url = "/ngsi-ld/v1/subscriptions/" + made.headers["location"].rsplit("/", 1)[1]
        shown = hub.get(url, headers=r).json()
        assert shown["notification"]["endpoint"]["receiverInfo"][0]["value"] == "***"
        assert "s3cret" not in hub.get("/ngsi-ld/v1/subscriptions", headers=r).text
        echo = {"notification": {"endpoint": shown["notification"]["endpoint"]}}
        assert hub.patch(url, headers=r, json=echo).status_code == 204
        assert hub.post(ENTITIES, headers=w, json=aed("6")).status_code == 201
        last = receiver.wait(2)[-1]
        assert last[0].get("authorization") == "Bearer s3cret-0001"
    finally:
        receiver.close()


def test_subscriptions_need_subscribe_on_the_types_they_select(hub: TestClient) -> None:
    """Both APIs: a role that may subscribe to AEDLocation only cannot subscribe to
    shelters, nor to entities of any type."""
    w = {**key("aed-watcher"), **JSON}
    receiver = "http://127.0.0.1:9/受信"

    def v2(entities: list[dict[str, str]]) -> dict[str, Any]:
        return {"subject": {"entities": entities}, "notification": {"http": {"url": receiver}}}

    def ld(entities: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "type": "Subscription",
            "entities": entities,
            "notification": {"endpoint": {"uri": receiver}},
        }

    v2h = {**w, "Fiware-Service": "komae"}
    for refused in (
        [{"idPattern": ".*", "type": "EvacuationShelter"}],
        [{"idPattern": ".*"}],
        [{"idPattern": ".*", "typePattern": "^AED"}],
        [{"id": "AED-1", "type": "AEDLocation"}, {"id": "S-1", "type": "EvacuationShelter"}],
    ):
        r = hub.post("/v2/subscriptions", headers=v2h, json=v2(refused))
        assert r.status_code == 403, (refused, r.text)
        assert r.json()["error"] == "Forbidden"
    made = hub.post(
        "/v2/subscriptions", headers=v2h, json=v2([{"idPattern": ".*", "type": "AEDLocation"}])
    )
    assert made.status_code == 201, made.text
    patch = {"subject": {"entities": [{"idPattern": ".*", "type": "EvacuationShelter"}]}}
    assert hub.patch(made.headers["location"], headers=v2h, json=patch).status_code == 403
    ldh = {**w, **KOMAE}
    assert (
        hub.post(
            "/ngsi-ld/v1/subscriptions", headers=ldh, json=ld([{"type": "EvacuationShelter"}])
        ).status_code
        == 403
    )
    assert (
        hub.post(
            "/ngsi-ld/v1/subscriptions", headers=ldh, json=ld([{"type": "AEDLocation"}])
        ).status_code
        == 201
    )
    watched_only = {**ld([]), "watchedAttributes": ["name"]}
    del watched_only["entities"]
    assert hub.post("/ngsi-ld/v1/subscriptions", headers=ldh, json=watched_only).status_code == 403


def test_subscriptions_reach_only_the_types_the_role_may_subscribe_to(hub: TestClient) -> None:
    h = {**key("aed-watcher"), **KOMAE, **JSON}
    subs = "/ngsi-ld/v1/subscriptions"

    def sub(entities: list[dict[str, str]] | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "Subscription",
            "watchedAttributes": ["name"],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
        }
        if entities is not None:
            doc["entities"] = entities
        return doc

    made = hub.post(subs, headers=h, json=sub([{"type": "AEDLocation"}]))
    assert made.status_code == 201, made.text
    # an entity matching AEDLocation;EvacuationShelter is an AEDLocation too
    both = hub.post(subs, headers=h, json=sub([{"type": "AEDLocation;EvacuationShelter"}]))
    assert both.status_code == 201, both.text
    for refused in (
        sub([{"type": "EvacuationShelter"}]),
        sub([{"type": "AEDLocation"}, {"type": "EvacuationShelter"}]),
        sub([{"type": "AEDLocation,EvacuationShelter"}]),
        sub(None),  # watchedAttributes alone: every type
    ):
        r = hub.post(subs, headers=h, json=refused)
        assert r.status_code == 403, (refused, r.text)
        assert r.json()["type"].endswith("/Forbidden")
    url = made.headers["location"]
    r = hub.patch(url, headers=h, json={"entities": [{"type": "EvacuationShelter"}]})
    assert r.status_code == 403
    kept = hub.get(url, headers=h).json()
    assert kept["entities"] == [{"type": "AEDLocation"}]
    listed = hub.get(subs, headers=h).json()
    assert len(listed) == 2
    # a role with subscribe on every type is not limited
    w = {**key("komae-writer"), **KOMAE, **JSON}
    assert hub.post(subs, headers=w, json=sub(None)).status_code == 201


# -- audit ---------------------------------------------------------------------------------------


def test_audit_log_records_writes_and_refusals_without_secrets(
    hub: TestClient, audit_path: Path
) -> None:
    e = {**key("aed-editor"), **KOMAE, **JSON}
    hub.post("/ngsi-ld/v1/entityOperations/upsert", headers=e, json=[aed("7"), aed("8")])
    hub.post(ENTITIES, headers=e, json=shelter("7"))
    hub.get(ENTITIES, headers={"X-API-Key": "wrong-key-0000"})
    text = audit_path.read_text(encoding="utf-8")
    for secret in (*KEYS.values(), "wrong-key-0000"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    batch = next(x for x in lines if x["operation"].endswith("/entityOperations/upsert"))
    assert batch["principal"] == "aed-editor"
    assert batch["tenant"] == "komae"
    assert batch["entities"] == {
        "count": 2,
        "ids": ["urn:ngsi-ld:AEDLocation:7", "urn:ngsi-ld:AEDLocation:8"],
    }
    assert [x["status"] for x in lines[-2:]] == [403, 401]
    assert lines[-2]["principal"] == "aed-editor"


def test_probes_are_open_and_metrics_need_admin(hub: TestClient) -> None:
    assert hub.get("/health/live").status_code == 200
    assert hub.get("/metrics").status_code == 401
    assert hub.get("/metrics", headers=key("komae-writer")).status_code == 403
    scraped = hub.get("/metrics", headers=key("hub-admin"))
    assert scraped.status_code == 200
    assert "renkei" in scraped.text
