"""Notification throughput and end-to-end latency over HTTP and MQTT, beside the receiver alone.

Usage::

    .venv/bin/python bench/notifications.py [--duration S] [--rate N] [--check]

Starts ``renkei serve`` on a fresh temporary SQLite store, Mosquitto, and two receivers,
each in its own process: an HTTP receiver (a minimal HTTP/1.1 server on asyncio streams)
and a paho MQTT subscriber. Both record, per notified entity, the ``seq`` value the write
put in the entity and the time the notification arrived. Then, for HTTP and for MQTT:

* receiver alone: the notification body the broker sent is blasted straight at the
  receiver (``wrk``, or a Python client if ``wrk`` is missing) or published straight to
  Mosquitto by a paho publisher process, for ``--duration`` seconds;
* for 1 and 100 subscriptions (``entities: [{"type": "Sensor"}]``, all matching):

  - throughput: batch upserts (``--batch`` entities per request, ``--concurrency``
    requests in flight) as fast as the broker takes them, held back only while more than
    a window of notifications is still on its way; notifications received per second,
    one per entity written and subscription (changes made while a subscription's
    previous notification is on its way go out together, in one request or message:
    ``msgs/s`` shows how many of those carried them);
  - latency: ``--rate`` single-entity PATCH requests per second; per notification, the
    time from the write's acknowledgement (its response, in the load generator) to the
    notification's arrival at the receiver; p50/p95/p99 over all notifications expected,
    the ones that never arrived counting as infinitely late. Also printed: the writes'
    own round trips (a load generator starved of CPU would read acknowledgements late and
    make notifications look early) and the time from a write's sending to its
    notifications' arrival (received ones only).

Prints a table with the targets (>= 1,000 notifications/s; p95 <= 100 ms at 100
writes/s). ``--check`` exits 1 if a target is missed; ``--py-spy PATH`` records the
broker during each measured run (collapsed stacks kept in the log directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import orjson
from harness import (
    BenchError,
    Server,
    free_port,
    hub,
    lua_string,
    machine,
    mosquitto,
    run_wrk,
    sqlite_store,
    stop_on_sigterm,
    warn_if_busy,
    wrk_path,
)
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

ENTITY_TYPE = "Sensor"
ID_PREFIX = f"urn:ngsi-ld:{ENTITY_TYPE}:bench-"
ENTITY_COUNT = 1000
ENTITIES = "/ngsi-ld/v1/entities"
CREATE = "/ngsi-ld/v1/entityOperations/create"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
SUBSCRIPTIONS = "/ngsi-ld/v1/subscriptions"
NOTIFY_PATH = "/notify"
TOPIC = "renkei/bench/notifications"
JSON_HEADERS = {"Content-Type": "application/json"}
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

# Targets from the acceptance text.
TARGET_RATE = 1000.0
TARGET_P95_MS = 100.0

# Receiver-alone clients: connections of the HTTP blaster, wrk threads.
BLAST_CONNECTIONS = 16


def entity(k: int) -> dict[str, Any]:
    """The entity written with sequence number ``k`` (ids cycle through ENTITY_COUNT)."""
    return {
        "id": f"{ID_PREFIX}{k % ENTITY_COUNT:04d}",
        "type": ENTITY_TYPE,
        "temperature": {"type": "Property", "value": 20 + k % 100 / 10, "unitCode": "CEL"},
        "seq": {"type": "Property", "value": k},
    }


# -- receivers (separate processes) ----------------------------------------------------------

# What a receiver hands back for one run: (seq values, arrival times, unreadable
# notifications, first raw request or message of the run or None, requests or messages).
Dump: TypeAlias = "tuple[array[int], array[float], int, bytes | None, int]"


class _Log:
    """Arrivals recorded by one receiver. ``counter`` (shared memory) counts the changes
    notified, one per entity in a notification's ``data``: the broker sends the changes
    that queued up while a subscription's previous notification was on its way together,
    so one request or message can carry several, and the writes expect one per entity
    written and subscription. ``messages`` counts the requests or messages themselves."""

    def __init__(self, counter: Any, *, mqtt: bool) -> None:
        self.counter = counter
        self.mqtt = mqtt
        self.seqs: array[int] = array("q")
        self.times: array[float] = array("d")
        self.errors = 0
        self.sample: bytes | None = None
        self.messages = 0

    def add(self, raw: bytes, body: bytes, at: float) -> None:
        changes = 1
        try:
            doc = orjson.loads(body)
            data = doc["body"]["data"] if self.mqtt else doc["data"]
            for ent in data:
                self.seqs.append(int(ent["seq"]["value"]))
                self.times.append(at)
            changes = max(1, len(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.errors += 1
        if self.sample is None:
            self.sample = raw
        self.messages += 1
        self.counter.value += changes

    def take(self) -> Dump:
        out = (self.seqs, self.times, self.errors, self.sample, self.messages)
        self.seqs, self.times, self.errors, self.sample = array("q"), array("d"), 0, None
        self.messages = 0
        return out


def http_receiver_main(port: int, counter: Any, conn: Connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_http_receiver(port, counter, conn))


async def _http_receiver(port: int, counter: Any, conn: Connection) -> None:
    log = _Log(counter, mqtt=False)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                    elif name == b"transfer-encoding":
                        writer.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                        return
                body = await reader.readexactly(length) if length else b""
                log.add(head + body, body, time.time())
                writer.write(HTTP_OK)
                if close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the receiver is stopping: end the connection quietly
        except ValueError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        finally:
            writer.close()
            with contextlib.suppress(Exception):  # a reset by the stopping broker
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    async def take() -> Dump:
        return log.take()

    def commands() -> None:
        # Blocking pipe reads and writes, off the event loop.
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                command = "stop"
            if command != "dump":
                break
            conn.send(asyncio.run_coroutine_threadsafe(take(), loop).result())
        loop.call_soon_threadsafe(finish)

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    threading.Thread(target=commands, daemon=True).start()
    conn.send("ready")
    try:
        await stop
    finally:
        server.close()


def mqtt_receiver_main(port: int, counter: Any, conn: Connection) -> None:
    log = _Log(counter, mqtt=True)
    lock = threading.Lock()
    subscribed = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-subscriber-{os.getpid()}")

    def on_connect(
        c: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        c.subscribe(TOPIC, 0)

    def on_subscribe(
        c: Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        subscribed.set()

    def on_message(c: Client, userdata: Any, msg: MQTTMessage) -> None:
        at = time.time()
        payload = bytes(msg.payload)
        with lock:
            log.add(payload, payload, at)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            conn.send("could not subscribe")
            return
        conn.send("ready")
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                break
            if command != "dump":
                break
            with lock:
                dump = log.take()
            conn.send(dump)
    finally:
        client.disconnect()
        client.loop_stop()


class Receiver:
    """A receiver process; ``count`` is the number of changes notified to it so far."""

    def __init__(self, name: str, target: Callable[[int, Any, Connection], None], port: int):
        ctx = mp.get_context("spawn")
        self.name = name
        self.port = port
        self._counter = ctx.RawValue("q", 0)
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=target, args=(port, self._counter, child), name=name, daemon=True
        )
        self.proc.start()
        child.close()
        if not self._conn.poll(30):
            self.stop()
            raise BenchError(f"{name} did not start")
        answer = self._conn.recv()
        if answer != "ready":
            self.stop()
            raise BenchError(f"{name}: {answer}")

    @property
    def count(self) -> int:
        value: int = self._counter.value
        return value

    def dump(self) -> Dump:
        """What arrived since the previous dump."""
        if not self.proc.is_alive():
            raise BenchError(f"{self.name} exited with {self.proc.exitcode}")
        self._conn.send("dump")
        if not self._conn.poll(60):
            raise BenchError(f"{self.name} did not answer")
        dump: Dump = self._conn.recv()
        return dump

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._conn.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._conn.close()


# -- receiver-alone clients (separate processes) ---------------------------------------------


def blast_main(port: int, request: bytes, duration: float, connections: int) -> None:
    """HTTP client for the receiver alone when wrk is missing: keep-alive POSTs, no parsing."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def one(deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()

    async def run() -> None:
        deadline = time.monotonic() + duration
        await asyncio.gather(*(one(deadline) for _ in range(connections)))

    asyncio.run(run())


