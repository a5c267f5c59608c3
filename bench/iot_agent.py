"""IoT agent throughput and latency, beside a bare paho subscriber in the same run.

Usage::

    .venv/bin/python bench/iot_agent.py [--duration S] [--rate N] [--devices N]

Starts Mosquitto, ``renkei serve`` on a fresh SQLite file and ``renkei iot-agent``
(MQTT 5, shared subscription), provisions a group, then for QoS 0 and QoS 1 in turn:

* a publisher process plays ``--devices`` devices, each on its own MQTT connection,
  publishing ``--rate`` measures/s in total on ``/{apikey}/{device}/attrs`` for
  ``--duration`` seconds; at QoS 1 each device has at most 20 messages waiting for their
  PUBACK, and only acknowledged messages count as published;
* a bare paho subscriber process on the same topics, with the agent's in-flight window,
  counts what it receives: the ceiling of what this Mosquitto delivers to one Python
  client on this machine;
* a probe device publishes a sequence number every 250 ms and the entity is read
  back with GET until it shows it: publish -> visible latency.

Prints measures/s stored in the broker (from the agent's ``/metrics``), the bare
subscriber's rate, their ratio, p50/p95 latency, measures the agent dropped, messages
Mosquitto dropped (a subscriber's queue overflowing), and the targets (>= 5,000 stored/s,
>= 50% of the bare rate, p95 <= 1 s). ``--check`` exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from harness import (
    BenchError,
    Server,
    hub,
    iot_agent,
    machine,
    mosquitto,
    sqlite_store,
    warn_if_busy,
)
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt.settings import get_settings

APIKEY = "bench"
ENTITY_TYPE = "BenchSensor"
TARGET_RATE = 5000.0
TARGET_RATIO = 0.5
TARGET_P95 = 1.0


# -- load generator and bare subscriber (separate processes) ---------------------------------
#
# The devices speak MQTT 3.1.1 straight on asyncio sockets: one connection and client id per
# device, QoS 1 PUBLISH packets with their packet ids, PUBACKs read back and counted. paho's
# client costs the load generator several times the CPU per message (and scans its whole
# in-flight table on every PUBACK), which on a small machine starves the agent and the bare
# subscriber it is measured against.

WINDOW = 20  # unacknowledged QoS 1 messages per device, paho's default max_inflight_messages


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _length(len(body)) + body


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


class Device(asyncio.Protocol):
    """One simulated device: its own MQTT connection, counting the PUBACKs it gets."""

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.WriteTransport | None = None
        self.inflight = 0
        self.acked = 0
        self.idle = asyncio.Event()  # no QoS 1 message waits for its PUBACK
        self._buf = b""
        self._mid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        connect = _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)  # clean, no ping
        transport.write(_packet(0x10, connect + _string(self.client_id)))

    def data_received(self, data: bytes) -> None:
        buf, i = self._buf + data, 0
        while i + 2 <= len(buf) and i + 2 + buf[i + 1] <= len(buf):  # CONNACK, PUBACK: short
            kind = buf[i] >> 4
            if kind == 4:  # PUBACK
                self.inflight -= 1
                self.acked += 1
                if not self.inflight:
                    self.idle.set()
            elif kind == 2 and not self.connected.done():  # CONNACK
                if buf[i + 3]:
                    self.connected.set_exception(ConnectionError(f"CONNACK {buf[i + 3]}"))
                else:
                    self.connected.set_result(None)
            i += 2 + buf[i + 1]
        self._buf = buf[i:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))

    def publish(self, topic: bytes, payload: bytes, qos: int) -> None:
        assert self.transport is not None
        if qos:
            self._mid = self._mid % 65535 + 1
            self.inflight += 1
            self.idle.clear()
            self.transport.write(_packet(0x32, topic + struct.pack("!H", self._mid) + payload))
        else:
            self.transport.write(_packet(0x30, topic + payload))


async def _publish(
    port: int, qos: int, rate: float, duration: float, devices: int
) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    devs: list[Device] = []
    for d in range(devices):
        client_id = b"bench-dev%03d-%d" % (d, os.getpid())
        _, dev = await loop.create_connection(partial(Device, client_id), "127.0.0.1", port)
        await dev.connected
        devs.append(dev)
    topics = [_string(b"/%s/dev%03d/attrs" % (APIKEY.encode(), d)) for d in range(devices)]
    sent, due, tick = 0, 0.0, 0.01
    start = next_tick = time.monotonic()
    while time.monotonic() - start < duration:
        due += rate * tick
        while sent < due:
            dev = devs[sent % devices]
            if qos and dev.inflight >= WINDOW:
                break  # this device waits for its PUBACKs: the measure goes out late
            dev.publish(topics[sent % devices], b'{"t":%d,"h":%d}' % (sent, sent % devices), qos)
            sent += 1
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    seconds = time.monotonic() - start
    if qos:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(d.idle.wait() for d in devs if d.inflight))
    for dev in devs:
        assert dev.transport is not None
        dev.transport.write(b"\xe0\x00")  # DISCONNECT
        dev.transport.close()
    return (sum(d.acked for d in devs) if qos else sent), seconds


def publisher(port: int, qos: int, rate: float, duration: float, devices: int, out: Any) -> None:
    """``devices`` devices publishing ``rate`` measures/s in all; QoS 1 counts PUBACKs only."""
    count, seconds = asyncio.run(_publish(port, qos, rate, duration, devices))
    out.put(("published", count, seconds))


def bare_subscriber(port: int, qos: int, duration: float, ready: Any, out: Any) -> None:
    count = 0
    first: float | None = None
    last = 0.0

    def on_message(c: Client, userdata: Any, msg: MQTTMessage) -> None:
        nonlocal count, first, last
        last = time.monotonic()
        if first is None:
            first = last
        count += 1

    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-bare-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    # The agent's in-flight window (its MQTT 5 receive maximum), so that both subscribers get
    # the same flow control from Mosquitto: without it Mosquitto sends a client 20 QoS 1
    # messages at a time, and drops what overflows its queue of 1,000 behind them.
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = min(get_settings().iota_buffer, 65535)
    client.connect("127.0.0.1", port, properties=properties)
    client.subscribe(f"/{APIKEY}/+/attrs", qos)
    client.loop_start()
    time.sleep(duration + 10)
    client.disconnect()
    client.loop_stop()
    span = (last - first) if first is not None else 0.0
    out.put(("bare", count, span))


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    qos: int
    published: int
    seconds: float
    stored: int
    bare: int
    bare_seconds: float
    latencies: list[float]
    dropped: int
    mqtt_dropped: int

    @property
    def stored_rate(self) -> float:
        return self.stored / self.seconds

    @property
    def bare_rate(self) -> float:
        return self.bare / self.bare_seconds if self.bare_seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(p * len(values)))]


def metric(agent: str, name: str) -> int:
    text = httpx.get(f"{agent}/metrics", timeout=5).text
    return sum(
        int(float(v)) for v in re.findall(rf"^renkei_iota_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def mosquitto_dropped(port: int) -> int:
    """Messages Mosquitto dropped so far (a subscriber's queue full), from ``$SYS``."""
    got: list[int] = []
    done = threading.Event()

    def on_message(c: Client, userdata: Any, msg: MQTTMessage) -> None:
        got.append(int(msg.payload))
        done.set()

    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{os.getpid()}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("$SYS/broker/publish/messages/dropped")
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()
    return got[0] if got else 0


def probe(mqtt_port: int, hub: str, qos: int, stop: threading.Event, out: list[float]) -> None:
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{qos}")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    url = f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:{ENTITY_TYPE}:probe"
    seq = 0
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            seq += 1
            t0 = time.monotonic()
            client.publish(f"/{APIKEY}/probe/attrs", b'{"seq":%d}' % seq, qos)
            while time.monotonic() - t0 < 10:
                r = http.get(url, params={"options": "keyValues", "attrs": "seq"})
                if r.status_code == 200 and r.json().get("seq", -1) >= seq:
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.005)
            stop.wait(max(0.0, 0.25 - (time.monotonic() - t0)))
    client.disconnect()
    client.loop_stop()


