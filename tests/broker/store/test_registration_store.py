"""The registration part of the store contract (``RegistrationStore``), on every backend:
context source registrations and their subscriptions kept per tenant and per kind,
in creation order, surviving a reopen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from broker.errors import AlreadyExists, ResourceNotFound
from broker.model.store import NotificationRecord
from broker.store.base import Store

pytestmark = pytest.mark.anyio

CSR = "urn:ngsi-ld:ContextSourceRegistration:"


def registration(n: int, endpoint: str = "http://komae-hub.example:1026") -> dict[str, object]:
    return {
        "id": f"{CSR}{n}",
        "type": "ContextSourceRegistration",
        "registrationName": f"狛江市 AED 台帳 {n}",
        "information": [{"entities": [{"type": "AEDLocation"}]}],
        "endpoint": endpoint,
        "location": {"type": "Point", "coordinates": [139.578, 35.634]},
        "a.dotted$name": {"値": 1},  # any member name survives (MongoDB escapes it)
    }


async def test_registrations_crud_in_creation_order(store: Store) -> None:
    for n in (3, 1, 2):
        await store.put_registration("komae", "registration", registration(n), create=True)
    with pytest.raises(AlreadyExists):
        await store.put_registration("komae", "registration", registration(1), create=True)
    with pytest.raises(ResourceNotFound):
        await store.put_registration("komae", "registration", registration(9), create=False)
    listed = await store.list_registrations("komae", "registration")
    assert [r["id"] for r in listed] == [f"{CSR}3", f"{CSR}1", f"{CSR}2"]
    assert listed[1] == registration(1)

    changed = registration(1, "http://chofu-hub.example:1026")
    await store.put_registration("komae", "registration", changed, create=False)
    assert await store.get_registration("komae", "registration", f"{CSR}1") == changed
    assert await store.tenant_exists("komae")

    assert await store.delete_registration("komae", "registration", f"{CSR}1")
    assert not await store.delete_registration("komae", "registration", f"{CSR}1")
    assert await store.get_registration("komae", "registration", f"{CSR}1") is None
    assert [r["id"] for r in await store.list_registrations("komae", "registration")] == [
        f"{CSR}3",
        f"{CSR}2",
    ]


async def test_tenants_and_kinds_are_apart(store: Store) -> None:
    await store.put_registration("komae", "registration", registration(1), create=True)
    # the same id in another tenant, and as a subscription, is another document
    await store.put_registration("chofu", "registration", registration(1), create=True)
    sub = {"id": f"{CSR}1", "type": "Subscription", "entities": [{"type": "AEDLocation"}]}
    await store.put_registration("komae", "subscription", sub, create=True)
    assert await store.list_registrations("", "registration") == []
    assert [r["type"] for r in await store.list_registrations("komae", "subscription")] == [
        "Subscription"
    ]
    assert await store.delete_registration("chofu", "registration", f"{CSR}1")
    assert await store.get_registration("komae", "registration", f"{CSR}1") == registration(1)
    assert await store.get_registration("komae", "subscription", f"{CSR}1") == sub


async def test_registrations_survive_reopening(make_store: Callable[[], Store]) -> None:
    s = make_store()
    await s.open()
    try:
        await s.put_registration("komae", "registration", registration(1), create=True)
    finally:
        await s.close()
    s = make_store()
    await s.open()
    try:
        assert await s.list_registrations("komae", "registration") == [registration(1)]
    finally:
        await s.close()


async def test_entity_maps_are_kept_beside_registrations(store: Store) -> None:
    """Entity maps (clause 5.2.39) are kept as their own kind: entity ids with dots and
    Japanese names as member names survive, and they are apart from registrations."""
    doc: dict[str, Any] = {
        "id": "urn:ngsi-ld:EntityMap:1",
        "type": "EntityMap",
        "expiresAt": "2030-01-01T00:00:00.000Z",
        "entityMap": {
            "urn:ngsi-ld:駐車場:渋谷-1": ["@none"],
            "urn:ngsi-ld:駐車場:v1.2$3": [f"{CSR}1", "@none"],
        },
        "linkedMaps": {f"{CSR}1": "/ngsi-ld/v1/entityMaps/urn:ngsi-ld:EntityMap:渋谷"},
    }
    await store.put_registration("tokyo", "entityMap", doc, create=True)
    await store.put_registration("tokyo", "registration", registration(1), create=True)
    assert await store.get_registration("tokyo", "entityMap", doc["id"]) == doc
    assert [d["id"] for d in await store.list_registrations("tokyo", "entityMap")] == [doc["id"]]
    assert await store.get_registration("chofu", "entityMap", doc["id"]) is None
    smaller = {**doc, "entityMap": {"urn:ngsi-ld:駐車場:渋谷-1": ["@none"]}}
    await store.put_registration("tokyo", "entityMap", smaller, create=False)
    assert await store.get_registration("tokyo", "entityMap", doc["id"]) == smaller
    assert await store.delete_registration("tokyo", "entityMap", doc["id"])
    assert await store.list_registrations("tokyo", "registration") == [registration(1)]


SUB = "urn:ngsi-ld:Subscription:都のAED監視"


def csub() -> dict[str, object]:
    return {"id": SUB, "type": "Subscription", "entities": [{"type": "AEDLocation"}]}


async def test_registration_subscription_delivery_counts_add_up(
    make_store: Callable[[], Store],
) -> None:
    """Registration subscriptions' delivery counts are kept in the store, as entity
    subscriptions' are (``record_notifications``): they add up, the ``last*`` times
    given replace the stored ones, an update of the document keeps them, and they
    survive a reopen."""
    s = make_store()
    await s.open()
    try:
        await s.put_registration("komae", "subscription", csub(), create=True)
        assert await s.registration_status("komae", SUB) == {"timesSent": 0, "timesFailed": 0}
        await s.record_registration_notifications(
            [
                NotificationRecord("komae", SUB, sent=1, last_notification="2026-12-01T09:00:00Z"),
                NotificationRecord("komae", SUB, failed=1, last_failure="2026-12-01T09:00:00Z"),
                NotificationRecord("komae", SUB, sent=1, last_notification="2026-12-01T09:05:00Z"),
                NotificationRecord("komae", SUB, last_success="2026-12-01T09:05:00Z"),
                # another tenant's, and a deleted subscription's: ignored
                NotificationRecord("chofu", SUB, sent=7),
                NotificationRecord("komae", SUB + ":消えた", sent=7),
            ]
        )
        changed = {**csub(), "watchedAttributes": ["設置場所"]}
        await s.put_registration("komae", "subscription", changed, create=False)
    finally:
        await s.close()
    s = make_store()
    await s.open()
    try:
        assert await s.registration_status("komae", SUB) == {
            "timesSent": 2,
            "timesFailed": 1,
            "lastNotification": "2026-12-01T09:05:00Z",
            "lastSuccess": "2026-12-01T09:05:00Z",
            "lastFailure": "2026-12-01T09:00:00Z",
        }
        assert await s.get_registration("komae", "subscription", SUB) == changed
        assert await s.registration_status("chofu", SUB) == {}
        assert await s.delete_registration("komae", "subscription", SUB)
        assert await s.registration_status("komae", SUB) == {}
    finally:
        await s.close()


async def test_the_hub_keeps_the_name_it_was_first_given(
    make_store: Callable[[], Store],
) -> None:
    s = make_store()
    await s.open()
    try:
        assert await s.hub_identity("renkei-狛江") == "renkei-狛江"
        assert await s.hub_identity("renkei-other") == "renkei-狛江"
    finally:
        await s.close()
    s = make_store()
    await s.open()
    try:
        assert await s.hub_identity("renkei-after-restart") == "renkei-狛江"
    finally:
        await s.close()
