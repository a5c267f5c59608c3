"""Fixtures for access control: a real OIDC issuer on 127.0.0.1 and auth files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support_oidc import OidcIssuer, oidc_issuer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    with oidc_issuer() as state:
        yield state
