"""The NGSI-LD flow FiLiP's ``ContextBrokerLDClient`` (written against Orion-LD) runs
against a broker: create, read, query (q, geo), batch, subscriptions, delete.

Run by ``test_ld_clients.py`` with the Python of FiLiP's own virtualenv (its pins clash
with ours), as ``python filip_ld_flow.py BASE_URL NOTIFY_URL``; exits non-zero on the
first failed check.
"""

from __future__ import annotations

import sys

from filip.clients.ngsi_ld.cb import ContextBrokerLDClient
from filip.models.base import FiwareLDHeader
from filip.models.ngsi_ld.context import (
    ActionTypeLD,
    ContextLDEntity,
    NamedContextProperty,
)
from filip.models.ngsi_ld.subscriptions import (
    Endpoint,
    EntityInfo,
    NotificationParams,
    SubscriptionLD,
)

SHELTER = "urn:ngsi-ld:Shelter:狛江第一小学校"


def shelter(eid: str, capacity: int, lon: float = 139.578, lat: float = 35.634) -> ContextLDEntity:
    return ContextLDEntity(
        id=eid,
        type="Shelter",
        name={"type": "Property", "value": "狛江第一小学校"},
        capacity={"type": "Property", "value": capacity},
        location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    )


def main(url: str, notify: str) -> None:
    cb = ContextBrokerLDClient(url=url, fiware_header=FiwareLDHeader(ngsild_tenant="komae"))
    cb.post_entity(shelter(SHELTER, 300))
    got = cb.get_entity(SHELTER)
    assert got.id == SHELTER, got
    assert got.model_dump()["name"]["value"] == "狛江第一小学校", got.model_dump()
    # attributes: append and update
    cb.append_entity_attributes(
        ContextLDEntity(id=SHELTER, type="Shelter", opened={"type": "Property", "value": True})
    )
    cb.update_entity_attribute(
        entity_id=SHELTER,
        attr=NamedContextProperty(name="capacity", value=320),
        attr_name="capacity",
    )
    again = cb.get_entity(SHELTER).model_dump()
    assert again["capacity"]["value"] == 320, again
    assert again["opened"]["value"] is True, again
    # batch
    others = [
        shelter(f"urn:ngsi-ld:Shelter:狛江-{i}", 100 * i, 139.57 + i / 50) for i in range(1, 4)
    ]
    cb.entity_batch_operation(entities=others, action_type=ActionTypeLD.CREATE)
    cb.entity_batch_operation(
        entities=[shelter(others[0].id, 999, 139.59)], action_type=ActionTypeLD.UPSERT
    )
    # query: type, q, geo
    listed = cb.get_entity_list(entity_type="Shelter")
    assert len(listed) == 4, [e.id for e in listed]
    big = cb.get_entity_list(entity_type="Shelter", q="capacity>250")
    assert {e.id for e in big} == {SHELTER, others[0].id, others[2].id}, [e.id for e in big]
    near = cb.get_entity_list(
        entity_type="Shelter",
        georel="near;maxDistance==500",
        geometry="Point",
        coordinates="[139.578,35.634]",
    )
    assert {e.id for e in near} == {SHELTER}, [e.id for e in near]
    kv = cb.get_entity_list(entity_type="Shelter", q='name=="狛江第一小学校"', options="keyValues")
    assert len(kv) == 4, kv
    # subscriptions
    sub = SubscriptionLD(
        id="urn:ngsi-ld:Subscription:狛江-避難所",
        type="Subscription",
        entities=[EntityInfo(type="Shelter")],
        watchedAttributes=["capacity"],
        notification=NotificationParams(
            attributes=["capacity"], endpoint=Endpoint(uri=notify, accept="application/json")
        ),
    )
    sid = cb.post_subscription(sub)
    assert sid, sid
    subs = cb.get_subscription_list()
    assert [s.id for s in subs] == [sub.id], subs
    fetched = cb.get_subscription(sub.id)
    assert fetched.watchedAttributes == ["capacity"], fetched
    fetched.throttling = 1
    cb.update_subscription(fetched)
    assert cb.get_subscription(sub.id).throttling == 1
    cb.update_entity_attribute(
        entity_id=SHELTER,
        attr=NamedContextProperty(name="capacity", value=280),
        attr_name="capacity",
    )
    cb.delete_subscription(sub.id)
    assert cb.get_subscription_list() == []
    # deletes
    cb.delete_attribute(SHELTER, "opened")
    assert "opened" not in cb.get_entity(SHELTER).model_dump()
    cb.entity_batch_operation(entities=others, action_type=ActionTypeLD.DELETE)
    cb.delete_entity_by_id(SHELTER)
    assert cb.get_entity_list(entity_type="Shelter") == []
    print("filip ld flow ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
