"""The store contract (broker/store/base.py): every backend must pass this module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from broker.errors import AlreadyExists, ResourceNotFound
from broker.model.entity import Entity
from broker.model.store import DELETE, ContextRecord, EntityQuery
from broker.store.base import Store

pytestmark = pytest.mark.anyio

T = "https://example.org/"


def entity(num: int, *types: str, **attrs: Any) -> Entity:
    ent: Entity = {
        "id": f"urn:ngsi-ld:E:{num}",
        "type": [T + t for t in types or ("Shelter",)],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
    }
    for name, value in attrs.items():
        ent[T + name] = [{"type": "Property", "value": value}]
    return ent


def create(ent: Entity) -> Callable[[Entity | None], Any]:
    def mutate(cur: Entity | None) -> Entity:
        if cur is not None:
            raise AlreadyExists(ent["id"])
        return ent

    return mutate


async def test_write_then_read_back(store: Store) -> None:
    (r,) = await store.write("", [("urn:ngsi-ld:E:1", create(entity(1, capacity=10)))])
    assert r.ok
    assert r.before is None
    assert r.after is not None
    assert await store.get_entity("", "urn:ngsi-ld:E:1") == entity(1, capacity=10)
    assert await store.get_entity("", "urn:ngsi-ld:E:2") is None


async def test_rejected_mutation_writes_nothing_and_others_proceed(store: Store) -> None:
    await store.write("", [("urn:ngsi-ld:E:1", create(entity(1, capacity=10)))])

    def fail(cur: Entity | None) -> Entity:
        raise ResourceNotFound("no")

    results = await store.write(
        "",
        [
            ("urn:ngsi-ld:E:1", create(entity(1, capacity=99))),  # already exists
            ("urn:ngsi-ld:E:2", create(entity(2))),
            ("urn:ngsi-ld:E:3", fail),
        ],
    )
    assert [type(r.error) for r in results] == [AlreadyExists, type(None), ResourceNotFound]
    assert (await store.get_entity("", "urn:ngsi-ld:E:1"))[T + "capacity"][0]["value"] == 10  # type: ignore[index]
    assert await store.get_entity("", "urn:ngsi-ld:E:2") is not None
    assert await store.get_entity("", "urn:ngsi-ld:E:3") is None


async def test_same_id_twice_sees_the_earlier_result(store: Store) -> None:
    def bump(cur: Entity | None) -> Entity:
        assert cur is not None
        out = dict(cur)
        out[T + "n"] = [{"type": "Property", "value": cur[T + "n"][0]["value"] + 1}]
        return out

    results = await store.write(
        "",
        [
            ("urn:ngsi-ld:E:1", create(entity(1, n=0))),
            ("urn:ngsi-ld:E:1", bump),
            ("urn:ngsi-ld:E:1", bump),
        ],
    )
    assert all(r.ok for r in results)
    assert (await store.get_entity("", "urn:ngsi-ld:E:1"))[T + "n"][0]["value"] == 2  # type: ignore[index]


async def test_concurrent_writers_lose_no_update(store: Store) -> None:
    await store.write("", [("urn:ngsi-ld:E:1", create(entity(1, n=0)))])

    def bump(cur: Entity | None) -> Entity:
        assert cur is not None
        out = dict(cur)
        out[T + "n"] = [{"type": "Property", "value": cur[T + "n"][0]["value"] + 1}]
        return out

    await asyncio.gather(*(store.write("", [("urn:ngsi-ld:E:1", bump)]) for _ in range(50)))
    assert (await store.get_entity("", "urn:ngsi-ld:E:1"))[T + "n"][0]["value"] == 50  # type: ignore[index]


async def test_delete(store: Store) -> None:
    await store.write("", [("urn:ngsi-ld:E:1", create(entity(1)))])
    (r,) = await store.write("", [("urn:ngsi-ld:E:1", lambda cur: DELETE)])
    assert r.ok
    assert r.before is not None
    assert await store.get_entity("", "urn:ngsi-ld:E:1") is None
    assert (await store.discovery("")).types == {}


async def test_tenants_are_isolated(store: Store) -> None:
    await store.write("komae", [("urn:ngsi-ld:E:1", create(entity(1)))])
    assert await store.get_entity("", "urn:ngsi-ld:E:1") is None
    assert await store.get_entity("komae", "urn:ngsi-ld:E:1") is not None
    assert await store.tenant_exists("komae")
    assert not await store.tenant_exists("chofu")
    assert "komae" in await store.tenants()


async def test_query_by_type_id_and_attribute(store: Store) -> None:
    await store.write(
        "",
        [
            ("urn:ngsi-ld:E:1", create(entity(1, "Shelter", capacity=10))),
            ("urn:ngsi-ld:E:2", create(entity(2, "Shelter", "School", name="x"))),
            ("urn:ngsi-ld:E:3", create(entity(3, "Park", capacity=3))),
        ],
    )

    async def ids(**kw: Any) -> list[str]:
        found, _ = await store.query("", EntityQuery(**kw))
        return [e["id"] for e in found]

    assert await ids(types=[[T + "Shelter"]]) == ["urn:ngsi-ld:E:1", "urn:ngsi-ld:E:2"]
    assert await ids(types=[[T + "Shelter", T + "School"]]) == ["urn:ngsi-ld:E:2"]
    assert await ids(types=[[T + "School"], [T + "Park"]]) == ["urn:ngsi-ld:E:2", "urn:ngsi-ld:E:3"]
    assert await ids(attrs=[T + "capacity"]) == ["urn:ngsi-ld:E:1", "urn:ngsi-ld:E:3"]
    assert await ids(ids=["urn:ngsi-ld:E:3", "urn:ngsi-ld:E:9"]) == ["urn:ngsi-ld:E:3"]
    assert await ids(id_pattern=r"E:[12]$") == ["urn:ngsi-ld:E:1", "urn:ngsi-ld:E:2"]
    page, total = await store.query(
        "", EntityQuery(types=[[T + "Shelter"], [T + "Park"]], limit=1, offset=1, count=True)
    )
    assert [e["id"] for e in page] == ["urn:ngsi-ld:E:2"]
    assert total == 3


async def test_discovery_counts(store: Store) -> None:
    await store.write(
        "",
        [
            ("urn:ngsi-ld:E:1", create(entity(1, "Shelter", capacity=10))),
            ("urn:ngsi-ld:E:2", create(entity(2, "Shelter", capacity=2, name="x"))),
        ],
    )
    found = await store.discovery("")
    assert found.types == {T + "Shelter": 2}
    assert found.attributes == {T + "capacity": 2, T + "name": 1}
    assert found.type_attributes == {
        (T + "Shelter", T + "capacity"): {"Property"},
        (T + "Shelter", T + "name"): {"Property"},
    }
    assert (await store.discovery("komae")).types == {}


async def test_contexts_storage(store: Store) -> None:
    rec = ContextRecord(
        id="c1",
        url="http://x/c1",
        kind="Hosted",
        document={"@context": {"a": "b"}},
        created_at="2026-01-01T00:00:00Z",
    )
    await store.put_context(rec)
    assert await store.get_context("c1") == rec
    assert [r.id for r in await store.list_contexts()] == ["c1"]
    assert await store.delete_context("c1")
    assert not await store.delete_context("c1")
    assert await store.get_context("c1") is None


async def test_data_survives_reopen(make_store: Callable[[], Store]) -> None:
    s = make_store()
    await s.open()
    await s.write("komae", [("urn:ngsi-ld:E:1", create(entity(1, capacity=1)))])
    await s.close()
    s = make_store()
    await s.open()
    try:
        assert await s.get_entity("komae", "urn:ngsi-ld:E:1") == entity(1, capacity=1)
        assert await s.tenant_exists("komae")
    finally:
        await s.close()


async def test_handed_over_notifications_go_to_one_taker_each_oldest_first(
    make_store: Callable[[], Store],
) -> None:
    """What a stopping process hands over, another process on the same store takes:
    each once, however many take at the same time, and survives a reopening."""
    from broker.model.store import PendingNotification

    stopping, replica, other = make_store(), make_store(), make_store()
    for s in (stopping, replica, other):
        await s.open()
    try:
        assert await replica.take_over(10) == []
        pending = [
            PendingNotification(
                "komae" if i % 2 else "",
                f"urn:ngsi-ld:Subscription:通知{i % 3}",
                [
                    {
                        "id": f"urn:ngsi-ld:WaterLevel:多摩川{i}",
                        "type": "WaterLevel",
                        "水位": i,
                        "https://example.org/a.b$c": {"value": [i, {"@type": "x"}]},
                    }
                ],
            )
            for i in range(40)
        ]
        await stopping.hand_over(pending[:30])
        await stopping.close()
        stopping = make_store()  # what was handed over is kept in the store itself
        await stopping.open()
        await stopping.hand_over(pending[30:])
        first = await replica.take_over(5)
        assert first == pending[:5]
        rest = await asyncio.gather(*(s.take_over(4) for s in (replica, other) for _ in range(5)))
        taken = first + [p for batch in rest for p in batch]
        assert sorted(p.data[0]["水位"] for p in taken) == list(range(40))
        assert await other.take_over(10) == []
    finally:
        for s in (stopping, replica, other):
            await s.close()


async def test_subscription_storage_status_and_claims(store: Store) -> None:
    from broker.errors import AlreadyExists as Exists
    from broker.model.store import NotificationRecord

    sub = {"id": "urn:ngsi-ld:Subscription:1", "type": "Subscription", "q": "a>1"}
    await store.put_subscription("komae", sub, create=True)
    with pytest.raises(Exists):
        await store.put_subscription("komae", sub, create=True)
    with pytest.raises(ResourceNotFound):
        await store.put_subscription(
            "komae", {**sub, "id": "urn:ngsi-ld:Subscription:2"}, create=False
        )
    await store.record_notifications(
        [
            NotificationRecord(
                "komae",
                sub["id"],
                sent=3,
                failed=1,
                last_notification="2026-01-02T00:00:00Z",
                last_success="2026-01-02T00:00:00Z",
                last_failure="2026-01-01T00:00:00Z",
            ),
            NotificationRecord("komae", "urn:ngsi-ld:Subscription:gone", sent=1),  # ignored
        ]
    )
    await store.put_subscription("komae", {**sub, "q": "a>2"}, create=False)  # status survives
    got = await store.get_subscription("komae", sub["id"])
    assert got is not None
    assert got["q"] == "a>2"
    assert got["notificationStatus"] == {
        "timesSent": 3,
        "timesFailed": 1,
        "lastNotification": "2026-01-02T00:00:00Z",
        "lastSuccess": "2026-01-02T00:00:00Z",
        "lastFailure": "2026-01-01T00:00:00Z",
    }
    # consecutive failures add up until a success ends the run; the details stay
    for trailing in (1, 2):
        await store.record_notifications(
            [
                NotificationRecord(
                    "komae",
                    sub["id"],
                    sent=trailing,
                    failed=trailing,
                    last_failure="2026-01-03T00:00:00Z",
                    last_failure_reason="接続できません (connection refused)",
                    trailing_failures=trailing,
                )
            ]
        )
    got = await store.get_subscription("komae", sub["id"])
    assert got is not None
    status = got["notificationStatus"]
    assert (status["failsCounter"], status["timesFailed"]) == (3, 4)
    assert status["lastFailureReason"] == "接続できません (connection refused)"
    await store.record_notifications(
        [NotificationRecord("komae", sub["id"], sent=1, last_success_code=204, reset=True)]
    )
    got = await store.get_subscription("komae", sub["id"])
    assert got is not None
    status = got["notificationStatus"]
    assert "failsCounter" not in status
    assert status["lastSuccessCode"] == 204
    assert status["lastFailureReason"] == "接続できません (connection refused)"
    assert await store.claim_notification("komae", sub["id"], now=100.0, min_gap=10)
    assert not await store.claim_notification("komae", sub["id"], now=105.0, min_gap=10)
    assert await store.claim_notification("komae", sub["id"], now=110.0, min_gap=10)
    assert [s["id"] for s in await store.list_subscriptions("komae")] == [sub["id"]]
    assert await store.list_subscriptions("") == []
    assert await store.delete_subscription("komae", sub["id"])
    assert not await store.delete_subscription("komae", sub["id"])
