"""``renkei migrate-vocabulary``: a store written by Renkei 1's import moves to the default vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from broker.cli import app as APP
from tests.support import broker

V1 = "https://renkei.city/ns/renkei-v1.jsonld"
LINK_V1 = {"Link": f'<{V1}>; rel="http://www.w3.org/ns/json-ld#context"'}


def aed(n: int, name: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:AEDLocation:132195-{n:04d}",
        "type": "AEDLocation",
        "name": {"type": "Property", "value": name},
        "installationLocation": {"type": "Property", "value": "1階入口"},
        "address": {"type": "Property", "value": {"addressLocality": "狛江市"}},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.57, 35.63]},
        },
    }


def run(*args: str) -> Any:
    return CliRunner().invoke(APP, ["migrate-vocabulary", *args])


def test_old_vocabulary_entities_move_to_the_default_vocabulary(tmp_path: Path) -> None:
    with broker(tmp_path / "old.db") as url:
        entities = f"{url}/ngsi-ld/v1/entities"
        old = [aed(1, "狛江市役所"), aed(2, "あいとぴあセンター")]
        for ent in old:
            r = httpx.post(entities, json=ent, headers=LINK_V1)
            assert r.status_code == 201, r.text
        tenant = {**LINK_V1, "NGSILD-Tenant": "komae"}
        assert httpx.post(entities, json=aed(3, "西河原公民館"), headers=tenant).status_code == 201
        # what Renkei 1 left: the short name finds nothing without the old Link header
        assert httpx.get(entities, params={"type": "AEDLocation"}).json() == []

        dry = run("--broker-url", url, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert "AEDLocation: 2" in dry.output
        assert httpx.get(entities, params={"type": "AEDLocation"}).json() == []

        done = run("--broker-url", url)
        assert done.exit_code == 0, done.output
        assert "AEDLocation: 2" in done.output
        found = httpx.get(entities, params={"type": "AEDLocation"}).json()
        assert sorted(e["name"]["value"] for e in found) == ["あいとぴあセンター", "狛江市役所"]
        assert found[0]["address"]["value"] == {"addressLocality": "狛江市"}
        assert found[0]["installationLocation"]["value"] == "1階入口"
        assert httpx.get(entities, params={"type": "AEDLocation"}, headers=LINK_V1).json() == []

        # another tenant is migrated when named, and a second run has nothing left to do
        komae = run("--broker-url", url, "--tenant", "komae")
        assert komae.exit_code == 0, komae.output
        moved = httpx.get(
            entities, params={"type": "AEDLocation"}, headers={"NGSILD-Tenant": "komae"}
        ).json()
        assert [e["name"]["value"] for e in moved] == ["西河原公民館"]
        again = run("--broker-url", url)
        assert again.exit_code == 0
        assert "nothing under the old vocabulary" in again.output
