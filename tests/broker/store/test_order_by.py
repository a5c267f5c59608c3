"""``orderBy`` in the store: every backend orders alike (``EntityQuery.order_by``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from broker.model.entity import Entity
from broker.model.query import AttrPath, Comparison
from broker.model.store import EntityQuery
from broker.store.base import Store

pytestmark = pytest.mark.anyio

T = "https://example.org/"


def entity(num: int, type_: str, created: str, **attrs: Any) -> Entity:
    ent: Entity = {
        "id": f"urn:ngsi-ld:E:{num}",
        "type": [T + type_],
        "createdAt": created,
        "modifiedAt": created,
    }
    for name, value in attrs.items():
        values = value if isinstance(value, list) else [value]
        ent[T + name] = [
            {"type": "Property", "value": v, "createdAt": created, "datasetId": f"urn:d:{i}"}
            for i, v in enumerate(values)
        ]
    return ent


def put(ent: Entity) -> Callable[[Entity | None], Entity]:
    return lambda _current: ent


@pytest.fixture
async def filled(store: Store) -> Store:
    ents = [
        entity(1, "B", "2026-01-03T00:00:00Z", name="Chofu", size=[7, 1]),
        entity(2, "A", "2026-01-01T00:00:00Z", name="Asahi", size=3),
        entity(3, "B", "2026-01-02T00:00:00Z", name="Bunkyo"),
        entity(4, "A", "2026-01-04T00:00:00Z", size=2),
    ]
    results = await store.write("", [(e["id"], put(e)) for e in ents])
    assert all(r.ok for r in results)
    return store


async def order(
    store: Store, *keys: tuple[Any, bool], limit: int = 20, offset: int = 0
) -> list[int]:
    found, _ = await store.query("", EntityQuery(order_by=list(keys), limit=limit, offset=offset))
    return [int(e["id"].rsplit(":", 1)[1]) for e in found]


async def test_by_attribute_value_missing_first_then_descending(filled: Store) -> None:
    name = AttrPath(T + "name")
    assert await order(filled, (name, False)) == [4, 2, 3, 1]
    assert await order(filled, (name, True)) == [1, 3, 2, 4]
    assert await order(filled, (name, True), limit=2, offset=1) == [3, 2]


async def test_by_smallest_of_several_values(filled: Store) -> None:
    # entity 1 has sizes 7 and 1: it sorts by 1
    assert await order(filled, (AttrPath(T + "size"), False)) == [3, 1, 4, 2]


async def test_by_type_then_system_time(filled: Store) -> None:
    assert await order(filled, ("type", False), ("createdAt", True)) == [4, 2, 1, 3]
    assert await order(filled, ("modifiedAt", False)) == [2, 3, 1, 4]
    assert await order(filled, ("id", True)) == [4, 3, 2, 1]


async def test_by_attribute_created_at(filled: Store) -> None:
    created = AttrPath(T + "name", ("createdAt",))
    assert await order(filled, (created, True)) == [1, 3, 2, 4]


async def test_pages_of_matches_checked_outside_the_database(filled: Store) -> None:
    # a pattern is checked by the reference evaluator on some backends: paging and
    # counting must still follow the order asked for
    pattern = Comparison(AttrPath(T + "name"), "~=", "^[AB]")
    query = EntityQuery(
        q=pattern, order_by=[(AttrPath(T + "name"), True)], limit=1, offset=1, count=True
    )
    found, total = await filled.query("", query)
    assert [e["id"] for e in found] == ["urn:ngsi-ld:E:2"]
    assert total == 2
