"""IoT agent: what reaches the broker's history, and how fast, beside a bare subscriber.

Usage::

    .venv/bin/python bench/iot_agent.py [--rates N ...] [--duration S] [--devices N] [--qos 0 1]

Starts Mosquitto, ``renkei serve`` on a fresh SQLite file and ``renkei iot-agent``
(MQTT 5, shared subscription), then for each offered rate (1,000, 4,000 and 8,000
measures/s by default) and QoS 0 and 1 in turn, with a group and devices of their own:

* a publisher process plays ``--devices`` devices, each on its own MQTT connection,
  publishing the rate in total on ``/{apikey}/{device}/attrs`` for ``--duration``
  seconds; at QoS 1 each device has at most 20 messages waiting for their PUBACK, and
  only acknowledged messages count as published;
* a bare paho subscriber process on the same topics, with the agent's in-flight window,
  counts what it receives: the ceiling of what this Mosquitto delivers to one Python
  client on this machine;
* a probe device publishes a sequence number every 250 ms and the entity is read
  back with GET until it shows it: publish -> visible latency;
* once the agent has written its backlog, the broker is asked (temporal API,
  ``totalCount``) how many measures its history holds, and whether each device's
  current value is the last one it published.

Prints per run: measures published, measures in the broker's history, devices whose
current value is right, the bare subscriber's rate, p50/p95 latency, the agent's CPU
(share of one core) and peak RSS, and what Mosquitto dropped (QoS 0: a subscriber's
queue overflowing). Targets: history == published at QoS 1, every current value right,
p95 <= 1 s. ``--check`` exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
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

TARGET_P95 = 1.0
RATES = (1000.0, 4000.0, 8000.0)


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
    port: int, apikey: str, qos: int, rate: float, duration: float, devices: int
) -> tuple[int, float, list[int | None]]:
    loop = asyncio.get_running_loop()
    devs: list[Device] = []
    for d in range(devices):
        client_id = b"bench-dev%03d-%d" % (d, os.getpid())
        _, dev = await loop.create_connection(partial(Device, client_id), "127.0.0.1", port)
        await dev.connected
        devs.append(dev)
    topics = [_string(b"/%s/dev%03d/attrs" % (apikey.encode(), d)) for d in range(devices)]
    last: list[int | None] = [None] * devices
    sent, due, tick = 0, 0.0, 0.01
    start = next_tick = time.monotonic()
    while time.monotonic() - start < duration:
        due += rate * tick
        while sent < due:
            dev = devs[sent % devices]
            if qos and dev.inflight >= WINDOW:
                break  # this device waits for its PUBACKs: the measure goes out late
            dev.publish(topics[sent % devices], b'{"t":%d,"h":%d}' % (sent, sent % devices), qos)
            last[sent % devices] = sent
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
    return (sum(d.acked for d in devs) if qos else sent), seconds, last


def publisher(
    port: int, apikey: str, qos: int, rate: float, duration: float, devices: int, out: Any
) -> None:
    """``devices`` devices publishing ``rate`` measures/s in all; QoS 1 counts PUBACKs only."""
    count, seconds, last = asyncio.run(_publish(port, apikey, qos, rate, duration, devices))
    out.put(("published", count, seconds))
    out.put(("last", last, 0.0))


def bare_subscriber(
    port: int, apikey: str, qos: int, duration: float, ready: Any, out: Any
) -> None:
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
    client.subscribe(f"/{apikey}/+/attrs", qos)
    client.loop_start()
    time.sleep(duration + 10)
    client.disconnect()
    client.loop_stop()
    span = (last - first) if first is not None else 0.0
    out.put(("bare", count, span))


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    rate: float
    qos: int
    published: int
    seconds: float
    in_history: int
    devices: int
    current_right: int
    bare: int
    bare_seconds: float
    latencies: list[float]
    cpu: float  # share of one core, over the run
    rss_mb: float  # peak resident set of the agent so far
    mqtt_dropped: int

    @property
    def bare_rate(self) -> float:
        return self.bare / self.bare_seconds if self.bare_seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(p * len(values)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def history_total(hub: str, entity_type: str) -> int:
    """Instances of ``temperature`` the broker's history holds for entities of the type."""
    r = httpx.get(
        f"{hub}/ngsi-ld/v1/temporal/entities",
        params={
            "type": entity_type,
            "attrs": "temperature",
            "options": "aggregatedValues",
            "aggrMethods": "totalCount",
            "limit": 1000,
        },
        timeout=60,
    )
    r.raise_for_status()
    return sum(int(c[0]) for e in r.json() for c in e.get("temperature", {}).get("totalCount", []))


def current_values(hub: str, entity_type: str) -> dict[str, Any]:
    r = httpx.get(
        f"{hub}/ngsi-ld/v1/entities",
        params={"type": entity_type, "attrs": "temperature", "options": "keyValues", "limit": 1000},
        timeout=30,
    )
    r.raise_for_status()
    return {e["id"]: e.get("temperature") for e in r.json()}


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


