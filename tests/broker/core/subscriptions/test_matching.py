"""Matching a committed change (clause 5.8.6 and 5.11): which events it is, which
subscriptions it reaches, and the entity a notification carries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.api.deps import Hub
from broker.core.subscriptions.matching import attr_events, render_change
from broker.model.entity import Entity
from tests.broker.core.conftest import CONTEXT, NS, shelter
from tests.receiver import Receiver

pytestmark = pytest.mark.anyio

NAME, CAPACITY = f"{NS}名称", f"{NS}収容人数"


def entity(capacity: int | None = 120, **extra: Any) -> Entity:
    ent: Entity = {"id": "urn:ngsi-ld:避難所:狛江-001", "type": [f"{NS}避難所"]}
    ent[NAME] = [{"type": "Property", "value": "狛江第1小学校"}]
    if capacity is not None:
        ent[CAPACITY] = [{"type": "Property", "value": capacity}]
    ent.update(extra)
    return ent


def test_events_of_creation_update_and_deletion() -> None:
    assert attr_events(None, entity(), None) == {"entityCreated", "attributeCreated"}
    assert attr_events(entity(120), entity(80), None) == {"entityUpdated", "attributeUpdated"}
    assert attr_events(entity(120), entity(None), None) == {"entityUpdated", "attributeDeleted"}
    assert attr_events(entity(), None, None) == {"entityDeleted", "attributeDeleted"}
    assert attr_events(entity(), entity(), None) == set()


def test_events_are_limited_to_watched_attributes() -> None:
    assert attr_events(entity(120), entity(80), {NAME}) == set()
    assert attr_events(entity(120), entity(80), {CAPACITY}) == {
        "entityUpdated",
        "attributeUpdated",
    }


def test_a_new_dataset_instance_is_an_attribute_created() -> None:
    english = {"type": "Property", "value": "Komae No.1", "datasetId": "urn:ngsi-ld:Dataset:en"}
    after = entity()
    after[NAME] = [*after[NAME], english]
    assert "attributeCreated" in attr_events(entity(), after, {NAME})


async def test_rendered_change_shows_previous_values_and_deleted_attributes(hub: Hub) -> None:
    sub = await hub.subscriptions.compile(
        "",
        {
            "id": "urn:ngsi-ld:Subscription:1",
            "type": "Subscription",
            "entities": [{"type": "避難所"}],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/"}, "showChanges": True},
            "@context": CONTEXT,
        },
    )
    changed = render_change(sub, entity(120), entity(80))
    assert changed["収容人数"] == {"type": "Property", "value": 80, "previousValue": 120}
    gone = render_change(sub, entity(120), entity(None))
    assert gone["収容人数"] == {
        "type": "Property",
        "value": "urn:ngsi-ld:null",
        "previousValue": 120,
    }
    deleted = render_change(sub, entity(), None)
    assert deleted["id"] == "urn:ngsi-ld:避難所:狛江-001"
    assert deleted["type"] == "避難所"
    assert "deletedAt" in deleted


async def test_only_matching_changes_are_notified(hub: Hub, receiver: Receiver) -> None:
    tm = await hub.term_map(CONTEXT)
    await hub.subscriptions.create(
        "",
        {
            "type": "Subscription",
            "entities": [{"type": "避難所"}],
            "q": "収容人数>100",
            "notification": {"endpoint": {"uri": receiver.url}, "format": "keyValues"},
        },
        CONTEXT,
    )
    await hub.entities.create("", shelter(1, capacity=50), tm)  # fails q
    await hub.entities.create("", shelter(2, capacity=300), tm)
    notified = (await asyncio.to_thread(receiver.wait, 1))[0][1]["data"]
    assert [(e["id"], e["収容人数"]) for e in notified] == [("urn:ngsi-ld:避難所:狛江-002", 300)]
    await asyncio.to_thread(receiver.quiet, 1, 0.5)
