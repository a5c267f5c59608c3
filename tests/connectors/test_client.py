"""The connectors' NGSI-LD client against a real broker process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from connectors.client import BrokerClient, BrokerError
from tests.support import broker, free_port


def test_client_round_trip(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        client = BrokerClient(url, tenant="komae")
        try:
            assert await client.health()
            ents = [{"id": f"urn:ngsi-ld:Bench:{i}", "type": "Bench", "seats": i} for i in range(7)]
            bad = {"id": "urn:ngsi-ld:Bench:x", "type": "Bench", "p": {"type": "Property"}}
            outcome = await client.upsert([*ents, bad])
            assert outcome.success == [e["id"] for e in ents]
            assert outcome.errors[0][0] == "urn:ngsi-ld:Bench:x"
            await client.upsert(
                [{"id": "urn:ngsi-ld:Bench:1", "type": "Bench", "colour": "green"}], update=True
            )
            one = await client.get_entity("urn:ngsi-ld:Bench:1", options="keyValues")
            assert one is not None
            assert one["colour"] == "green"
            assert one["seats"] == 1
            found = [e["id"] async for e in client.query(page_size=3, type="Bench", q="seats>=2")]
            assert len(found) == 5
            assert await client.get_entity("urn:ngsi-ld:Bench:404") is None
        finally:
            await client.aclose()

    with broker(tmp_path / "hub.db") as url:
        asyncio.run(main(url))


def test_unreachable_broker_is_reported() -> None:
    async def main() -> None:
        client = BrokerClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
        try:
            assert not await client.health()
            with pytest.raises(BrokerError, match="not reachable"):
                await client.upsert([{"id": "urn:ngsi-ld:A:1", "type": "A"}])
        finally:
            await client.aclose()

    asyncio.run(main())
