"""Fixtures of the federation tests: a recording context source on loopback (``cs``,
see ``source.py``) and a hub with access control off (``hub``; a test module gives its
own when it needs another)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from tests.broker.federation.source import Source, source
from tests.conftest import make_settings


@pytest.fixture
def cs() -> Iterator[Source]:
    with source() as s:
        yield s


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, hub_id="tokyo-hub"))) as c:
        yield c
