"""What the MongoDB backend does beyond the shared contract: field-name escaping, geometry
refusal, driver errors, indexes, tenancy, write concern, several brokers on one database.

Runs through the real pymongo driver against the mongoeco wire server; tests that
need what only a real MongoDB server does (metre distances on the sphere) are marked
``real_mongo`` and run when ``RENKEI_TEST_MONGO_URI`` names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pymongo import monitoring
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

from broker.app import create_app
from broker.errors import AlreadyExists, BadRequestData, InternalError
from broker.model.entity import Entity
from broker.model.history import Duration, to_us
from broker.model.query import AttrPath, Comparison, GeoQuery
from broker.model.store import DELETE, EntityQuery, HistoryQuery, NotificationRecord
from broker.settings import Settings
from broker.store.mongodb import (
    MongoStore,
    driver_errors,
    nested_deeper_than,
    supports_transactions,
)
from broker.store.mongohistory import MongoHistory
from broker.store.mongoquery import escape_doc, escape_key, unescape_doc, unescape_key
from tests.mongo_support import mongoeco_server
from tests.support import free_port, wait_http

pytestmark = [pytest.mark.anyio, pytest.mark.mongo]

T = "https://example.org/"
LOC = "https://uri.etsi.org/ngsi-ld/location"


def entity(num: int, **attrs: Any) -> Entity:
    ent: Entity = {"id": f"urn:ngsi-ld:Shelter:{num}", "type": [T + "Shelter"]}
    for name, value in attrs.items():
        ent[T + name] = [{"type": "Property", "value": value}]
    return ent


def put(ent: Entity) -> Any:
    return lambda _current: ent


def located(num: int, geometry: dict[str, Any]) -> Entity:
    ent = entity(num)
    ent[LOC] = [{"type": "GeoProperty", "value": geometry}]
    return ent


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[MongoStore]:
    store = MongoStore(mongo_url)
    await store.open()
    yield store
    await store.close()


# -- field names ----------------------------------------------------------------------------


@given(st.text())
def test_escaping_is_reversible_and_mongodb_safe(key: str) -> None:
    escaped = escape_key(key)
    assert unescape_key(escaped) == key
    assert "." not in escaped
    assert "\x00" not in escaped
    assert not escaped.startswith("$")


def test_escaping_keeps_distinct_keys_distinct() -> None:
    keys = ["a.b", "a%2Eb", "a%252Eb", "$x", "%24x", "plain"]
    assert len({escape_key(k) for k in keys}) == len(keys)
    doc = {k: [{k: {"x.y": 1}}] for k in keys}
    assert unescape_doc(escape_doc(doc)) == doc


async def test_iris_with_dots_and_dollars_round_trip(mongo: MongoStore) -> None:
    ent = entity(1)
    ent["https://smartdatamodels.org/dataModel.Building/floorsAboveGround"] = [
        {"type": "Property", "value": 5, "unitCode": "C62"}
    ]
    ent[T + "meta"] = [
        {"type": "JsonProperty", "json": {"$ref": "#/a", "v1.2": {"50%": True}, "a\x00b": 1}}
    ]
    (result,) = await mongo.write("", [(ent["id"], put(ent))])
    assert result.ok
    assert await mongo.get_entity("", ent["id"]) == ent
    raw = await mongo.db.entities.find_one({"id": ent["id"]})
    assert raw is not None
    assert "https://smartdatamodels%2Eorg/dataModel%2EBuilding/floorsAboveGround" in raw["e"]
    json_value = raw["e"][escape_key(T + "meta")][0]["json"]
    assert set(json_value) == {"%24ref", "v1%2E2", "a%00b"}
    found, _ = await mongo.query(
        "", EntityQuery(attrs=["https://smartdatamodels.org/dataModel.Building/floorsAboveGround"])
    )
    assert [e["id"] for e in found] == [ent["id"]]


async def test_count_alone_with_limit_zero(mongo: MongoStore) -> None:
    await mongo.write(
        "", [(f"urn:ngsi-ld:Shelter:{n}", put(entity(n, name=f"shelter {n}"))) for n in range(3)]
    )
    assert await mongo.query("", EntityQuery(limit=0, count=True)) == ([], 3)
    q = Comparison(AttrPath(T + "name"), "~=", "[12]$")  # post-checked: paged in Python
    assert await mongo.query("", EntityQuery(q=q, limit=0, count=True)) == ([], 2)


async def test_id_patterns_with_and_without_an_anchored_prefix(mongo: MongoStore) -> None:
    ids = ["urn:ngsi-ld:Shelter:1", "urn:ngsi-ld:Shelter:2", "urn:ngsi-ld:Shelter:3", "urn:x:1"]
    await mongo.write("", [(i, put({"id": i, "type": [T + "Shelter"]})) for i in ids])

    async def matching(pattern: str) -> list[str]:
        found, _ = await mongo.query("", EntityQuery(id_pattern=pattern))
        return [e["id"] for e in found]

    assert await matching("^urn:ngsi-ld:Shelter:[12]$") == ids[:2]
    assert await matching("^urn:ngsi-ld:Shelter:3?") == ids[:3]
    assert await matching("(?i)^URN:X") == ["urn:x:1"]
    assert await matching("^urn:x|Shelter:3") == ["urn:ngsi-ld:Shelter:3", "urn:x:1"]
    assert await matching("^URN") == []


# -- geometries -----------------------------------------------------------------------------

BAD_GEOMETRIES: dict[str, dict[str, Any]] = {
    "unclosed ring": {
        "type": "Polygon",
        "coordinates": [[[139.5, 35.6], [139.6, 35.6], [139.6, 35.7], [139.5, 35.7]]],
    },
    "self-intersecting ring": {
        "type": "Polygon",
        "coordinates": [
            [[139.5, 35.6], [139.6, 35.7], [139.6, 35.6], [139.5, 35.7], [139.5, 35.6]]
        ],
    },
    "latitude out of range": {"type": "Point", "coordinates": [139.5, 95.0]},
    "longitude out of range": {
        "type": "LineString",
        "coordinates": [[139.5, 35.6], [190.0, 35.6]],
    },
}


@pytest.mark.parametrize("name", sorted(BAD_GEOMETRIES))
async def test_geometries_mongodb_would_refuse_are_rejected_before_insert(
    mongo: MongoStore, name: str
) -> None:
    good = located(2, {"type": "Point", "coordinates": [139.5, 35.6]})
    bad, other = await mongo.write(
        "",
        [
            ("urn:ngsi-ld:Shelter:1", put(located(1, BAD_GEOMETRIES[name]))),
            (good["id"], put(good)),
        ],
    )
    assert isinstance(bad.error, BadRequestData)
    assert bad.error.status == 400
    assert other.ok
    assert await mongo.get_entity("", "urn:ngsi-ld:Shelter:1") is None
    assert await mongo.get_entity("", good["id"]) == good


async def test_polygon_with_repeated_vertices_is_stored_and_found(mongo: MongoStore) -> None:
    # valid GeoJSON that MongoDB's loop check would refuse as is: indexed without repeats
    ring = [
        [139.5, 35.6],
        [139.6, 35.6],
        [139.6, 35.6],
        [139.6, 35.7],
        [139.5, 35.7],
        [139.5, 35.6],
    ]
    ent = located(1, {"type": "Polygon", "coordinates": [ring]})
    (result,) = await mongo.write("", [(ent["id"], put(ent))])
    assert result.ok
    assert await mongo.get_entity("", ent["id"]) == ent
    query = GeoQuery("intersects", {"type": "Point", "coordinates": [139.55, 35.65]}, LOC)
    found, _ = await mongo.query("", EntityQuery(geo=query))
    assert [e["id"] for e in found] == [ent["id"]]


async def test_long_edges_follow_lon_lat_lines_not_great_circles(mongo: MongoStore) -> None:
    # the great circle from (0, 50) to (60, 50) passes ~6 degrees north of the parallel:
    # MongoDB would put (30, 50.5) outside this square, NGSI-LD (planar in lon/lat)
    # inside; the indexed geometry has short edges, so the two agree
    square = {
        "type": "Polygon",
        "coordinates": [[[0.0, 50.0], [60.0, 50.0], [60.0, 60.0], [0.0, 60.0], [0.0, 50.0]]],
    }
    await mongo.write("", [("urn:ngsi-ld:Shelter:1", put(located(1, square)))])
    inside = GeoQuery("intersects", {"type": "Point", "coordinates": [30.0, 50.5]}, LOC)
    outside = GeoQuery("intersects", {"type": "Point", "coordinates": [30.0, 61.0]}, LOC)
    assert len((await mongo.query("", EntityQuery(geo=inside)))[0]) == 1
    assert (await mongo.query("", EntityQuery(geo=outside)))[0] == []


# -- indexes --------------------------------------------------------------------------------


async def test_indexes_are_created_once_and_geo_indexes_as_paths_appear(mongo_url: str) -> None:
    first = MongoStore(mongo_url)
    await first.open()
    try:
        before = await first.db.entities.index_information()
        assert {"tenant_id", "tenant_types", "tenant_attrs", "vals_n", "vals_s"} <= set(before)
        assert not any(name.startswith("geo_") for name in before)
        ent = located(1, {"type": "Point", "coordinates": [139.5, 35.6]})
        ent[T + "area"] = [
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [139.5, 35.6]}}
        ]
        await first.write("", [(ent["id"], put(ent))])
        after = await first.db.entities.index_information()
        geo = {name: info["key"] for name, info in after.items() if name.startswith("geo_")}
        assert sorted(geo.values()) == sorted(
            [[("g." + escape_key(LOC), "2dsphere")], [("g." + escape_key(T + "area"), "2dsphere")]]
        )
    finally:
        await first.close()
    second = MongoStore(mongo_url)  # a restart, or a second broker process
    await second.open()
    try:
        assert await second.db.entities.index_information() == after
    finally:
        await second.close()


# -- tenancy --------------------------------------------------------------------------------


async def test_tenants_share_collections_and_never_see_each_other(mongo: MongoStore) -> None:
    await mongo.write("komae", [("urn:ngsi-ld:Shelter:1", put(entity(1, capacity=10)))])
    await mongo.write("chofu", [("urn:ngsi-ld:Shelter:1", put(entity(1, capacity=99)))])
    komae = await mongo.get_entity("komae", "urn:ngsi-ld:Shelter:1")
    assert komae is not None
    assert komae[T + "capacity"][0]["value"] == 10
    found, total = await mongo.query("chofu", EntityQuery(count=True))
    assert total == 1
    assert found[0][T + "capacity"][0]["value"] == 99
    assert (await mongo.query("", EntityQuery(count=True)))[1] == 0
    assert await mongo.tenants() == ["chofu", "komae"]
    assert (await mongo.discovery("komae")).attributes == {T + "capacity": 1}
    docs = [d async for d in mongo.db.entities.find({}, {"t": 1})]
    assert sorted(d["t"] for d in docs) == ["chofu", "komae"]


# -- concurrency across broker processes ----------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("standalone"),
        # mongoeco runs transactions (snapshot reads, rollback on abort) but reports a
        # write conflict between two transactions without the TransientTransactionError
        # label MongoDB gives it, so racing transactions need a real replica set
        pytest.param("txn", marks=[pytest.mark.real_mongo]),
    ]
)
async def brokers(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], MongoStore]]:
    """Makes stores that share one database: several brokers, on either write path
    (``standalone``: no transactions, on mongoeco; ``txn``: a real replica set)."""
    if request.param == "standalone":
        url = request.getfixturevalue("mongo_url")
        yield lambda: MongoStore(url)
        return
    real = os.environ["RENKEI_TEST_MONGO_URI"]
    database = "renkei_test_" + uuid.uuid4().hex[:12]
    yield lambda: MongoStore(real, database=database)
    cleanup = MongoStore(real, database=database)
    await cleanup.open()
    assert cleanup._client is not None
    await cleanup._client.drop_database(database)
    await cleanup.close()


async def test_two_brokers_on_one_database_lose_no_update(
    brokers: Callable[[], MongoStore],
) -> None:
    a, b = brokers(), brokers()
    await a.open()
    await b.open()
    try:
        await a.write("", [("urn:ngsi-ld:Shelter:1", put(entity(1, n=0)))])

        def bump(cur: Entity | None) -> Entity:
            assert cur is not None
            out = dict(cur)
            out[T + "n"] = [{"type": "Property", "value": cur[T + "n"][0]["value"] + 1}]
            return out

        writes = [s.write("", [("urn:ngsi-ld:Shelter:1", bump)]) for s in (a, b) * 15]
        results = await asyncio.gather(*writes)
        assert all(r.ok for batch in results for r in batch)
        final = await b.get_entity("", "urn:ngsi-ld:Shelter:1")
        assert final is not None
        assert final[T + "n"][0]["value"] == 30
        # every change left its instance in the history, once
        hist = await a.history("", ["urn:ngsi-ld:Shelter:1"], HistoryQuery(limit=100))
        values = [int((r.instance or {})["value"]) for r in hist["urn:ngsi-ld:Shelter:1"][T + "n"]]
        assert sorted(values) == list(range(31))
    finally:
        await a.close()
        await b.close()


async def test_batches_racing_on_the_same_entities_apply_each_change_once(
    brokers: Callable[[], MongoStore],
) -> None:
    # batches where some replaces win and others lose: the losers run again, the
    # winners never twice
    a, b = brokers(), brokers()
    await a.open()
    await b.open()
    ids = [f"urn:ngsi-ld:Shelter:{n}" for n in range(6)]
    try:
        await a.write("", [(i, put({"id": i, "type": [T + "Shelter"], T + "n": []})) for i in ids])

        def bump(cur: Entity | None) -> Entity:
            assert cur is not None
            count = len(cur[T + "n"])
            step = {"type": "Property", "value": count + 1, "datasetId": f"urn:d:{count}"}
            return {**cur, T + "n": [*cur[T + "n"], step]}

        batches = [s.write("", [(i, bump) for i in ids]) for s in (a, b) * 12]
        results = await asyncio.gather(*batches)
        assert all(r.ok for batch in results for r in batch)
        for i in ids:
            final = await a.get_entity("", i)
            assert final is not None
            assert len(final[T + "n"]) == 24
    finally:
        await a.close()
        await b.close()


async def test_concurrent_creates_of_one_id_make_one_entity(
    brokers: Callable[[], MongoStore],
) -> None:
    a, b = brokers(), brokers()
    await a.open()
    await b.open()
    try:

        def create(cur: Entity | None) -> Entity:
            if cur is not None:
                raise AlreadyExists("taken")
            return entity(1)

        results = await asyncio.gather(
            *(s.write("", [("urn:ngsi-ld:Shelter:1", create)]) for s in (a, b) * 5)
        )
        outcomes = [r for batch in results for r in batch]
        assert sum(r.ok for r in outcomes) == 1
        assert all(isinstance(r.error, AlreadyExists) for r in outcomes if not r.ok)
    finally:
        await a.close()
        await b.close()


# -- entity writes and their history commit together (issue #10) ---------------------------


def test_transactions_are_used_on_replica_sets_and_sharded_clusters() -> None:
    assert supports_transactions({"setName": "rs0", "isWritablePrimary": True})
    assert supports_transactions({"msg": "isdbgrid"})  # mongos
    assert not supports_transactions({"isWritablePrimary": True})  # standalone


async def test_a_standalone_server_is_detected(mongo_url: str) -> None:
    store = MongoStore(mongo_url)  # mongoeco's hello has no setName
    await store.open()
    try:
        assert store.transactions is False
    finally:
        await store.close()


def _fail_history_inserts(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAULT INJECTION: the history insert fails after the entity write went to the
    server (a full disk, a lost primary mid-batch: nothing a test can cause on cue)."""

    async def failing_insert(self: MongoHistory, rows: Any, session: Any) -> None:
        raise OperationFailure("injected: history insert failed", code=8)

    monkeypatch.setattr(MongoHistory, "insert_rows", failing_insert)


