"""The flow ngsildclient (written against Orion-LD, Scorpio and Stellio) runs against a
broker: create, read, query (q, geo), batch, subscriptions, delete.

Run by ``test_ld_clients.py`` with the Python of ngsildclient's own virtualenv (its pins
clash with ours), as ``python ngsildclient_flow.py HOST PORT NOTIFY_URL``; exits non-zero
on the first failed check.
"""

from __future__ import annotations

import sys

from ngsildclient import Client, Entity, SubscriptionBuilder


def shelter(name: str, capacity: int, lon: float) -> Entity:
    e = Entity("Shelter", name)
    e.prop("name", f"避難所{name}")
    e.prop("capacity", capacity)
    e.gprop("location", (35.634, lon))  # (lat, lon), as ngsildclient takes points
    return e


def main(host: str, port: int, notify: str) -> None:
    client = Client(hostname=host, port=port, tenant="komae")
    first = shelter("狛江第一小学校", 300, 139.578)
    assert client.create(first)
    got = client.get(first.id)
    assert got["name"]["value"] == "避難所狛江第一小学校", got.to_dict()
    assert got["capacity"]["value"] == 300
    # batch create and upsert
    others = [shelter(f"狛江-{i}", 100 * i, 139.578 + i / 50) for i in range(1, 4)]
    result = client.batch.create(others)
    assert result.ok, result
    changed = shelter("狛江-1", 999, 139.598)
    assert client.upsert(changed)
    assert client.get(changed.id)["capacity"]["value"] == 999
    # update one attribute
    first["capacity"]["value"] = 320
    assert client.update(first)
    assert client.get(first.id)["capacity"]["value"] == 320
    # queries: type, q, geo (ngsildclient sends the geo-query as geoQ-like parts)
    assert client.count("Shelter") == 4
    big = client.query(type="Shelter", q="capacity>250")
    assert {e.id for e in big} == {first.id, others[0].id, others[2].id}, [e.id for e in big]
    near = client.query(
        type="Shelter",
        gq="georel=near;maxDistance==500&geometry=Point&coordinates=[139.578,35.634]",
    )
    assert [e.id for e in near] == [first.id], [e.id for e in near]
    # subscriptions. ngsildclient compares the id it sent with the last segment of the
    # Location answered; a Japanese id is percent-encoded there (HTTP headers carry URIs,
    # RFC 3987 §3.1), which it reads as another id: an ASCII id here.
    sid = "urn:ngsi-ld:Subscription:komae-capacity"
    sub = (
        SubscriptionBuilder(notify)
        .id(sid)
        .description("収容人数の変化")
        .select_type("Shelter")
        .watch(["capacity"])
        .query("capacity<1000")
        .notif(["capacity"])
        .build()
    )
    assert client.subscriptions.create(sub)
    assert client.subscriptions.exists(sid)
    listed = client.subscriptions.list()
    assert [s["id"] for s in listed] == [sid], listed
    first["capacity"]["value"] = 280
    assert client.update(first)
    assert client.subscriptions.delete("収容人数")  # by a pattern on name and description
    assert not client.subscriptions.exists(sid)
    # deletes
    assert client.batch.delete(others).ok
    assert client.delete(first)
    assert client.count("Shelter") == 0
    client.close()
    print("ngsildclient flow ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
