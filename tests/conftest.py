"""Shared fixtures: a broker app on a fresh SQLite file, with the real lifespan.

Tests marked ``real_mongo`` need a real MongoDB server (``RENKEI_TEST_MONGO_URI``):
without one they are deselected, and pytest's summary counts them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.settings import Settings
from tests.receiver import Receiver


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RENKEI_TEST_MONGO_URI"):
        return
    deselected = [item for item in items if item.get_closest_marker("real_mongo")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("real_mongo")]


CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
JSON = {"Content-Type": "application/json"}
LD = {"Content-Type": "application/ld+json"}


def link(url: str) -> dict[str, str]:
    return {
        "Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    }


def make_settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path / 'broker.db'}", **extra)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP notification receiver on loopback."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def building(eid: str = "urn:ngsi-ld:Building:1", **attrs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": eid,
        "type": "Building",
        "name": {"type": "Property", "value": "Komae City Hall"},
        "floors": {"type": "Property", "value": 5, "unitCode": "C62"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.578, 35.634]},
        },
    }
    body.update(attrs)
    return body
