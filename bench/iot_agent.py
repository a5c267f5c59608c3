"""IoT agent throughput and latency, beside a bare paho subscriber in the same run.

Usage::

    .venv/bin/python bench/iot_agent.py [--duration S] [--rate N] [--devices N]

Starts Mosquitto, ``renkei serve`` on a fresh SQLite file and ``renkei iot-agent``
(MQTT 5, shared subscription), provisions a group, then for QoS 0 and QoS 1 in turn:

* a publisher process plays ``--devices`` devices publishing ``--rate`` measures/s
  in total on ``/{apikey}/{device}/attrs`` for ``--duration`` seconds;
* a bare paho subscriber process on the same topics counts what it receives: the
  ceiling of what this Mosquitto delivers to one Python client on this machine;
* a probe device publishes a sequence number every 250 ms and the entity is read
  back with GET until it shows it: publish -> visible latency.

Prints measures/s stored in the broker (from the agent's ``/metrics``), the bare
subscriber's rate, their ratio, p50/p95 latency, and the targets (>= 5,000 stored/s,
>= 50% of the bare rate, p95 <= 1 s). ``--check`` exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

APIKEY = "bench"
ENTITY_TYPE = "BenchSensor"
TARGET_RATE = 5000.0
TARGET_RATIO = 0.5
TARGET_P95 = 1.0
MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15, 143):
                log.seek(0)
                print(f"--- {args[2:4]} exited {proc.returncode}:", log.read().decode()[-3000:])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


# -- load generator and bare subscriber (separate processes) ---------------------------------


def publisher(port: int, qos: int, rate: float, duration: float, devices: int, out: Any) -> None:
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = 0
    start = time.monotonic()
    tick = 0.01
    per_tick = rate * tick
    due = 0.0
    while (now := time.monotonic()) - start < duration:
        due += per_tick
        while sent < due:
            dev = sent % devices
            body = b'{"t":%d,"h":%d}' % (sent, dev)
            client.publish(f"/{APIKEY}/dev{dev:03d}/attrs", body, qos)
            sent += 1
        sleep = start + (now - start) + tick - time.monotonic()
        if sleep > 0:
            time.sleep(sleep)
    client.disconnect()
    client.loop_stop()
    out.put(("published", sent, time.monotonic() - start))


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
    client.connect("127.0.0.1", port)
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
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=8000.0, help="measures/s published")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--qos", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(MOSQUITTO):
        print("Mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: the machine is not idle, figures will be low")
    work = Path(tempfile.mkdtemp(prefix="renkei-bench-iota-"))
    mqtt_port, hub_port, agent_port = free_port(), free_port(), free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    hub, agent = f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{agent_port}"
    env = {
        **os.environ,
        "RENKEI_LOG_LEVEL": "warning",
        "RENKEI_IOTA_DB": str(work / "iota.db"),
    }
    try:
        with ExitStack() as stack:
            stack.enter_context(process([MOSQUITTO, "-c", str(conf)]))
            wait_port(mqtt_port)
            stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "broker.cli",
                        "serve",
                        "--port",
                        str(hub_port),
                        "--store",
                        f"sqlite:///{work / 'hub.db'}",
                    ],
                    env,
                )
            )
            wait_http(f"{hub}/health")
            stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "connectors.mqtt.cli",
                        "--port",
                        str(agent_port),
                        "--mqtt-url",
                        f"mqtt://127.0.0.1:{mqtt_port}",
                        "--broker-url",
                        hub,
                    ],
                    env,
                )
            )
            wait_http(f"{agent}/health")
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
            results = [run(mqtt_port, hub, agent, qos, args) for qos in args.qos]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nIoT agent: {args.devices} devices, {args.rate:.0f} measures/s offered, "
        f"{args.duration:.0f} s per run, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
    )
    print(
        f"{'run':6} {'published/s':>12} {'stored/s':>10} {'bare sub/s':>11} {'stored/bare':>12} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'probes':>7} {'dropped':>8}"
    )
    ok = True
    for res in results:
        ratio = res.stored_rate / res.bare_rate if res.bare_rate else 0.0
        print(
            f"QoS {res.qos:<2} {res.published / res.seconds:12.0f} {res.stored_rate:10.0f} "
            f"{res.bare_rate:11.0f} {ratio:12.0%} {res.pct(0.5) * 1000:8.0f} "
            f"{res.pct(0.95) * 1000:8.0f} {len(res.latencies):7d} {res.dropped:8d}"
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
