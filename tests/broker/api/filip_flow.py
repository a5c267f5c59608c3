"""The v2 flow FiLiP (the FIWARE Python client) runs against a broker.

Run by ``test_v2_filip.py`` with the Python of FiLiP's own virtualenv (its pins clash
with ours), as ``python filip_flow.py BASE_URL``; exits non-zero on the first failed check.
"""

from __future__ import annotations

import sys
import time

import requests
from filip.clients.exceptions import BaseHttpClientException
from filip.clients.ngsi_v2 import ContextBrokerClient
from filip.models.base import FiwareHeader
from filip.models.ngsi_v2.base import EntityPattern
from filip.models.ngsi_v2.context import (
    ActionType,
    ContextEntity,
    NamedContextAttribute,
    Query,
)
from filip.models.ngsi_v2.subscriptions import (
    Condition,
    Http,
    Notification,
    Subject,
    Subscription,
)

SHELTER = "urn:ngsi-ld:Shelter:komae-1"


def client(url: str, service: str = "komae", path: str = "/shelters") -> ContextBrokerClient:
    return ContextBrokerClient(
        url=url, fiware_header=FiwareHeader(service=service, service_path=path)
    )


def shelter(eid: str = SHELTER, capacity: int = 300) -> ContextEntity:
    return ContextEntity(
        id=eid,
        type="Shelter",
        name={"type": "Text", "value": "狛江第一小学校"},
        capacity={"type": "Number", "value": capacity},
        # FiLiP 0.8.1 refuses to read back its own geo:json attributes; geo:point it reads
        location={"type": "geo:point", "value": "35.634, 139.578"},
    )


def entities_and_attribute_values(url: str) -> None:
    cb = client(url)
    assert cb.get_version()["orion"]["version"]
    cb.post_entity(shelter())
    assert cb.get_entity(SHELTER).get_attribute("name").value == "狛江第一小学校"
    cb.update_attribute_value(entity_id=SHELTER, attr_name="capacity", value=320)
    assert cb.get_attribute_value(entity_id=SHELTER, attr_name="capacity") == 320
    cb.update_or_append_entity_attributes(
        entity_id=SHELTER,
        entity_type="Shelter",
        attrs=[
            NamedContextAttribute(name="name", type="Text", value="狛江第一小学校 体育館"),
            NamedContextAttribute(name="opened", type="Boolean", value=True),
        ],
    )
    updated = cb.get_entity(SHELTER)
    assert updated.get_attribute("name").value == "狛江第一小学校 体育館"
    assert updated.get_attribute("opened").value is True
    # the same entity, in the same tenant and scope, through NGSI-LD
    ld = requests.get(f"{url}/ngsi-ld/v1/entities/{SHELTER}", headers={"NGSILD-Tenant": "komae"})
    assert ld.json()["capacity"]["value"] == 320, ld.text
    assert ld.json()["scope"] == "/shelters", ld.text
    cb.delete_entity(SHELTER)
    try:
        cb.get_entity(SHELTER)
    except BaseHttpClientException:
        pass
    else:
        raise AssertionError("a deleted entity is still found")


def queries_and_batch(url: str) -> None:
    cb = client(url, path="/batch")
    cb.update(
        entities=[shelter(f"urn:ngsi-ld:Shelter:b{i}", capacity=100 * i) for i in range(1, 5)],
        action_type=ActionType.APPEND,
    )
    big = cb.get_entity_list(entity_types=["Shelter"], q="capacity>=300")
    assert sorted(e.id for e in big) == ["urn:ngsi-ld:Shelter:b3", "urn:ngsi-ld:Shelter:b4"]
    near = cb.get_entity_list(
        entity_types=["Shelter"],
        georel="near;maxDistance:100",
        geometry="point",
        coords="35.634,139.578",
    )
    assert len(near) == 4
    far = cb.get_entity_list(
        entity_types=["Shelter"],
        georel="near;maxDistance:100",
        geometry="point",
        coords="35.0,139.0",
    )
    assert far == []
    found = cb.query(query=Query(entities=[{"idPattern": "b[12]$", "type": "Shelter"}]))
    assert sorted(e.id for e in found) == ["urn:ngsi-ld:Shelter:b1", "urn:ngsi-ld:Shelter:b2"]
    assert [t["type"] for t in cb.get_entity_types()] == ["Shelter"]
    # another service path and another service see none of them
    assert client(url, path="/elsewhere").get_entity_list(entity_types=["Shelter"]) == []
    assert client(url, service="chofu", path="/batch").get_entity_list() == []
    cb.update(
        entities=[
            ContextEntity(id=f"urn:ngsi-ld:Shelter:b{i}", type="Shelter") for i in range(1, 5)
        ],
        action_type=ActionType.DELETE,
    )
    assert cb.get_entity_list(entity_types=["Shelter"]) == []


def times_sent(cb: ContextBrokerClient, sub_id: str, count: int) -> None:
    """Wait until the subscription counts ``count`` notifications (its status, read back)."""
    deadline = time.monotonic() + 20
    while (cb.get_subscription(sub_id).notification.timesSent or 0) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timesSent did not reach {count}")
        time.sleep(0.1)


def subscriptions(url: str, receiver: str) -> None:
    """Create, list, read, update and delete a subscription; the notifications reach the
    receiver the test runs (it checks them)."""
    cb = client(url, path="/subs")
    sub = Subscription(
        description="避難所の収容人数",
        subject=Subject(
            entities=[EntityPattern(idPattern=".*", type="Shelter")],
            condition=Condition(attrs=["capacity"]),
        ),
        notification=Notification(http=Http(url=receiver), attrs=["name", "capacity"]),
        throttling=0,
    )
    sub_id = cb.post_subscription(sub)
    assert [s.id for s in cb.get_subscription_list()] == [sub_id]
    assert cb.get_subscription(sub_id).description == "避難所の収容人数"
    cb.post_entity(shelter("urn:ngsi-ld:Shelter:subs-1"))
    cb.update_attribute_value(
        entity_id="urn:ngsi-ld:Shelter:subs-1", attr_name="capacity", value=350
    )
    times_sent(cb, sub_id, 2)
    # updated through FiLiP's model: inactive, so the next change is not notified
    stored = cb.get_subscription(sub_id)
    stored.status = "inactive"
    stored.description = "休止中"
    cb.update_subscription(stored)
    again = cb.get_subscription(sub_id)
    assert (again.status.value, again.description) == ("inactive", "休止中")
    cb.update_attribute_value(
        entity_id="urn:ngsi-ld:Shelter:subs-1", attr_name="capacity", value=360
    )
    assert cb.get_subscription(sub_id).notification.timesSent == 2
    cb.delete_subscription(sub_id)
    assert cb.get_subscription_list() == []


if __name__ == "__main__":
    base = sys.argv[1]
    entities_and_attribute_values(base)
    queries_and_batch(base)
    if len(sys.argv) > 2:
        subscriptions(base, sys.argv[2])
    print("filip flow ok")