async def _history_fault_aborts_the_write(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, other = "urn:ngsi-ld:Shelter:1", "urn:ngsi-ld:Shelter:2"
    await store.write("", [(sid, put(entity(1, n=1))), (other, put(entity(2, n=1)))])
    before = await store.history("", [sid], HistoryQuery(limit=100))
    _fail_history_inserts(monkeypatch)
    with pytest.raises(InternalError, match="injected"):
        await store.write("", [(sid, put(entity(1, n=2))), (other, put(entity(2, n=2)))])
    monkeypatch.undo()
    for eid in (sid, other):  # neither entity write of the batch happened
        current = await store.get_entity("", eid)
        assert current is not None
        assert current[T + "n"][0]["value"] == 1
    assert await store.history("", [sid], HistoryQuery(limit=100)) == before
    # a new entity whose history fails is not created either
    _fail_history_inserts(monkeypatch)
    with pytest.raises(InternalError):
        await store.write("", [("urn:ngsi-ld:Shelter:3", put(entity(3, n=1)))])
    monkeypatch.undo()
    assert await store.get_entity("", "urn:ngsi-ld:Shelter:3") is None
    # and once the store is healthy again, the same write goes through with its history
    results = await store.write("", [(sid, put(entity(1, n=2)))])
    assert results[0].ok
    after = await store.history("", [sid], HistoryQuery(limit=100))
    assert [(r.instance or {}).get("value") for r in after[sid][T + "n"]] == [1, 2]


async def test_a_failed_history_insert_aborts_the_entity_write(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MongoStore(mongo_url, transactions=True)
    await store.open()
    try:
        await _history_fault_aborts_the_write(store, monkeypatch)
    finally:
        await store.close()


async def test_history_and_entities_agree_after_a_transactional_delete(mongo_url: str) -> None:
    store = MongoStore(mongo_url, transactions=True)
    await store.open()
    try:
        sid = "urn:ngsi-ld:Shelter:1"
        await store.write("", [(sid, put(entity(1, n=1)))])
        results = await store.write("", [(sid, lambda _cur: DELETE)])
        assert results[0].ok
        assert await store.get_entity("", sid) is None
        found, _ = await store.history_entities("", EntityQuery(ids=[sid]))
        assert [e.id for e in found] == [sid]
        assert found[0].deleted is not None
    finally:
        await store.close()


async def test_throttling_claims_hold_across_brokers(mongo_url: str) -> None:
    a, b = MongoStore(mongo_url), MongoStore(mongo_url)
    await a.open()
    await b.open()
    try:
        await a.put_subscription("", {"id": "urn:ngsi-ld:Subscription:1"}, create=True)
        claims = await asyncio.gather(
            *(
                s.claim_notification("", "urn:ngsi-ld:Subscription:1", now=100.0, min_gap=5)
                for s in (a, b) * 4
            )
        )
        assert sum(claims) == 1
        await b.record_notifications(
            [NotificationRecord("", "urn:ngsi-ld:Subscription:1", sent=2, failed=1)]
        )
        sub = await a.get_subscription("", "urn:ngsi-ld:Subscription:1")
        assert sub is not None
        assert sub["notificationStatus"] == {"timesSent": 2, "timesFailed": 1}
    finally:
        await a.close()
        await b.close()


# -- configuration and driver errors --------------------------------------------------------


async def test_writes_wait_for_a_majority_unless_the_url_says_otherwise(mongo_url: str) -> None:
    default = MongoStore(mongo_url)
    await default.open()
    try:
        assert default.db.write_concern.document == {"w": "majority"}
        assert default.db.read_concern.level == "majority"
    finally:
        await default.close()
    relaxed = MongoStore(mongo_url + "&w=1&readConcernLevel=local&maxPoolSize=7")
    await relaxed.open()
    try:
        assert relaxed.db.write_concern.document == {"w": 1}
        assert relaxed.db.read_concern.level == "local"
        assert relaxed.db.client.options.pool_options.max_pool_size == 7
    finally:
        await relaxed.close()


UNREACHABLE = """
import asyncio, sys
from broker.errors import StoreUnavailable
from broker.store.mongodb import MongoStore

async def main() -> None:
    store = MongoStore(sys.argv[1])
    try:
        await store.open()
    except StoreUnavailable as exc:
        print(exc.status, exc.headers["Retry-After"])
    finally:
        await store.close()

asyncio.run(main())
"""


def test_unreachable_server_is_503_with_retry_after() -> None:
    # in a child process: pymongo's monitor, cancelled by close() while it reconnects,
    # can leave a socket to the garbage collector, which this suite treats as an error
    port = free_port()  # nothing listens there
    url = f"mongodb://127.0.0.1:{port}/renkei?directConnection=true&serverSelectionTimeoutMS=300"
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, url], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["503", "2"], done.stderr


async def test_duplicate_subscription_is_already_exists(mongo: MongoStore) -> None:
    sub = {"id": "urn:ngsi-ld:Subscription:1", "type": "Subscription"}
    await mongo.put_subscription("", sub, create=True)
    with pytest.raises(AlreadyExists) as caught:
        await mongo.put_subscription("", sub, create=True)
    assert caught.value.status == 409


# -- a real server ----------------------------------------------------------------------------


@pytest.fixture
async def real_mongo() -> AsyncIterator[MongoStore]:
    url = os.environ["RENKEI_TEST_MONGO_URI"]
    store = MongoStore(url, database="renkei_test_" + uuid.uuid4().hex[:12])
    await store.open()
    yield store
    assert store._client is not None
    await store._client.drop_database(store.database_name)
    await store.close()


@pytest.mark.real_mongo
async def test_a_failed_history_insert_aborts_the_write_on_a_real_server(
    real_mongo: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RENKEI_TEST_MONGO_URI must name a replica set (a one-member one will do)
    assert real_mongo.transactions, "the server reports no replica set: no transactions"
    await _history_fault_aborts_the_write(real_mongo, monkeypatch)


@pytest.mark.real_mongo
async def test_near_in_metres_on_a_real_server(real_mongo: MongoStore) -> None:
    # Komae city hall and points ~500 m, ~1.5 km and ~5 km to its east
    hall = (139.5786, 35.6348)
    offsets = {1: 0.0, 2: 0.0055, 3: 0.0165, 4: 0.055}
    await real_mongo.write(
        "",
        [
            (
                f"urn:ngsi-ld:Shelter:{n}",
                put(located(n, {"type": "Point", "coordinates": [hall[0] + dx, hall[1]]})),
            )
            for n, dx in offsets.items()
        ],
    )
    point = {"type": "Point", "coordinates": list(hall)}

    async def ids(**kw: Any) -> list[str]:
        found, _ = await real_mongo.query("", EntityQuery(geo=GeoQuery("near", point, LOC, **kw)))
        return [e["id"].rsplit(":", 1)[1] for e in found]

    assert await ids(max_distance=1000) == ["1", "2"]
    assert await ids(max_distance=2000) == ["1", "2", "3"]
    assert await ids(min_distance=1000) == ["3", "4"]
    assert await ids(min_distance=1000, max_distance=2000) == ["3"]


# -- the broker on MongoDB ------------------------------------------------------------------


def test_renkei_serve_on_mongodb(mongo_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--port",
            str(port),
            "--store",
            mongo_url,
        ],
        env={**os.environ, "RENKEI_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health")
        assert httpx.get(base + "/health").json()["store"] == "mongodb"
        body = {
            "id": "urn:ngsi-ld:Shelter:komae-1",
            "type": "Shelter",
            "capacity": {"type": "Property", "value": 120},
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [139.578, 35.634]},
            },
        }
        headers = {"Content-Type": "application/json", "NGSILD-Tenant": "komae"}
        created = httpx.post(base + "/ngsi-ld/v1/entities", json=body, headers=headers)
        assert created.status_code == 201, created.text
        again = httpx.post(base + "/ngsi-ld/v1/entities", json=body, headers=headers)
        assert again.status_code == 409
        found = httpx.get(
            base + "/ngsi-ld/v1/entities",
            params={
                "type": "Shelter",
                "q": "capacity>100",
                "georel": "within",
                "geometry": "Polygon",
                "coordinates": "[[[139.5,35.6],[139.6,35.6],[139.6,35.7],[139.5,35.7],[139.5,35.6]]]",
            },
            headers={"NGSILD-Tenant": "komae"},
        )
        assert found.status_code == 200, found.text
        assert [e["id"] for e in found.json()] == [body["id"]]
        bad = dict(body, id="urn:ngsi-ld:Shelter:komae-2")
        bad["location"] = {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 135.634]},
        }
        refused = httpx.post(base + "/ngsi-ld/v1/entities", json=bad, headers=headers)
        assert refused.status_code == 400
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_broker_answers_503_while_mongodb_is_down(mongo_url: str) -> None:
    # ``mongo_url`` only makes sure mongoeco can run here; this test stops its own server
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(mongoeco_server())
        store = server.replace("/?", "/renkei?") + "&serverSelectionTimeoutMS=500"
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--store", store],
            env={**os.environ, "RENKEI_LOG_LEVEL": "critical"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/health")
            url = base + "/ngsi-ld/v1/entities/urn:ngsi-ld:Shelter:1"
            assert httpx.get(url).status_code == 404
            stack.close()  # MongoDB goes away
            down = httpx.get(url, timeout=30)
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"]
            assert down.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


# -- history aggregations -------------------------------------------------------------------


class HistoryCommands(monitoring.CommandListener):
    """What the driver sends about the ``history`` collection, and the replies' sizes."""

    def __init__(self) -> None:
        self.sent: dict[int, dict[str, Any]] = {}
        self.seen: list[tuple[dict[str, Any], int]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == "history":
            self.sent[event.request_id] = dict(event.command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        command = self.sent.pop(event.request_id, None)
        if command is not None:
            batch = event.reply.get("cursor", {}).get("firstBatch", [])
            self.seen.append((command, len(batch)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.sent.pop(event.request_id, None)


async def test_history_aggregates_are_computed_by_mongodb(mongo_url: str) -> None:
    commands = HistoryCommands()
    store = MongoStore(mongo_url, event_listeners=[commands])
    await store.open()
    try:
        eid, attr = "urn:ngsi-ld:Sensor:1", T + "pm25"
        for i in range(48):  # two days of hourly readings
            at = f"2026-05-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"
            doc: Entity = {
                "id": eid,
                "type": [T + "Sensor"],
                attr: [{"type": "Property", "value": float(i), "observedAt": at}],
            }
            await store.write("other" if i == 0 else "", [(eid, put(doc))])
        commands.seen.clear()
        aggs = await store.aggregate_history(
            "", [eid], HistoryQuery(), ["avg", "max"], Duration.parse("P1D")
        )
        info = await store.db.history.index_information()
    finally:
        await store.close()
    # periods start at 01:00: the 00:00 reading went to another tenant
    assert aggs[eid][attr].values["max"] == [
        (24.0, to_us("2026-05-01T01:00:00Z"), to_us("2026-05-02T01:00:00Z")),
        (47.0, to_us("2026-05-02T01:00:00Z"), to_us("2026-05-03T01:00:00Z")),
    ]
    ((pipeline, groups),) = [(c["pipeline"], n) for c, n in commands.seen if "aggregate" in c]
    assert groups == 2  # one document per period came back, not 47 instances
    assert [c.get("limit") for c, _ in commands.seen if "find" in c] == [1, 1]  # the two ends
    match, group = pipeline[0]["$match"], pipeline[1]["$group"]
    assert {"avg": {"$avg": "$num"}, "hi_v": {"$max": "$num"}}.items() <= group.items()
    # the $match is equalities on series_at's leading keys and a range on the next one
    # (at), so MongoDB reads one index range per attribute
    keys = [k for k, _ in info["series_at"]["key"]]
    assert keys == ["t", "eid", "attr", "deleted", "at"]
    assert list(match) == keys
    assert (match["t"], match["eid"], match["attr"], match["deleted"]) == (
        "",
        eid,
        {"$in": [attr]},
        None,
    )
    assert set(match["at"]) == {"$gte", "$lte"}


# -- MongoDB's own limits are the request's fault: 400, never 500 ----------------------------

V1 = "/ngsi-ld/v1"
MIB = 1024 * 1024


@pytest.fixture
def mongo_hub(mongo_url: str) -> Iterator[TestClient]:
    """The hub on MongoDB, with request bounds raised past what MongoDB itself stores."""
    settings = Settings.model_validate(
        {"store": mongo_url, "max_body_bytes": 40 * MIB, "max_json_depth": 200}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _gauge(eid: str, **attrs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": eid, "type": "水位計"}
    for name, value in attrs.items():
        body[name] = {"type": "Property", "value": value}
    return body


def _refused_by_limits(r: Any) -> str:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    detail: str = r.json()["detail"]
    assert "beyond the store's limits" in detail, detail[:300]
    return detail


def test_a_document_over_16_mib_is_400_and_nothing_is_stored(mongo_hub: TestClient) -> None:
    eid = "urn:ngsi-ld:水位計:多摩川大"
    r = mongo_hub.post(f"{V1}/entities", json=_gauge(eid, 記録="水" * (6 * MIB)))  # 18 MiB
    assert "MongoDB stores at most" in _refused_by_limits(r)
    assert mongo_hub.get(f"{V1}/entities/{eid}").status_code == 404
    # an entity that grows past the limit keeps what it had (a string is stored twice:
    # as the value and as its index entry, so 2 Mi characters of 3 bytes take 12 MiB)
    assert mongo_hub.post(f"{V1}/entities", json=_gauge(eid, 記録="川" * (2 * MIB))).is_success
    grown = mongo_hub.post(
        f"{V1}/entities/{eid}/attrs", json={"追記": {"type": "Property", "value": "水" * (1 * MIB)}}
    )
    _refused_by_limits(grown)
    kept = mongo_hub.get(f"{V1}/entities/{eid}", params={"options": "keyValues"}).json()
    assert set(kept) == {"id", "type", "記録"}
    assert len(kept["記録"]) == 2 * MIB


def test_in_a_batch_only_the_oversized_entity_fails(mongo_hub: TestClient) -> None:
    big, small = "urn:ngsi-ld:水位計:大", "urn:ngsi-ld:水位計:小"
    r = mongo_hub.post(
        f"{V1}/entityOperations/create",
        json=[_gauge(big, 記録="水" * (6 * MIB)), _gauge(small, 水位=1.2)],
    )
    assert r.status_code == 207, r.text[:300]
    assert r.json()["success"] == [small]
    (error,) = r.json()["errors"]
    assert error["entityId"] == big
    assert error["error"]["status"] == 400
    assert mongo_hub.get(f"{V1}/entities/{small}").status_code == 200


def test_values_nested_deeper_than_mongodb_stores_are_400(mongo_hub: TestClient) -> None:
    eid = "urn:ngsi-ld:水位計:入れ子"
    value: Any = "底"
    for _ in range(120):
        value = {"階層": value}
    _refused_by_limits(mongo_hub.post(f"{V1}/entities", json=_gauge(eid, 構造=value)))
    assert mongo_hub.get(f"{V1}/entities/{eid}").status_code == 404
    for _ in range(60):  # 60 levels of value, within MongoDB's 100 with the document's own
        value = value["階層"]
    r = mongo_hub.post(f"{V1}/entities", json=_gauge(eid, 構造=value))
    assert r.status_code == 201, r.text[:300]


def test_nesting_is_counted_as_mongodb_counts_it() -> None:
    doc: Any = "底"
    for level in range(100):  # 100 levels: 50 documents and 50 arrays
        doc = {"a": doc} if level % 2 else [doc]
    assert not nested_deeper_than(doc, 100)
    assert nested_deeper_than(doc, 99)
    assert not nested_deeper_than({"a": 1, "b": [1, 2]}, 2)
    assert nested_deeper_than({"a": 1, "b": [1, {"c": 2}]}, 2)


def test_limit_errors_the_server_reports_are_400(
    mongo_hub: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULT INJECTION: the errors a server enforcing limits mongoeco does not (index keys
    over 1 KiB before MongoDB 4.2, nesting depth) answers a bulk write with."""
    from pymongo.asynchronous.collection import AsyncCollection

    real = AsyncCollection.bulk_write

    async def refusing(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == "entities" and any(
            "長い鍵" in str(getattr(op, "_doc", "")) for op in requests
        ):
            raise BulkWriteError(
                {
                    "writeErrors": [
                        {
                            "index": 0,
                            "code": 17280,
                            "errmsg": "WiredTigerIndex::insert: key too large to index",
                        }
                    ],
                    "nInserted": 0,
                }
            )
        return await real(self, requests, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "bulk_write", refusing)
    r = mongo_hub.post(f"{V1}/entities", json=_gauge("urn:ngsi-ld:水位計:鍵", 名称="長い鍵" * 400))
    assert r.status_code == 400, r.text
    assert "key too large" in r.json()["detail"]
    ok = mongo_hub.post(f"{V1}/entities", json=_gauge("urn:ngsi-ld:水位計:普通", 名称="普通"))
    assert ok.status_code == 201


@pytest.mark.parametrize("code", [10334, 17419, 17280, 15])
def test_driver_limit_errors_are_bad_request(code: int) -> None:
    """FAULT INJECTION: each limit error code, as pymongo raises it, is translated to 400."""
    with pytest.raises(BadRequestData, match="beyond the store's limits"), driver_errors():
        raise OperationFailure("limit", code=code)
    with pytest.raises(BadRequestData, match="beyond the store's limits"), driver_errors():
        raise DocumentTooLarge("BSON document too large")
    with pytest.raises(InternalError), driver_errors():
        raise OperationFailure("something else", code=8)