def publish_main(port: int, payload: bytes, duration: float, sent: Any) -> None:
    """Publish ``payload`` (QoS 0) to TOPIC as fast as paho goes, for ``duration`` seconds."""
    connected = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{os.getpid()}")
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise SystemExit("publisher: no CONNACK")
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            info = None
            for _ in range(200):
                info = client.publish(TOPIC, payload, 0)
            sent.value += 200
            if info is not None:  # bounds paho's outgoing queue
                info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Throughput:
    writes: int  # entities written
    expected: int  # notifications expected (one per entity written and subscription)
    received: int
    seconds: float  # first write sent -> last notification received
    unreadable: int
    messages: int  # HTTP requests or MQTT messages that carried them

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def message_rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    writes: int
    write_seconds: float
    expected: int
    latencies: list[float]  # seconds, sorted; only the notifications received
    unreadable: int
    waited: float  # seconds waited for notifications after the last write
    messages: int  # HTTP requests or MQTT messages that carried them
    # seconds, sorted: each write's request sent -> acknowledgement read by the load
    # generator (a starved generator would read acknowledgements late and make
    # notifications look early), and write sent -> notification received
    write_times: list[float] = field(default_factory=list)
    from_sent: list[float] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.latencies)

    def pct(self, p: float) -> float:
        """Percentile over all expected notifications; the missing ones count as infinite."""
        if self.expected == 0:
            return math.nan
        idx = min(self.expected - 1, max(0, math.ceil(p * self.expected) - 1))
        return self.latencies[idx] if idx < len(self.latencies) else math.inf


