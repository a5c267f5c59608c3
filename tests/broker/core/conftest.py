"""Services of ``broker.core`` on a whole hub over a real SQLite file (``hub``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.api.deps import Hub
from broker.app import build_hub, close_hub
from tests.conftest import make_settings

NS = "https://renkei.example/ns/"
#: An inline context with Japanese terms, as a municipality's own data model would have.
CONTEXT: dict[str, Any] = {
    "避難所": f"{NS}避難所",
    "名称": f"{NS}名称",
    "収容人数": f"{NS}収容人数",
    "所在地区": {"@id": f"{NS}所在地区", "@type": "@id"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = await build_hub(make_settings(tmp_path))
    yield h
    await close_hub(h)


def shelter(number: int, capacity: int = 120, **attrs: Any) -> dict[str, Any]:
    """An evacuation shelter (避難所) in the municipality's own terms."""
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:避難所:狛江-{number:03d}",
        "type": "避難所",
        "名称": {"type": "Property", "value": f"狛江第{number}小学校"},
        "収容人数": {"type": "Property", "value": capacity},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.57 + number / 1000, 35.63]},
        },
    }
    body.update(attrs)
    return body
