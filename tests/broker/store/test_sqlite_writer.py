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

import orjson
import pytest

from broker.errors import AlreadyExists, StoreUnavailable
from broker.model.entity import Entity
from broker.model.store import Create, HistoryQuery, WriteResult
from broker.store.sqlite import SqliteStore
from broker.store.sqlwriter import (
    _CHILD,
    _ROOT,
    Conflict,
    Item,
    Job,
    ProcessWriter,
    Unknown,
    settle,
)

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
    assert store._writer.pid is not None
    return store._writer.pid


async def replaced(store: SqliteStore, old: int, within: float = 5.0) -> int:
    """Wait until a writer other than ``old`` takes writes; its pid."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        assert isinstance(store._writer, ProcessWriter)
        pid = store._writer.pid
        if pid is not None and pid != old:
            assert store.unavailable is None
            return pid
        assert asyncio.get_running_loop().time() < deadline, "no writer replaced the dead one"
        await asyncio.sleep(0.01)


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
    await replaced(store, old)
    (result,) = await store.write("", [("urn:c:1", bump)])
    assert result.ok
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


# A writer that dies at a chosen moment of a group write, as a crash would: a fault that
# cannot be timed from outside (a kill lands between a commit and its answer only by
# chance), so the child's program is wrapped. It dies once, when the file named by
# RENKEI_TEST_WRITER_DIES exists (and removes it, so its replacement lives): "before" a
# group write is applied, or "after" it committed and before it answers.
_DYING_CHILD = """
import os
from pathlib import Path
from broker.store import sqlwriter

handle = sqlwriter.Host.handle

def dying_handle(self, request):
    flag = Path(os.environ["RENKEI_TEST_WRITER_DIES"])
    when = flag.read_text() if request[0] == "apply" and flag.exists() else None
    if when is not None:
        flag.unlink()
    if when == "before":
        os._exit(3)
    result = handle(self, request)
    if when == "after":
        os._exit(3)
    return result