@dataclass
class Scenario:
    transport: str
    subs: int
    throughput: Throughput | None = None
    latency: Latency | None = None
    alone: float | None = None  # receiver-alone rate of the same transport, same run

    @property
    def label(self) -> str:
        return f"{self.transport} {self.subs} sub{'s' if self.subs != 1 else ''}"

    def rate_ok(self) -> bool:
        return self.throughput is not None and self.throughput.rate >= TARGET_RATE

    def p95_ok(self) -> bool:
        return self.latency is not None and self.latency.pct(0.95) * 1000 <= TARGET_P95_MS


@dataclass
class Bench:
    duration: float
    rate: float
    batch: int
    concurrency: int
    tmp: Path
    py_spy: str | None = None
    mqtt_port: int = 0
    seq: int = 0
    profiles: list[Path] = field(default_factory=list)
    server: Server | None = None  # the broker of the current scenario

    @property
    def broker(self) -> Server:
        if self.server is None:
            raise BenchError("no broker running")
        return self.server

    @contextlib.contextmanager
    def fresh_broker(self, label: str) -> Iterator[Server]:
        """A broker on a new store for one scenario, seeded with the entities: a backlog
        of notifications left by one scenario never reaches the next."""
        name = label.replace(" ", "-")
        store = sqlite_store(self.tmp / f"{name}.db")
        try:
            with hub(self.tmp / f"broker-{name}.log", store) as self.server:
                self.seed()
                yield self.server
                if not self.server.alive():
                    raise BenchError(f"the broker exited during {label}")
        finally:
            self.server = None

    def next_seqs(self, n: int) -> range:
        out = range(self.seq, self.seq + n)
        self.seq += n
        return out

    # -- setup ---------------------------------------------------------------------------

    def seed(self) -> None:
        with httpx.Client(base_url=self.broker.url, timeout=30.0) as client:
            for start in range(0, ENTITY_COUNT, 100):
                body = orjson.dumps([entity(k) for k in range(start, start + 100)])
                resp = client.post(CREATE, content=body, headers=JSON_HEADERS)
                if resp.status_code != 201:
                    raise BenchError(f"seeding failed: {resp.status_code} {resp.text[:300]}")
        self.seq = ENTITY_COUNT

    def subscribe(self, transport: str, n: int, uri: str) -> list[str]:
        ids = [f"urn:ngsi-ld:Subscription:bench-{transport.lower()}-{i}" for i in range(n)]
        with httpx.Client(base_url=self.broker.url, timeout=30.0) as client:
            for sid in ids:
                sub = {
                    "id": sid,
                    "type": "Subscription",
                    "entities": [{"type": ENTITY_TYPE}],
                    "notification": {"endpoint": {"uri": uri, "accept": "application/json"}},
                }
                resp = client.post(SUBSCRIPTIONS, content=orjson.dumps(sub), headers=JSON_HEADERS)
                if resp.status_code != 201:
                    raise BenchError(f"creating {sid} failed: {resp.status_code} {resp.text[:300]}")
        return ids

    def probe(self, rx: Receiver, subs: int) -> bytes:
        """One write; waits for its ``subs`` notifications and returns the first one as received."""
        rx.dump()
        before = rx.count
        k = self.next_seqs(1)[0]
        with httpx.Client(base_url=self.broker.url, timeout=30.0) as client:
            _patch(client.patch, k)
        deadline = time.monotonic() + 15
        while rx.count - before < subs:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{rx.name}: {rx.count - before} of {subs} notifications of a probe write"
                )
            time.sleep(0.02)
        time.sleep(0.2)
        sample = rx.dump()[3]
        if sample is None:
            raise BenchError(f"{rx.name}: no sample notification")
        return sample

    @contextlib.contextmanager
    def profiled(self, label: str) -> Iterator[None]:
        if self.py_spy is None:
            yield
            return
        out = self.tmp / f"profile-{label.replace(' ', '-')}.txt"
        cmd = [
            self.py_spy,
            "record",
            "--pid",
            str(self.broker.proc.pid),
            "--duration",
            str(max(1, round(self.duration))),
            "--rate",
            "100",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(out),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        except BaseException:
            proc.kill()
            raise
        finally:
            try:
                proc.wait(timeout=self.duration + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if out.exists():
                self.profiles.append(out)

    # -- runs ----------------------------------------------------------------------------

    async def _drain(self, rx: Receiver, start: int, expected: int, cap: float) -> float:
        """Wait up to ``cap`` seconds for ``expected`` notifications in all; gives up after
        5 s without any arriving. Returns the seconds waited."""
        began = time.monotonic()
        last, changed = rx.count, began
        while rx.count - start < expected:
            now = time.monotonic()
            if now - changed > 5.0 or now - began > cap:
                break
            await asyncio.sleep(0.05)
            if rx.count != last:
                last, changed = rx.count, time.monotonic()
        return time.monotonic() - began

    async def throughput(self, rx: Receiver, subs: int) -> Throughput:
        rx.dump()
        start = rx.count
        # Notifications allowed on their way (a request's worth counts from its sending):
        # keeps the broker's backlog, and so the wait at the end, bounded.
        window = max(1000, self.batch * subs)
        expected = writes = 0
        limits = httpx.Limits(max_connections=self.concurrency)
        t0 = time.time()
        deadline = time.monotonic() + self.duration
        async with httpx.AsyncClient(
            base_url=self.broker.url, timeout=60.0, limits=limits
        ) as client:

            async def writer() -> None:
                nonlocal expected, writes
                while time.monotonic() < deadline:
                    if expected - (rx.count - start) > window:
                        await asyncio.sleep(0.002)
                        continue
                    expected += self.batch * subs
                    body = orjson.dumps([entity(k) for k in self.next_seqs(self.batch)])
                    resp = await client.post(
                        UPSERT, content=body, headers=JSON_HEADERS, params={"options": "update"}
                    )
                    if resp.status_code not in (201, 204):
                        raise BenchError(f"upsert: {resp.status_code} {resp.text[:300]}")
                    writes += self.batch

            await asyncio.gather(*(writer() for _ in range(self.concurrency)))
        await self._drain(rx, start, expected, cap=300.0)
        seqs, times, unreadable, _, messages = rx.dump()
        seconds = (max(times) - t0) if times else 0.0
        return Throughput(writes, expected, len(seqs), seconds, unreadable, messages)

    async def latency(self, rx: Receiver, subs: int) -> Latency:
        rx.dump()
        start = rx.count
        acked: dict[int, float] = {}
        sent_at: dict[int, float] = {}
        n = max(1, round(self.duration * self.rate))
        interval = 1.0 / self.rate
        inflight = asyncio.Semaphore(200)
        async with httpx.AsyncClient(base_url=self.broker.url, timeout=60.0) as client:

            async def one(k: int) -> None:
                async with inflight:
                    sent_at[k] = time.time()
                    await _apatch(client, k)
                    acked[k] = time.time()

            tasks: list[asyncio.Task[None]] = []
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(self.next_seqs(1)[0])))
            await asyncio.gather(*tasks)
            write_seconds = time.monotonic() - t0
        waited = await self._drain(rx, start, n * subs, cap=max(30.0, 3 * self.duration))
        seqs, times, unreadable, _, messages = rx.dump()
        lat = sorted(t - acked[s] for s, t in zip(seqs, times, strict=True) if s in acked)
        from_sent = sorted(t - sent_at[s] for s, t in zip(seqs, times, strict=True) if s in acked)
        write_times = sorted(acked[k] - sent_at[k] for k in acked)
        return Latency(
            n, write_seconds, n * subs, lat, unreadable, waited, messages, write_times, from_sent
        )

    def receiver_alone_http(self, rx: Receiver, sample: bytes) -> float:
        head, _, body = sample.partition(b"\r\n\r\n")
        link = next(
            (
                line.partition(b":")[2].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"link:")
            ),
            b"",
        )
        rx.dump()
        if wrk_path():
            script = self.tmp / "receiver-alone.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                f"wrk.body = {lua_string(body.decode())}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Link"] = {lua_string(link.decode())}\n'
            )
            run_wrk(
                f"http://127.0.0.1:{rx.port}{NOTIFY_PATH}",
                script,
                duration=self.duration,
                connections=BLAST_CONNECTIONS,
                timeout=self.duration + 60,
            )
        else:
            request = (
                f"POST {NOTIFY_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{rx.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
                + (b"Link: " + link + b"\r\n" if link else b"")
                + b"\r\n"
                + body
            )
            ctx = mp.get_context("spawn")
            proc_ = ctx.Process(
                target=blast_main, args=(rx.port, request, self.duration, BLAST_CONNECTIONS)
            )
            proc_.start()
            _join(proc_, self.duration + 60)
        times = rx.dump()[1]
        return _span_rate(times)

    def receiver_alone_mqtt(self, rx: Receiver, sample: bytes) -> float:
        rx.dump()
        ctx = mp.get_context("spawn")
        sent = ctx.RawValue("q", 0)
        proc = ctx.Process(target=publish_main, args=(self.mqtt_port, sample, self.duration, sent))
        proc.start()
        _join(proc, self.duration + 60)
        time.sleep(1.0)
        times = rx.dump()[1]
        if proc.exitcode != 0:
            raise BenchError(f"MQTT publisher exited with {proc.exitcode}")
        if len(times) < sent.value:
            print(
                f"  note: receiver alone got {len(times):,} of {sent.value:,} MQTT messages"
                " published (QoS 0)",
                flush=True,
            )
        return _span_rate(times)


