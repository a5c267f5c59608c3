"""Access control before forwarding: what a principal reads or writes through the hub
at a context source is what it may read or write here (real API keys, a real source on
loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.broker.api.test_access import auth_yaml, key
from tests.broker.federation.source import Source
from tests.conftest import JSON, make_settings
from tests.support_oidc import oidc_issuer

E = "/ngsi-ld/v1/entities"
R = "/ngsi-ld/v1/csourceRegistrations"
KOMAE = {"NGSILD-Tenant": "komae"}


@pytest.fixture
def hub(tmp_path: Path, cs: Source) -> Iterator[TestClient]:
    with oidc_issuer() as issuer:
        auth = tmp_path / "auth.yaml"
        auth.write_text(auth_yaml(issuer), encoding="utf-8")
        settings = make_settings(tmp_path, auth_file=auth, outbound_allow=["127.0.0.1"])
        with TestClient(create_app(settings)) as client:
            reg = {
                "id": "urn:ngsi-ld:ContextSourceRegistration:調布",
                "type": "ContextSourceRegistration",
                "information": [
                    {"entities": [{"type": "AEDLocation"}, {"type": "EvacuationShelter"}]}
                ],
                "endpoint": cs.url,
                "mode": "redirect",
                "operations": ["redirectionOps"],
            }
            r = client.post(R, json=reg, headers={**key("hub-admin"), **JSON, **KOMAE})
            assert r.status_code == 201, r.text
            yield client


def entity(kind: str, n: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:{kind}:chofu-{n}",
        "type": kind,
        "name": {"type": "Property", "value": f"調布 {n}"},
    }


def test_reads_from_sources_are_filtered_by_type(hub: TestClient, cs: Source) -> None:
    cs.answer(
        "GET",
        "/ngsi-ld/v1/entities",
        200,
        [entity("AEDLocation", 1), entity("EvacuationShelter", 1)],
    )
    h = {**key("aed-reader"), **KOMAE}
    got = hub.get(E, params={"type": "AEDLocation,EvacuationShelter"}, headers=h)
    assert got.status_code == 200, got.text
    assert [e["id"] for e in got.json()] == ["urn:ngsi-ld:AEDLocation:chofu-1"]
    everything = hub.get(
        E,
        params={"type": "AEDLocation,EvacuationShelter"},
        headers={**key("komae-writer"), **KOMAE},
    )
    assert len(everything.json()) == 2


def test_writes_to_sources_need_the_write_right(hub: TestClient, cs: Source) -> None:
    cs.answer("POST", "/ngsi-ld/v1/entities", 201, None)
    h = {**key("aed-editor"), **JSON, **KOMAE}
    assert hub.post(E, json=entity("EvacuationShelter", 2), headers=h).status_code == 403
    assert cs.requests == []
    assert hub.post(E, json=entity("AEDLocation", 2), headers=h).status_code == 201
    assert [r.body["id"] for r in cs.requests] == ["urn:ngsi-ld:AEDLocation:chofu-2"]
    # a batch: the entity it may not write fails alone
    cs.answer(
        "POST", "/ngsi-ld/v1/entityOperations/create", 201, ["urn:ngsi-ld:AEDLocation:chofu-3"]
    )
    batch = [entity("AEDLocation", 3), entity("EvacuationShelter", 3)]
    r = hub.post("/ngsi-ld/v1/entityOperations/create", json=batch, headers=h)
    assert r.status_code == 207, r.text
    assert r.json()["success"] == ["urn:ngsi-ld:AEDLocation:chofu-3"]
    assert [e["entityId"] for e in r.json()["errors"]] == ["urn:ngsi-ld:EvacuationShelter:chofu-3"]
    assert [e["id"] for e in cs.requests[-1].body] == ["urn:ngsi-ld:AEDLocation:chofu-3"]