sqlwriter.Host.handle = dying_handle
sqlwriter.main()
"""


@pytest.fixture
async def dying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SqliteStore, Path]]:
    flag = tmp_path / "dies"
    monkeypatch.setenv("RENKEI_TEST_WRITER_DIES", str(flag))
    monkeypatch.setattr("broker.store.sqlwriter._CHILD", _DYING_CHILD)
    s = SqliteStore(tmp_path / "d.db")
    await s.open()
    try:
        yield s, flag
    finally:
        await s.close()


async def test_a_write_committed_by_a_writer_that_died_before_answering_succeeds(
    dying: tuple[SqliteStore, Path],
) -> None:
    # The client must not be told that a write failed when it is stored: its retry of a
    # create would then be refused as 409.
    store, flag = dying
    await store.write("", [("urn:ngsi-ld:避難所:1", Create(counter("urn:ngsi-ld:避難所:1", 1)))])
    old = writer_pid(store)
    flag.write_text("after")
    (created,) = await store.write(
        "", [("urn:ngsi-ld:避難所:2", Create(counter("urn:ngsi-ld:避難所:2", 2)))]
    )
    assert not flag.exists(), "the writer died after this write committed"
    assert created.ok
    assert await value(store, "urn:ngsi-ld:避難所:2") == 2
    await replaced(store, old)
    (bumped,) = await store.write("", [("urn:ngsi-ld:避難所:2", bump)])
    assert bumped.ok
    assert await value(store, "urn:ngsi-ld:避難所:2") == 3


async def test_a_write_lost_with_its_writer_fails_as_retryable_and_its_retry_is_created(
    dying: tuple[SqliteStore, Path],
) -> None:
    store, flag = dying
    await store.write("", [("urn:ngsi-ld:避難所:1", Create(counter("urn:ngsi-ld:避難所:1", 1)))])
    old = writer_pid(store)
    flag.write_text("before")
    with pytest.raises(StoreUnavailable, match="nothing of it was written") as failed:
        await store.write("", [("urn:ngsi-ld:避難所:2", Create(counter("urn:ngsi-ld:避難所:2")))])
    assert failed.value.status == 503
    assert failed.value.headers["Retry-After"]
    assert not flag.exists()
    assert await store.get_entity("", "urn:ngsi-ld:避難所:2") is None
    await replaced(store, old)
    (retried,) = await store.write(
        "", [("urn:ngsi-ld:避難所:2", Create(counter("urn:ngsi-ld:避難所:2", 2)))]
    )
    assert retried.ok
    assert await value(store, "urn:ngsi-ld:避難所:2") == 2


async def test_while_the_writer_is_replaced_the_store_says_why(store: SqliteStore) -> None:
    await store.write("", [("urn:c:1", lambda _: counter("urn:c:1"))])
    assert store.unavailable is None
    old = writer_pid(store)
    os.kill(old, signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 5
    while store.unavailable is None:  # until the death is noticed (a new one takes longer)
        assert isinstance(store._writer, ProcessWriter)
        assert store._writer.pid in (old, None), "replaced before the death was reported"
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    assert "writer process" in store.unavailable
    # a write sent meanwhile waits for the replacement rather than failing
    (result,) = await store.write("", [("urn:c:1", bump)])
    assert result.ok
    assert await value(store, "urn:c:1") == 1
    assert writer_pid(store) != old
    assert store.unavailable is None


async def test_requests_in_flight_when_the_writer_dies_are_all_settled_at_once(
    store: SqliteStore,
) -> None:
    # Many concurrent writes, the writer killed among them: every one ends (none waits
    # for an answer that will never come), each either stored or failed with 503, and
    # those that failed were not stored.
    old = writer_pid(store)
    eids = [f"urn:ngsi-ld:観測点:{i}" for i in range(400)]
    writes = [
        asyncio.ensure_future(store.write("", [(eid, Create(counter(eid, i)))]))
        for i, eid in enumerate(eids)
    ]
    await asyncio.sleep(0)  # let the first groups go out
    os.kill(old, signal.SIGKILL)
    done = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)
    failed = [eid for eid, d in zip(eids, done, strict=True) if isinstance(d, StoreUnavailable)]
    stored = [eid for eid, d in zip(eids, done, strict=True) if isinstance(d, list) and d[0].ok]
    assert len(failed) + len(stored) == len(eids)
    for eid in stored:
        assert await store.get_entity("", eid) is not None
    for eid in failed:
        assert await store.get_entity("", eid) is None
    await replaced(store, old)


def doc(n: int) -> bytes:
    return orjson.dumps(counter("urn:ngsi-ld:避難所:1", n))


def test_settle_tells_a_committed_group_from_its_chained_documents() -> None:
    # Two writes of one entity in one group chain 1 -> 2 -> 3; another entity is created.
    jobs = [
        Job("", [Item("urn:ngsi-ld:避難所:1", doc(1), [doc(2)])]),
        Job("", [Item("urn:ngsi-ld:避難所:1", doc(2), [doc(3)]), Item("urn:x", None, [doc(9)])]),
    ]
    committed = {("", "urn:ngsi-ld:避難所:1"): doc(3), ("", "urn:x"): doc(9)}
    assert settle(jobs, committed) == [[None], [None, None]]
    lost = {("", "urn:ngsi-ld:避難所:1"): doc(1), ("", "urn:x"): None}
    with pytest.raises(StoreUnavailable, match="nothing of it was written"):
        settle(jobs, lost)


def test_settle_reports_what_the_documents_cannot_tell() -> None:
    jobs = [
        Job("", [Item("urn:ngsi-ld:避難所:1", doc(1), [doc(2)]), Item("urn:x", None, [doc(9)])])
    ]
    # the two entities disagree (another server wrote one of them): unknown
    with pytest.raises(StoreUnavailable, match="outcome is unknown"):
        settle(jobs, {("", "urn:ngsi-ld:避難所:1"): doc(2), ("", "urn:x"): None})
    # committed, but one entity was changed since by another server: that one is unknown
    outcomes = settle(jobs, {("", "urn:ngsi-ld:避難所:1"): doc(5), ("", "urn:x"): doc(9)})
    assert isinstance(outcomes[0][0], Unknown)
    assert outcomes[0][1] is None
    # a group that was to write nothing (confirmations only) is not in doubt
    confirm = [Job("", [Item("urn:ngsi-ld:避難所:1", doc(1), []), Item("urn:x", None, [])])]
    stored = {("", "urn:ngsi-ld:避難所:1"): doc(1), ("", "urn:x"): doc(9)}
    assert settle(confirm, stored) == [[None, Conflict(doc(9))]]
