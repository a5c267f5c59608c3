"""The store contract tests run against every backend (``store`` is parametrised).

``mongodb`` runs on the shared mongoeco wire server (``tests/mongo_support.py``), one
database per test location.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from broker.store.base import Store
from broker.store.mongodb import MongoStore
from broker.store.sqlite import SqliteStore
from tests.mongo_support import SHARED, MongoecoUnavailable, unavailable_is_failure, venv_python


def mongo_store(tmp: Path) -> Store:
    database = "t_" + hashlib.sha1(str(tmp).encode()).hexdigest()[:20]
    return MongoStore(SHARED.url(database))


def real_mongo_store(tmp: Path) -> Store:
    """A store on the real server of ``RENKEI_TEST_MONGO_URI``, one database per location."""
    database = "renkei_test_" + hashlib.sha1(str(tmp).encode()).hexdigest()[:16]
    return MongoStore(os.environ["RENKEI_TEST_MONGO_URI"], database=database)


BACKENDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp: SqliteStore(tmp / "store.db"),  # its writer in a process
    "sqlite-thread": lambda tmp: SqliteStore(tmp / "store.db", writer="thread"),
    "mongodb": mongo_store,
}
if os.environ.get("RENKEI_TEST_MONGO_URI"):
    BACKENDS["mongodb-real"] = real_mongo_store


def mongoeco_missing() -> str | None:
    """Why the mongoeco server cannot run here, or None; in CI it must run."""
    try:
        venv_python()
    except MongoecoUnavailable as exc:
        if unavailable_is_failure():
            raise
        return str(exc)
    return None


_MISSING = mongoeco_missing()
if _MISSING is not None:
    del BACKENDS["mongodb"]


def _params() -> list[Any]:
    marks = [pytest.mark.mongo]
    if _MISSING is not None:
        marks.append(pytest.mark.skip(reason=_MISSING))
    # on a real server when RENKEI_TEST_MONGO_URI names one (deselected otherwise)
    real = pytest.param("mongodb-real", marks=[pytest.mark.mongo, pytest.mark.real_mongo])
    return ["sqlite", "sqlite-thread", pytest.param("mongodb", marks=marks), real]


@pytest.fixture
def mongo_url(tmp_path: Path) -> str:
    """A URL naming a fresh database on the shared mongoeco server."""
    if _MISSING is not None:
        pytest.skip(_MISSING)
    return SHARED.url("t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:20])


@pytest.fixture(scope="session", autouse=True)
def _stop_mongoeco() -> Iterator[None]:
    yield
    SHARED.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=_params())
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Builds a store on the same location each call, to test reopening."""
    if request.param not in BACKENDS:
        pytest.skip(f"{request.param} is not available here")
    factory = BACKENDS[request.param]
    yield lambda: factory(tmp_path)
    if request.param == "mongodb-real":  # a real server keeps what tests leave
        store = real_mongo_store(tmp_path)
        assert isinstance(store, MongoStore)
        client: MongoClient[dict[str, Any]] = MongoClient(os.environ["RENKEI_TEST_MONGO_URI"])
        try:
            client.drop_database(store.database_name)
        finally:
            client.close()


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()
