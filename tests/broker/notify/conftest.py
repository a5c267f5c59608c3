"""Fixtures for the notification senders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker.notify.http_endpoint import HttpEndpoint, http_endpoint_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def http_endpoint() -> Iterator[HttpEndpoint]:
    with http_endpoint_server() as endpoint:
        yield endpoint
