"""The SQLite store's writer process: it is replaced when it dies, it ends with the
serving process, and writers on one file never lose each other's updates."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.errors import AlreadyExists, StoreUnavailable
from broker.model.entity import Entity
from broker.model.store import Create, HistoryQuery, WriteResult
from broker.store.sqlite import SqliteStore
from broker.store.sqlwriter import _CHILD, _ROOT, ProcessWriter

pytestmark = pytest.mark.anyio

T = "https://example.org/"


def counter(eid: str, n: int = 0) -> Entity:
    return {"id": eid, "type": [T + "Counter"], T + "n": [{"type": "Property", "value": n}]}


def bump(cur: Entity | None) -> Entity:
    assert cur is not None
    out = dict(cur)
    out[T + "n"] = [{"type": "Property", "value": cur[T + "n"][0]["value"] + 1}]
    return out


async def value(store: SqliteStore, eid: str) -> int:
    ent = await store.get_entity("", eid)
    assert ent is not None
    n: int = ent[T + "n"][0]["value"]
    return n


def writer_pid(store: SqliteStore) -> int:
    assert isinstance(store._writer, ProcessWriter)
    assert store._writer._proc is not None
    return store._writer._proc.pid


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "w.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """Two stores on one file, as two servers on it would have: a writer process each."""
    a, b = SqliteStore(tmp_path / "shared.db"), SqliteStore(tmp_path / "shared.db")
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_writes_go_to_a_process_of_their_own(store: SqliteStore) -> None:
    await store.write("", [("urn:c:1", lambda _: counter("urn:c:1"))])
    pid = writer_pid(store)
    assert pid != os.getpid()
    cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    assert b"broker.store.sqlwriter" in cmdline


async def test_the_writer_process_starts_without_the_context_resolvers_libraries() -> None:
    """The writer never resolves a JSON-LD context: it imports the model and the store
    only, not ``broker.jsonld`` nor pyld and httpx (with what they pull in, about half
    of its imports otherwise). Every server start and every replaced writer waits for
    these imports."""
    heavy = ("broker.jsonld.context", "broker.core", "pyld", "httpx", "requests", "rich")
    imports = _CHILD.split(";")[0]  # the child's program, without running it
    probe = f"import sys\n{imports}\nprint(*[m for m in {heavy!r} if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": _ROOT}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


async def test_a_killed_writer_is_replaced_and_nothing_committed_is_lost(
    store: SqliteStore,
) -> None:
    await store.write("", [("urn:c:1", lambda _: counter("urn:c:1", 5))])
    old = writer_pid(store)
    os.kill(old, signal.SIGKILL)
    assert isinstance(store._writer, ProcessWriter)
    assert store._writer._proc is not None
    await asyncio.wait_for(store._writer._proc.wait(), 10)
    (result,) = await store.write("", [("urn:c:1", bump)])
    assert result.ok
    assert writer_pid(store) != old
    assert await value(store, "urn:c:1") == 6
    (created,) = await store.write("", [("urn:c:2", lambda _: counter("urn:c:2"))])
    assert created.ok
    assert await store.get_entity("", "urn:c:2") is not None


async def test_writers_of_two_stores_on_one_file_lose_no_update(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    # Two writer processes on one database, as two servers on one file would have: each
    # store's guess of an entity's state goes stale as the other writes, and every
    # update must still count once.
    a, b = two
    await a.write("", [("urn:c:1", lambda _: counter("urn:c:1"))])
    writes = [s.write("", [("urn:c:1", bump)]) for _ in range(40) for s in (a, b)]
    outcomes: list[list[WriteResult]] = await asyncio.gather(*writes)
    assert all(r.ok for out in outcomes for r in out)
    assert await value(a, "urn:c:1") == 80
    assert await value(b, "urn:c:1") == 80


async def test_a_rejected_write_on_a_stale_guess_is_checked_against_the_store(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    # Store b last saw no entity; a creates it. b's create must then fail as a
    # conflict with what is stored, not succeed on its stale belief.
    a, b = two

    def create_once(cur: Entity | None) -> Entity:
        if cur is not None:
            raise StoreUnavailable("exists")  # any NgsiLdError: the entity is kept
        return counter("urn:c:1", 1)

    (first,) = await a.write("", [("urn:c:1", create_once)])
    (second,) = await b.write("", [("urn:c:1", create_once)])
    assert first.ok
    assert not second.ok
    assert second.before is not None
    assert second.before[T + "n"][0]["value"] == 1
    assert await value(b, "urn:c:1") == 1


async def test_history_deleted_by_another_server_is_not_written_to_a_gone_series(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    # Each writer remembers the history series numbers it used. When another server on
    # the same file deletes an entity's history, those series are gone: the next change
    # must start new ones, or its instances would be stored where no query finds them.
    a, b = two
    await a.write("", [("urn:c:1", lambda _: counter("urn:c:1", 1))])
    assert await b.delete_history("", "urn:c:1") == 1
    await a.write("", [("urn:c:1", bump)])
    for store in (a, b):
        hist = await store.history("", ["urn:c:1"], HistoryQuery())
        assert [r.instance["value"] for r in hist["urn:c:1"][T + "n"] if r.instance] == [2]


async def test_a_create_guessed_new_is_checked_against_the_store(
    two: tuple[SqliteStore, SqliteStore],
) -> None:
    # A create is sent on the guess that no entity is stored, without a read first. Where
    # another server created it meanwhile, the create fails as AlreadyExists, and the
    # stored entity is left as it was.
    a, b = two
    (first,) = await a.write("", [("urn:c:1", Create(counter("urn:c:1", 1)))])
    (second,) = await b.write("", [("urn:c:1", Create(counter("urn:c:1", 2)))])
    (third,) = await b.write("", [("urn:c:2", Create(counter("urn:c:2", 3)))])
    assert first.ok
    assert third.ok
    assert isinstance(second.error, AlreadyExists)
    assert second.before is not None
    assert second.before[T + "n"][0]["value"] == 1
    assert await value(a, "urn:c:1") == 1
    assert await value(a, "urn:c:2") == 3
