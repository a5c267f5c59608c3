"""History in the store: recorded in the write transaction, queried, aggregated, expired."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.core.history import HistoryPolicy, to_us
from broker.core.model import Entity
from broker.store.base import DELETE, EntityQuery, HistoryQuery
from broker.store.sqlite import SqliteStore

X = "https://example.org/X"
V = "https://example.org/v"


def ent(eid: str, v: float, at: str) -> Entity:
    return {
        "id": eid,
        "type": [X],
        V: [{"type": "Property", "value": v, "observedAt": at}],
    }


@pytest.mark.anyio
async def test_history_follows_writes_and_expires(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "h.db")
    await store.open()
    try:
        for i, at in enumerate(("2020-01-01T00:00:00Z", "2026-11-01T00:00:00Z")):
            doc = ent("urn:x:1", float(i), at)

            def put(_cur: Entity | None, d: Entity = doc) -> Entity:
                return d

            await store.write("", [("urn:x:1", put)])

        metas, total = await store.history_entities("", EntityQuery(types=[[X]], count=True))
        assert ([m.id for m in metas], total) == (["urn:x:1"], 1)
        hist = await store.history("", ["urn:x:1"], HistoryQuery())
        assert [r.number for r in hist["urn:x:1"][V]] == [0.0, 1.0]
        window = HistoryQuery(timerel="after", time_at=to_us("2026-01-01T00:00:00Z"))
        hist = await store.history("", ["urn:x:1"], window)
        assert [r.number for r in hist["urn:x:1"][V]] == [1.0]
        await store.write("", [("urn:x:1", lambda _cur: DELETE)])
        metas, _ = await store.history_entities("", EntityQuery(ids=["urn:x:1"]))
        assert metas[0].deleted is not None
        store.history_policy = HistoryPolicy({("*", X): 365})
        gone = await store.expire_history(to_us("2026-11-21T00:00:00Z"))
        assert gone == 1  # the 2020 reading; the 2026 one and the deletion records stay
        hist = await store.history("", ["urn:x:1"], HistoryQuery())
        assert [r.number for r in hist["urn:x:1"][V]] == [1.0]
    finally:
        await store.close()