def _patch_body(k: int) -> tuple[str, bytes]:
    ent = entity(k)
    return f"{ENTITIES}/{ent['id']}/attrs", orjson.dumps({"seq": ent["seq"]})


def _patch(send: Callable[..., httpx.Response], k: int) -> None:
    path, body = _patch_body(k)
    resp = send(path, content=body, headers=JSON_HEADERS)
    if resp.status_code != 204:
        raise BenchError(f"PATCH {path}: {resp.status_code} {resp.text[:300]}")


async def _apatch(client: httpx.AsyncClient, k: int) -> None:
    path, body = _patch_body(k)
    resp = await client.patch(path, content=body, headers=JSON_HEADERS)
    if resp.status_code != 204:
        raise BenchError(f"PATCH {path}: {resp.status_code} {resp.text[:300]}")


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))]


def _span_rate(times: array[float]) -> float:
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return len(times) / span if span > 0 else 0.0


def _join(proc: Any, timeout: float) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
        raise BenchError(f"{proc.name} did not finish in {timeout:.0f} s")


# -- report ----------------------------------------------------------------------------------


def _ms(seconds: float, waited: float = 0.0) -> str:
    """Milliseconds; infinite (never arrived) as more than the wait after the last write."""
    if math.isnan(seconds):
        return "-"
    return f">{waited:.0f}s" if math.isinf(seconds) else f"{seconds * 1000:.1f}"