def run(mqtt_port: int, hub: str, agent: str, qos: int, args: argparse.Namespace) -> Result:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Event()
    bare = ctx.Process(target=bare_subscriber, args=(mqtt_port, qos, args.duration, ready, out))
    bare.start()
    ready.wait(10)
    stored0, dropped0 = metric(agent, "measures_stored_total"), metric(agent, "dropped_total")
    mqtt_dropped0 = mosquitto_dropped(mqtt_port)
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(mqtt_port, hub, qos, stop, latencies))
    pub = ctx.Process(
        target=publisher, args=(mqtt_port, qos, args.rate, args.duration, args.devices, out)
    )
    start = time.monotonic()
    pub.start()
    prober.start()
    pub.join()
    seconds = time.monotonic() - start
    stored = metric(agent, "measures_stored_total") - stored0
    stop.set()
    prober.join()
    results = {}
    for _ in range(2):
        kind, count, span = out.get(timeout=args.duration + 30)
        results[kind] = (count, span)
    bare.join()
    # let the backlog drain before the next run
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric(agent, "buffered_measures") > 0:
        time.sleep(0.2)
    return Result(
        qos=qos,
        published=results["published"][0],
        seconds=seconds,
        stored=stored,
        bare=results["bare"][0],
        bare_seconds=results["bare"][1],
        latencies=latencies,
        dropped=metric(agent, "dropped_total") - dropped0,
        mqtt_dropped=mosquitto_dropped(mqtt_port) - mqtt_dropped0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=8000.0, help="measures/s published")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--qos", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    warn_if_busy(0.25)
    work = Path(tempfile.mkdtemp(prefix="renkei-bench-iota-"))
    env = {"RENKEI_LOG_LEVEL": "warning", "RENKEI_IOTA_DB": str(work / "iota.db")}
    servers: list[Server] = []
    try:
        with ExitStack() as stack:
            mqtt = stack.enter_context(mosquitto(work))
            hub_server = stack.enter_context(
                hub(work / "hub.log", sqlite_store(work / "hub.db"), env=env)
            )
            agent_server = stack.enter_context(
                iot_agent(work / "agent.log", mqtt.url, hub_server.url, env)
            )
            servers += [hub_server, agent_server]
            hub_url, agent = hub_server.url, agent_server.url
            group = {
                "apikey": APIKEY,
                "entity_type": ENTITY_TYPE,
                "attributes": [{"object_id": "t", "name": "temperature", "type": "Number"}],
            }
            r = httpx.post(f"{agent}/iot/groups", json={"groups": [group]})
            r.raise_for_status()
            devices = [{"device_id": f"dev{i:03d}"} for i in range(args.devices)]
            r = httpx.post(
                f"{agent}/iot/devices", json={"devices": [*devices, {"device_id": "probe"}]}
            )
            r.raise_for_status()
            time.sleep(1)
            results = [run(mqtt.port, hub_url, agent, qos, args) for qos in args.qos]
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            if server.exited_early:
                print(f"--- {server.name} exited early:\n{server.log_tail()}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nIoT agent: {args.devices} devices, {args.rate:.0f} measures/s offered, "
        f"{args.duration:.0f} s per run, {machine()}\n"
    )
    print(
        f"{'run':6} {'published/s':>12} {'stored/s':>10} {'bare sub/s':>11} {'stored/bare':>12} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'probes':>7} {'dropped':>8} {'MQTT lost':>9}"
    )
    ok = True
    for res in results:
        ratio = res.stored_rate / res.bare_rate if res.bare_rate else 0.0
        print(
            f"QoS {res.qos:<2} {res.published / res.seconds:12.0f} {res.stored_rate:10.0f} "
            f"{res.bare_rate:11.0f} {ratio:12.0%} {res.pct(0.5) * 1000:8.0f} "
            f"{res.pct(0.95) * 1000:8.0f} {len(res.latencies):7d} {res.dropped:8d} {res.mqtt_dropped:9d}"
        )
        ok = (
            ok
            and res.stored_rate >= TARGET_RATE
            and ratio >= TARGET_RATIO
            and res.pct(0.95) <= TARGET_P95
        )
    print(
        f"\ntargets: >= {TARGET_RATE:.0f} stored/s, >= {TARGET_RATIO:.0%} of the bare subscriber, "
        f"p95 <= {TARGET_P95 * 1000:.0f} ms: {'met' if ok else 'MISSED'}"
    )
    if results and statistics.mean(len(r.latencies) for r in results) == 0:
        ok = False
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
