"""The flow ngsildclient (an NGSI-LD client written for Orion-LD) runs against a broker.

Run by ``test_ld_clients.py`` with the Python of its own virtualenv (its pins clash
with ours), as ``python ngsildclient_flow.py HOST PORT``; exits non-zero on the first
failed check.
"""

from __future__ import annotations

import sys

from ngsildclient import Client, Entity
from ngsildclient.api.constants import Vendor

KOMAE = (35.634, 139.578)  # lat, lon: Komae City Hall


def shelter(n: int, capacity: int, lat: float, lon: float) -> Entity:
    e = Entity("Shelter", f"urn:ngsi-ld:Shelter:komae-{n}")
    e.prop("name", f"狛江避難所{n}")
    e.prop("capacity", capacity)
    e.prop("address", {"street-address": {"number": 800 + n}, "city": "狛江市"})
    e.gprop("location", (lat, lon))
    return e


def main(host: str, port: int) -> None:
    client = Client(hostname=host, port=port)
    # the broker is recognised from GET /version, as Orion-LD is
    assert client.broker.vendor == Vendor.ORIONLD, client.broker
    assert client.broker.version != "N/A", client.broker

    entities = [
        shelter(1, 300, *KOMAE),
        shelter(2, 120, KOMAE[0] + 0.004, KOMAE[1]),  # about 445 m north
        shelter(3, 80, KOMAE[0] + 0.014, KOMAE[1]),  # about 1.5 km north
    ]
    result = client.create(*entities)
    assert result.success, result
    assert not result.errors, result

    got = client.get("urn:ngsi-ld:Shelter:komae-1")
    assert got["name"].value == "狛江避難所1", got.to_dict()
    assert client.exists("urn:ngsi-ld:Shelter:komae-2")

    # q, a dotted trailing path, and the geo-query sent whole as geoQ
    big = client.query(type="Shelter", q="capacity>100")
    assert sorted(e.id for e in big) == [
        "urn:ngsi-ld:Shelter:komae-1",
        "urn:ngsi-ld:Shelter:komae-2",
    ]
    road = client.query(type="Shelter", q="address[street-address.number]==803")
    assert [e.id for e in road] == ["urn:ngsi-ld:Shelter:komae-3"]
    near = "georel=near;maxDistance==1000&geometry=Point&coordinates=[139.578,35.634]"
    close = client.query(type="Shelter", gq=near)
    assert sorted(e.id for e in close) == [
        "urn:ngsi-ld:Shelter:komae-1",
        "urn:ngsi-ld:Shelter:komae-2",
    ]
    assert client.count(type="Shelter", gq=near) == 2
    assert client.count(type="Shelter") == 3

    # paging through every entity of a type
    assert len(client.query(type="Shelter", limit=2)) == 3

    # batch delete, then nothing is left
    client.drop("Shelter")
    assert client.count(type="Shelter") == 0
    client.close()
    print("ngsildclient flow ok")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
    sys.exit(0)