def probe(
    mqtt_port: int,
    hub: str,
    apikey: str,
    entity_type: str,
    qos: int,
    stop: threading.Event,
    out: list[float],
) -> None:
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{apikey}")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    url = f"{hub}/ngsi-ld/v1/entities/urn:ngsi-ld:{entity_type}:probe"
    seq = 0
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            seq += 1
            t0 = time.monotonic()
            client.publish(f"/{apikey}/probe/attrs", b'{"seq":%d}' % seq, qos)
            while time.monotonic() - t0 < 10:
                r = http.get(url, params={"options": "keyValues", "attrs": "seq"})
                if r.status_code == 200 and r.json().get("seq", -1) >= seq:
                    out.append(time.monotonic() - t0)
                    break
                time.sleep(0.005)
            stop.wait(max(0.0, 0.25 - (time.monotonic() - t0)))
    client.disconnect()
    client.loop_stop()


def provision(agent: str, apikey: str, entity_type: str, devices: int) -> None:
    """A group and devices of the run's own, under a service path of their own (device ids
    are unique per service path)."""
    group = {
        "apikey": apikey,
        "entity_type": entity_type,
        "attributes": [{"object_id": "t", "name": "temperature", "type": "Number"}],
    }
    headers = {"fiware-servicepath": f"/{apikey}"}
    names = [{"device_id": f"dev{i:03d}"} for i in range(devices)] + [{"device_id": "probe"}]
    with httpx.Client(base_url=agent, headers=headers, timeout=30) as http:
        http.post("/iot/groups", json={"groups": [group]}).raise_for_status()
        http.post("/iot/devices", json={"devices": names}).raise_for_status()


def drain(agent: str, timeout: float = 120.0) -> None:
    """Wait until the agent holds nothing and has stopped storing (its backlog is written)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        stored = metric(agent, "measures_stored_total")
        if metric(agent, "buffered_measures") == 0 and stored == last:
            return
        last = stored
        time.sleep(1.0)


def run(
    mqtt_port: int, hub: str, agent: Server, rate: float, qos: int, args: argparse.Namespace
) -> Result:
    apikey = f"bench{rate:.0f}q{qos}"
    entity_type = f"BenchSensor{rate:.0f}Q{qos}"
    provision(agent.url, apikey, entity_type, args.devices)
    time.sleep(1)  # the entities created at provisioning are written
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Event()
    bare = ctx.Process(
        target=bare_subscriber, args=(mqtt_port, apikey, qos, args.duration, ready, out)
    )
    bare.start()
    ready.wait(10)
    mqtt_dropped0 = mosquitto_dropped(mqtt_port)
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(
        target=probe, args=(mqtt_port, hub, apikey, entity_type, qos, stop, latencies)
    )
    pub = ctx.Process(
        target=publisher, args=(mqtt_port, apikey, qos, rate, args.duration, args.devices, out)
    )
    cpu0, start = cpu_seconds(agent.proc.pid), time.monotonic()
    pub.start()
    prober.start()
    pub.join()
    seconds = time.monotonic() - start
    stop.set()
    prober.join()
    results: dict[str, tuple[Any, float]] = {}
    for _ in range(3):
        kind, count, span = out.get(timeout=args.duration + 30)
        results[kind] = (count, span)
    bare.join()
    drain(agent.url)
    cpu = (cpu_seconds(agent.proc.pid) - cpu0) / (time.monotonic() - start)
    last: list[int | None] = results["last"][0]
    current = current_values(hub, entity_type)
    right = sum(
        1
        for d, value in enumerate(last)
        if value is not None and current.get(f"urn:ngsi-ld:{entity_type}:dev{d:03d}") == value
    )
    return Result(
        rate=rate,
        qos=qos,
        published=results["published"][0],
        seconds=seconds,
        in_history=history_total(hub, entity_type),
        devices=sum(1 for v in last if v is not None),
        current_right=right,
        bare=results["bare"][0],
        bare_seconds=results["bare"][1],
        latencies=latencies,
        cpu=cpu,
        rss_mb=peak_rss_mb(agent.proc.pid),
        mqtt_dropped=mosquitto_dropped(mqtt_port) - mqtt_dropped0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=25.0, help="seconds per run")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=list(RATES), help="measures/s offered"
    )
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
            results = [
                run(mqtt.port, hub_server.url, agent_server, rate, qos, args)
                for rate in args.rates
                for qos in args.qos
            ]
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            if server.exited_early:
                print(f"--- {server.name} exited early:\n{server.log_tail()}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nIoT agent: {args.devices} devices, {args.duration:.0f} s per run, {machine()}\n")
    print(
        f"{'offered/s':>9} {'QoS':>3} {'published':>10} {'in history':>10} {'history %':>9} "
        f"{'current ok':>10} {'bare sub/s':>10} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'agent CPU':>9} {'RSS MB':>7} {'MQTT lost':>9}"
    )
    ok = True
    for res in results:
        share = res.in_history / res.published if res.published else 0.0
        print(
            f"{res.rate:9.0f} {res.qos:3d} {res.published:10d} {res.in_history:10d} "
            f"{share:9.1%} {res.current_right:>4d}/{res.devices:<5d} {res.bare_rate:10.0f} "
            f"{res.pct(0.5) * 1000:7.0f} {res.pct(0.95) * 1000:7.0f} {res.cpu:9.0%} "
            f"{res.rss_mb:7.0f} {res.mqtt_dropped:9d}"
        )
        ok = (
            ok
            and bool(res.latencies)
            and res.pct(0.95) <= TARGET_P95
            and (res.qos == 0 or res.in_history == res.published)
            and (res.qos == 0 or res.current_right == res.devices)
        )
    print(
        f"\ntargets: history == published at QoS 1 with every current value right, "
        f"p95 <= {TARGET_P95 * 1000:.0f} ms: {'met' if ok else 'MISSED'}"
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
