"""``/openapi.json`` describes every NGSI-LD operation as ETSI GS CIM 009 (v1.8.1) gives it.

For each operation the clause's table of URI parameters is quoted below; the description
must list every one of them, and nothing else but the extras named beside it (accepted
by the broker, each with its reason). The parameters an operation declares are also
exactly the ones it accepts: any other is 400 InvalidRequest.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from tests.conftest import JSON

V1 = "/ngsi-ld/v1"

# the common extras: every operation accepts local=true (a broker without registrations
# answers from itself); every write accepts options (as it always did)
LOCAL = {"local"}
WRITE = {"options", "local"}

# §6.3.6 / §4.21 representation parameters of a retrieve (§6.5.3.1)
RETRIEVE = {
    "attrs",
    "pick",
    "omit",
    "type",
    "geometryProperty",
    "lang",
    "options",
    "format",
    "local",
    "join",
    "joinLevel",
    "containedBy",
    "datasetId",
    "entityMap",
    "entityMapLifetime",
}
# §6.4.3.2 "Query entities": its table of URI parameters
QUERY = {
    "type",
    "id",
    "idPattern",
    "q",
    "attrs",
    "pick",
    "omit",
    "georel",
    "geometry",
    "coordinates",
    "geoproperty",
    "geometryProperty",
    "scopeQ",
    "lang",
    "limit",
    "offset",
    "count",
    "options",
    "format",
    "orderBy",
    "local",
    "datasetId",
    "join",
    "joinLevel",
    "csf",
    "containedBy",
    "entityMap",
    "entityMapLifetime",
}
# §4.11 / §6.18.3.2: the temporal query parameters
TEMPORAL = {
    "timerel",
    "timeAt",
    "endTimeAt",
    "timeproperty",
    "lastN",
    "aggrMethods",
    "aggrPeriodDuration",
}
# accepted beyond the tables: geoQ (the geo-query in one parameter, as ngsildclient sends
# it), expandValues and jsonKeys (v1.8.1/v1.9.1), via (distributed operations)
QUERY_EXTRA = {"geoQ", "expandValues", "jsonKeys", "via"}

#: (method, path, clause, the clause's URI parameters, extras the broker also accepts)
OPERATIONS: list[tuple[str, str, str, set[str], set[str]]] = [
    ("post", "/entities", "6.4.3.1", set(), LOCAL),
    ("get", "/entities", "6.4.3.2", QUERY, QUERY_EXTRA),
    (
        "delete",
        "/entities",
        "6.4.3.3",
        {"type", "id", "idPattern", "q", "scopeQ", "keep", "drop"},
        LOCAL,
    ),
    ("get", "/entities/{entity_id}", "6.5.3.1", RETRIEVE, {"via"}),
    ("delete", "/entities/{entity_id}", "6.5.3.2", {"type", "local"}, set()),
    ("put", "/entities/{entity_id}", "6.5.3.3", set(), WRITE),
    ("patch", "/entities/{entity_id}", "6.5.3.4", set(), WRITE),
    ("post", "/entities/{entity_id}/attrs", "6.6.3.1", {"options"}, LOCAL),
    ("patch", "/entities/{entity_id}/attrs", "6.6.3.2", set(), WRITE),
    ("patch", "/entities/{entity_id}/attrs/{attr}", "6.7.3.1", set(), WRITE),
    ("delete", "/entities/{entity_id}/attrs/{attr}", "6.7.3.2", {"datasetId", "deleteAll"}, LOCAL),
    ("put", "/entities/{entity_id}/attrs/{attr}", "6.7.3.3", set(), WRITE),
    ("post", "/subscriptions", "6.10.3.1", set(), LOCAL),
    ("get", "/subscriptions", "6.10.3.2", {"limit", "offset", "count"}, {"options", "local"}),
    ("get", "/subscriptions/{sub_id}", "6.11.3.1", set(), {"options", "local"}),
    ("patch", "/subscriptions/{sub_id}", "6.11.3.2", set(), LOCAL),
    ("delete", "/subscriptions/{sub_id}", "6.11.3.3", set(), LOCAL),
    ("post", "/entityOperations/create", "6.14.3.1", set(), WRITE),
    ("post", "/entityOperations/upsert", "6.15.3.1", {"options"}, LOCAL),
    ("post", "/entityOperations/update", "6.16.3.1", {"options"}, LOCAL),
    ("post", "/entityOperations/delete", "6.17.3.1", set(), LOCAL),
    ("post", "/entityOperations/merge", "6.31.3.1", set(), WRITE),
    (
        "post",
        "/entityOperations/query",
        "6.23.3.1",
        {"limit", "offset", "count", "options", "format"},
        {"lang", "local", "geometryProperty", "pick", "omit", "join", "joinLevel"},
    ),
    ("post", "/temporal/entities", "6.18.3.1", set(), LOCAL),
    ("get", "/temporal/entities", "6.18.3.2", QUERY | TEMPORAL, QUERY_EXTRA),
    ("get", "/temporal/entities/{entity_id}", "6.19.3.1", RETRIEVE - {"type"} | TEMPORAL, {"via"}),
    ("delete", "/temporal/entities/{entity_id}", "6.19.3.2", set(), LOCAL),
    ("post", "/temporal/entities/{entity_id}/attrs", "6.20.3.1", set(), LOCAL),
    (
        "delete",
        "/temporal/entities/{entity_id}/attrs/{attr}",
        "6.21.3.1",
        {"datasetId", "deleteAll"},
        LOCAL,
    ),
    (
        "patch",
        "/temporal/entities/{entity_id}/attrs/{attr}/{instance_id}",
        "6.22.3.1",
        set(),
        LOCAL,
    ),
    (
        "delete",
        "/temporal/entities/{entity_id}/attrs/{attr}/{instance_id}",
        "6.22.3.2",
        set(),
        LOCAL,
    ),
    (
        "post",
        "/temporal/entityOperations/query",
        "6.24.3.1",
        {"limit", "offset", "count", "options"},
        {"format", "local"} | TEMPORAL,
    ),
    ("get", "/entityMaps", "6.34.3.1", QUERY, QUERY_EXTRA | {"entityMapLifetime"}),
    ("post", "/entityMaps", "6.34.3.2", set(), {"local", "entityMapLifetime"}),
    ("get", "/entityMaps/{map_id}", "6.32.3.1", set(), set()),
    ("patch", "/entityMaps/{map_id}", "6.32.3.2", set(), set()),
    ("delete", "/entityMaps/{map_id}", "6.32.3.3", set(), set()),
    ("get", "/types", "6.25.3.1", {"details"}, LOCAL),
    ("get", "/types/{type_name}", "6.26.3.1", set(), LOCAL),
    ("get", "/attributes", "6.27.3.1", {"details"}, LOCAL),
    ("get", "/attributes/{attr}", "6.28.3.1", set(), LOCAL),
    # §5.13.3-5.13.6: details and kind (list), details (serve), reload (delete); every
    # context operation accepts all three, as it always has
    ("get", "/jsonldContexts", "6.32.3.1", {"details", "kind"}, {"reload"}),
    ("post", "/jsonldContexts", "6.32.3.2", set(), set()),
    ("get", "/jsonldContexts/{context_id}", "6.33.3.1", {"details"}, {"kind", "reload"}),
    ("delete", "/jsonldContexts/{context_id}", "6.33.3.2", {"reload"}, {"details", "kind"}),
]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    from broker.app import create_app

    app = create_app()
    with warnings.catch_warnings(record=True) as caught:  # /ogc's warnings are its own
        warnings.simplefilter("always")
        document = app.openapi()
    assert not [w for w in caught if "ngsi_ld" in str(w.message) or "/ngsi-ld/" in str(w.message)]
    return document


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = spec["paths"][V1 + path][method]
    return op


def _params(op: dict[str, Any], where: str) -> set[str]:
    return {p["name"] for p in op.get("parameters", []) if p["in"] == where}


def test_the_description_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    # the NGSI-LD part; /ogc's description is checked with the OGC API
    assert spec["openapi"].startswith("3.1")
    ngsi_ld = {k: v for k, v in spec["paths"].items() if k.startswith(V1)}
    validate({**spec, "paths": ngsi_ld})  # raises on the first error


@pytest.mark.parametrize(
    ("method", "path", "clause", "required", "extra"),
    OPERATIONS,
    ids=[f"{m.upper()} {p} §{c}" for m, p, c, _r, _e in OPERATIONS],
)
def test_each_operation_lists_its_query_parameters(
    spec: dict[str, Any], method: str, path: str, clause: str, required: set[str], extra: set[str]
) -> None:
    op = _operation(spec, method, path)
    declared = _params(op, "query")
    assert required <= declared, f"§{clause}: missing {sorted(required - declared)}"
    assert declared <= required | extra, (
        f"§{clause}: unexpected {sorted(declared - required - extra)}"
    )
    for p in op["parameters"]:
        assert p.get("description"), f"{p['name']} of {method.upper()} {path} has no description"


def test_query_entities_lists_the_issue_s_parameters(spec: dict[str, Any]) -> None:
    # §6.4.3.2, the list a client generator needs for GET /entities
    names = _params(_operation(spec, "get", "/entities"), "query")
    for name in [
        "type",
        "id",
        "idPattern",
        "q",
        "attrs",
        "pick",
        "omit",
        "georel",
        "geometry",
        "coordinates",
        "geoproperty",
        "geometryProperty",
        "scopeQ",
        "lang",
        "limit",
        "offset",
        "count",
        "options",
        "format",
        "orderBy",
        "local",
        "datasetId",
        "join",
        "joinLevel",
        "csf",
    ]:
        assert name in names
    csf = next(p for p in _operation(spec, "get", "/entities")["parameters"] if p["name"] == "csf")
    assert "501" not in csf["description"]


@pytest.mark.parametrize(("method", "path", "clause", "required", "extra"), OPERATIONS)
def test_tenant_and_link_headers_are_declared(
    spec: dict[str, Any], method: str, path: str, clause: str, required: set[str], extra: set[str]
) -> None:
    # §6.3.14 NGSILD-Tenant on every operation of the tenant's data; §6.3.5 the Link header
    # carries the @context of application/json requests (contexts themselves have none)
    headers = _params(_operation(spec, method, path), "header")
    assert "NGSILD-Tenant" in headers
    if not path.startswith("/jsonldContexts"):
        assert "Link" in headers


@pytest.mark.parametrize(("method", "path", "clause", "required", "extra"), OPERATIONS)
def test_bodies_and_answers_declare_their_media_types(
    spec: dict[str, Any], method: str, path: str, clause: str, required: set[str], extra: set[str]
) -> None:
    # §6.3.4: payloads are application/json or application/ld+json (merge-patch on PATCH);
    # GET answers offer the same, and GeoJSON where entities are returned
    op = _operation(spec, method, path)
    if method in ("post", "put", "patch"):
        content = op["requestBody"]["content"]
        assert {"application/json", "application/ld+json"} <= set(content)
        if method == "patch" and "{instance_id}" not in path:  # an instance is replaced whole
            assert "application/merge-patch+json" in content
    if method == "get":  # 201 where a GET creates (an entity map, clause 6.34.3.1)
        answers = set((op["responses"].get("200") or op["responses"]["201"])["content"])
        assert "application/json" in answers
    if method == "get" and path in ("/entities", "/entities/{entity_id}"):
        assert {"application/ld+json", "application/geo+json"} <= set(
            op["responses"]["200"]["content"]
        )


def test_operations_not_offered_yet_are_described_as_501(spec: dict[str, Any]) -> None:
    for method in ("get", "post", "patch", "put", "delete"):
        assert "501" in spec["paths"][f"{V1}/info"][method]["responses"]
    # entity maps are made by queries, GET /entityMaps and POST /entityMaps (a Query body)
    for method in ("get", "post"):
        assert "201" in spec["paths"][f"{V1}/entityMaps"][method]["responses"]
    for method in ("get", "patch", "delete"):
        assert "501" not in spec["paths"][f"{V1}/entityMaps/{{map_id}}"][method]["responses"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", f"{V1}/entities?type=建物&colour=赤"),
        ("get", f"{V1}/entities/urn:ngsi-ld:Building:小金井?sortBy=name"),
        ("delete", f"{V1}/entities?type=建物&attrs=name"),
        ("get", f"{V1}/temporal/entities/urn:ngsi-ld:Building:1?georel=near"),
        ("get", f"{V1}/types?limit=1"),
        ("delete", f"{V1}/jsonldContexts/x?lang=ja"),
    ],
)
def test_undeclared_query_parameters_stay_400(client: TestClient, method: str, url: str) -> None:
    # §6.3.4 / §5.5.2: an unknown URI parameter is 400 InvalidRequest, before any look-up
    r = client.request(method, url, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"
    assert r.json()["detail"].startswith("unknown query parameter(s): ")