def print_table(scenarios: list[Scenario], rate: float) -> bool:
    print()
    head = (
        f"{'scenario':<14} {'notif/s':>8} {'msgs/s':>8} {'receiver alone/s':>16} {'ratio':>6} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'missing':>7}  {'targets':<22}"
    )
    print(f"notifications/s: batch upserts; latency at {rate:g} writes/s (write ack -> received)")
    print(head)
    print("-" * len(head))
    missed = False
    for s in scenarios:
        t, lat = s.throughput, s.latency
        rate_s = f"{t.rate:,.0f}" if t else "-"
        msgs_s = f"{t.message_rate:,.0f}" if t else "-"
        alone = f"{s.alone:,.0f}" if s.alone else "-"
        ratio = f"{t.rate / s.alone:.0%}" if t and s.alone else "-"
        missing = (t.expected - t.received if t else 0) + (
            lat.expected - lat.received if lat else 0
        )
        p50, p95, p99 = (lat.pct(0.50), lat.pct(0.95), lat.pct(0.99)) if lat else (math.nan,) * 3
        waited = lat.waited if lat else 0.0
        rate_ok, p95_ok = s.rate_ok(), s.p95_ok()
        missed |= not (rate_ok and p95_ok)
        verdict = (
            f"rate {'yes' if rate_ok else 'NO'}, p95 {'yes' if p95_ok else 'NO'}"
            if t or lat
            else "not measured"
        )
        print(
            f"{s.label:<14} {rate_s:>8} {msgs_s:>8} {alone:>16} {ratio:>6} {_ms(p50, waited):>8} "
            f"{_ms(p95, waited):>8} {_ms(p99, waited):>8} {missing:>7}  {verdict:<22}"
        )
    print(
        f"\ntargets (>= {TARGET_RATE:,.0f} notifications/s, p95 <= {TARGET_P95_MS:g} ms): "
        f"{'all met' if not missed else 'MISSED'}"
    )
    return missed


# -- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path, scenarios: list[Scenario]) -> None:
    transports = ["HTTP", "MQTT"] if args.transport == "both" else [args.transport.upper()]
    bench = Bench(
        duration=args.duration,
        rate=args.rate,
        batch=args.batch,
        concurrency=args.concurrency,
        tmp=tmp,
        py_spy=args.py_spy,
    )
    with contextlib.ExitStack() as stack:
        receivers: dict[str, tuple[Receiver, str]] = {}
        if "HTTP" in transports:
            rport = free_port()
            rx = Receiver("HTTP receiver", http_receiver_main, rport)
            stack.callback(rx.stop)
            receivers["HTTP"] = (rx, f"http://127.0.0.1:{rport}{NOTIFY_PATH}")
        if "MQTT" in transports:
            mqtt = stack.enter_context(mosquitto(tmp))
            bench.mqtt_port = mqtt.port
            rx = Receiver("MQTT subscriber", mqtt_receiver_main, mqtt.port)
            stack.callback(rx.stop)
            receivers["MQTT"] = (rx, f"mqtt://127.0.0.1:{mqtt.port}/{TOPIC}")
        print(
            f"Renkei notification benchmark: {args.duration:g} s per run, batches of "
            f"{args.batch} x {args.concurrency} in flight, latency at {args.rate:g} writes/s, "
            f"{machine()}",
            flush=True,
        )
        for transport in transports:
            rx, uri = receivers[transport]
            alone: float | None = None
            for subs in args.subscriptions:
                s = Scenario(transport, subs)
                scenarios.append(s)
                with bench.fresh_broker(s.label):
                    bench.subscribe(transport, subs, uri)
                    sample = bench.probe(rx, subs)
                    if alone is None:
                        alone = (
                            bench.receiver_alone_http(rx, sample)
                            if transport == "HTTP"
                            else bench.receiver_alone_mqtt(rx, sample)
                        )
                        print(f"  {transport} receiver alone: {alone:,.0f}/s", flush=True)
                    s.alone = alone
                    with bench.profiled(f"{s.label}-throughput"):
                        t = s.throughput = asyncio.run(bench.throughput(rx, subs))
                    print(
                        f"  {s.label}: {t.rate:,.0f} notifications/s ({t.received:,} of "
                        f"{t.expected:,} in {t.seconds:.1f} s, {t.writes:,} entities written, "
                        f"{t.messages:,} {'requests' if transport == 'HTTP' else 'messages'})",
                        flush=True,
                    )
                    with bench.profiled(f"{s.label}-latency"):
                        lat = s.latency = asyncio.run(bench.latency(rx, subs))
                    print(
                        f"  {s.label}: {lat.writes / lat.write_seconds:.0f} writes/s, "
                        f"{lat.received:,} of {lat.expected:,} notifications in "
                        f"{lat.messages:,} {'requests' if transport == 'HTTP' else 'messages'} "
                        f"(waited {lat.waited:.1f} s after the last write), "
                        f"p50/p95 (ms) {_ms(lat.pct(0.5), lat.waited)}"
                        f"/{_ms(lat.pct(0.95), lat.waited)}; write sent -> acknowledged "
                        f"{_ms(_pct(lat.write_times, 0.5))}/{_ms(_pct(lat.write_times, 0.95))}, "
                        f"write sent -> notification received {_ms(_pct(lat.from_sent, 0.5))}"
                        f"/{_ms(_pct(lat.from_sent, 0.95))}",
                        flush=True,
                    )
                    if t.unreadable or lat.unreadable:
                        raise BenchError(f"{rx.name}: unreadable notifications")
                # A backlog left in the stopped broker must not count in the next scenario.
                rx.dump()
        if bench.profiles:
            print("\npy-spy profiles (collapsed stacks):")
            for path in bench.profiles:
                print(f"  {path}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Notification throughput and latency (HTTP, MQTT) vs the receiver alone."
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measured run (default 10)"
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="writes/s of the latency runs (default 100)"
    )
    parser.add_argument(
        "--batch", type=int, default=50, help="entities per batch upsert (default 50)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="batch upserts in flight (default 4)"
    )
    parser.add_argument(
        "--subscriptions",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 100],
        help="comma-separated subscription counts (default 1,100)",
    )
    parser.add_argument("--transport", choices=("http", "mqtt", "both"), default="both")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--py-spy", metavar="PATH", help="record the broker with this py-spy during each run"
    )
    args = parser.parse_args()
    if args.batch * args.concurrency > ENTITY_COUNT or min(args.subscriptions) < 1:
        parser.error(f"--batch x --concurrency must be <= {ENTITY_COUNT}, subscriptions >= 1")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")

    stop_on_sigterm()
    warn_if_busy()
    tmp = Path(tempfile.mkdtemp(prefix="renkei-bench-notify-"))
    scenarios: list[Scenario] = []
    failed: str | None = None
    try:
        run(args, tmp, scenarios)
    except KeyboardInterrupt:
        if scenarios:
            print_table(scenarios, args.rate)
        print("\ninterrupted; everything stopped", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 130
    except (BenchError, httpx.HTTPError, OSError, RuntimeError) as exc:
        failed = f"{type(exc).__name__}: {exc}"

    missed = print_table(scenarios, args.rate) if scenarios else True
    if failed is None:
        if args.py_spy is None:
            shutil.rmtree(tmp, ignore_errors=True)
        return 1 if (missed and args.check) else 0
    print(f"\nFAILED: {failed}", file=sys.stderr)
    logs = sorted(tmp.glob("broker-*.log"), key=lambda p: p.stat().st_mtime)
    if logs:
        log = logs[-1]
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        print(f"\n--- broker log, last lines ({log}) ---\n{tail}", file=sys.stderr)
    print(f"\nlogs kept in {tmp}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
