"""What every benchmark shares: ports, servers, health checks, load clients, result lines.

Each server runs on a free 127.0.0.1 port (``tests/support.py: free_port``). The hub, the
bare app and the IoT agent run from this source tree (``python -m``, in the repository
root), each with its output in a log file of the run's work folder and in a session of its
own: a Ctrl+C reaches the benchmark only, which then stops them in order. Such a server
counts as started once its health URL answers 200; if it exits first, the benchmark fails
at once with the end of its log.

* ``hub``, ``bare_app``, ``iot_agent``: ``renkei serve`` on a store URL (``sqlite_store``
  for a SQLite file, or a MongoDB URI), the bare FastAPI baseline (``bench/bare_app.py``)
  and ``renkei iot-agent``, each a context manager yielding a ``Server``;
* ``mosquitto``: the tests' Mosquitto, with ``$SYS`` published every second;
* ``mongoeco``: the tests' in-memory MongoDB wire server; ``mongo_server``: a given
  MongoDB server, else mongoeco; ``mongo_database``: a fresh database there, dropped
  afterwards;
* ``run_wrk``: the HTTP load generator (``wrk``, with a Lua script);
* ``beside``: a figure, its same-run baseline and their ratio, on one line.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import free_port as free_port  # noqa: E402  (re-exported)
from tests.support import wait_http  # noqa: E402
from tests.support_mqtt import MOSQUITTO, MqttBroker  # noqa: E402

HEALTH = "/health"


class BenchError(RuntimeError):
    """A benchmark cannot go on: a server failed, or an answer was wrong."""


# -- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process started by a benchmark, reachable at ``url``."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    exited_early: bool = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def gone(self, exc: Exception) -> BenchError:
        """The error for a refused connection, saying whether the server is still running."""
        code = self.proc.poll()
        if code is None:
            return BenchError(f"{exc} (the {self.name} is running but refuses connections)")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return BenchError(
            f"{exc}: the {self.name} {how} during the run (not stopped by this benchmark; "
            "is another program stopping its processes?)"
        )

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.exited_early = True
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_server(
    name: str, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Server:
    """Start ``cmd`` (not waiting for it); its output goes to ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env=None if env is None else {**os.environ, **env},
        )
    return Server(name, proc, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 30.0) -> None:
    """Wait until the server's health URL answers 200."""
    try:
        wait_http(server.url + HEALTH, timeout, proc=server.proc)
    except ChildProcessError:
        raise BenchError(
            f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
        ) from None
    except TimeoutError:
        raise BenchError(
            f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}"
        ) from None


@contextlib.contextmanager
def serving(
    name: str, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A started and healthy server, stopped afterwards."""
    server = start_server(name, cmd, port, log, env)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


# -- the servers the benchmarks measure ------------------------------------------------------


def sqlite_store(path: Path, writer: str = "process") -> str:
    """The store URL of a SQLite file; ``writer``: the store's writer in a process of its
    own (the default) or a thread of the serving process (``?writer=thread``)."""
    return f"sqlite:///{path}" + ("" if writer == "process" else f"?writer={writer}")


def hub_command(port: int, store: str, *extra: str) -> list[str]:
    """``renkei serve`` of this tree on ``store`` (a ``sqlite:///`` or ``mongodb://`` URL)."""
    return [
        sys.executable,
        "-m",
        "broker.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--store",
        store,
        *extra,
    ]


@contextlib.contextmanager
def hub(log: Path, store: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A running ``renkei serve`` on ``store``; ``extra`` are more ``serve`` options."""
    port = free_port()
    with serving("renkei serve", hub_command(port, store, *extra), port, log, env) as server:
        yield server


@contextlib.contextmanager
def bare_app(log: Path) -> Iterator[Server]:
    """``bench/bare_app.py``: FastAPI under uvicorn with ``renkei serve``'s settings, no work."""
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "bare_app.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serving("bare FastAPI", cmd, port, log) as server:
        yield server


@contextlib.contextmanager
def iot_agent(
    log: Path, mqtt_url: str, hub_url: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A running ``renkei iot-agent`` between ``mqtt_url`` and the hub at ``hub_url``."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "connectors.mqtt.cli",
        "iot-agent",
        "--port",
        str(port),
        "--mqtt-url",
        mqtt_url,
        "--broker-url",
        hub_url,
    ]
    with serving("IoT agent", cmd, port, log, env) as server:
        yield server


#: Mosquitto's ``max_queued_messages``, as the Helm chart's default.
MAX_QUEUED_MESSAGES = 100_000


class _Mosquitto(MqttBroker):
    """The tests' Mosquitto, publishing ``$SYS`` every second (the benchmarks read the
    count of dropped messages there), with the queue per client the Helm chart sets
    (``mqtt.mosquitto.maxQueuedMessages``): Mosquitto's default of 1000 drops QoS 1
    messages for a subscriber that falls behind by more."""

    def _write_config(self) -> Path:
        config = super()._write_config()
        with config.open("a") as f:
            f.write("sys_interval 1\n")
            f.write(f"max_queued_messages {MAX_QUEUED_MESSAGES}\n")
        return config


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[MqttBroker]:
    """A running Mosquitto on a free port (anonymous, no persistence)."""
    if not os.path.exists(MOSQUITTO):
        raise BenchError(f"Mosquitto is not installed ({MOSQUITTO}): apt-get install mosquitto")
    broker = _Mosquitto(workdir / "mosquitto")
    try:
        broker.start()
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(str(exc)) from None
    try:
        yield broker
    finally:
        broker.stop()


#: mongoeco answers nothing else while it works (a write's cost grows with the
#: collection), so its URL gives the driver minutes, not the hub's seconds: a slow write
#: must not look like a dead server (its connections would be dropped mid-operation).
MONGOECO_TIMEOUTS = "connectTimeoutMS=600000&socketTimeoutMS=600000"


@contextlib.contextmanager
def mongoeco() -> Iterator[str]:
    """The tests' mongoeco wire server (in-memory, pure Python); yields its URL."""
    from tests.mongo_support import mongoeco_server

    with mongoeco_server() as url:
        yield url + ("&" if "?" in url else "/?") + MONGOECO_TIMEOUTS


@contextlib.contextmanager
def mongo_server(url: str | None) -> Iterator[str]:
    """``url`` (a MongoDB server), or without one the tests' mongoeco for this run, whose
    figures check the path end to end but say nothing about MongoDB; yields the URL."""
    if url:
        yield url
        return
    print("mongoeco smoke run: the figures are not MongoDB's", flush=True)
    with mongoeco() as started:
        yield started


def with_database(url: str, database: str) -> str:
    """The server ``url`` naming ``database`` (its options kept)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}{sep}{query}"


def fresh_database(prefix: str) -> str:
    """A database name no earlier run used: ``prefix`` and a random suffix."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def mongo_database(server: str, database: str) -> Iterator[str]:
    """The URL of ``database`` on ``server``, dropped afterwards (also on failure)."""
    from pymongo import MongoClient

    try:
        yield with_database(server, database)
    finally:
        with contextlib.suppress(Exception):
            client: MongoClient[dict[str, object]] = MongoClient(server)
            client.drop_database(database)
            client.close()


# -- load client -----------------------------------------------------------------------------


def wrk_path() -> str | None:
    """``wrk`` if installed: a C load generator that leaves the CPU to the servers."""
    return shutil.which("wrk")


def lua_string(text: str) -> str:
    """``text`` as a Lua long string literal, whatever brackets it holds."""
    level = "=" * 4
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def run_wrk(
    url: str,
    script: Path,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    timeout: float | None = None,
) -> str:
    """One closed-loop ``wrk`` run driven by the Lua ``script``; returns its output.

    A connection refused by a server that answered its health check is retried after a
    pause (twice); any other failure raises BenchError.
    """
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
        if "unable to connect" not in proc.stderr:
            break
        print(f"  note: {proc.stderr.strip()}; retrying", file=sys.stderr, flush=True)
        time.sleep(1.0)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


# -- the machine and the run -----------------------------------------------------------------


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"


def busy_cpu_share(seconds: float = 1.0) -> float | None:
    """Share of CPU time used by anything on the machine over ``seconds`` (Linux only)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def warn_if_busy(threshold: float = 0.10) -> None:
    """Say so when the machine is already busy: other load skews the figures."""
    busy = busy_cpu_share()
    if busy is not None and busy > threshold:
        print(
            f"warning: the machine is {busy:.0%} busy before the run; other load skews the figures",
            file=sys.stderr,
        )


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """A SIGTERM stops the benchmark as a Ctrl+C does: servers stopped, partial results."""
    signal.signal(signal.SIGTERM, _sigterm)


# -- results ---------------------------------------------------------------------------------


def ratio(figure: float, baseline: float) -> float:
    return figure / baseline if baseline else float("nan")


def beside(
    label: str, figure: float, baseline_label: str, baseline: float, unit: str, fmt: str = ",.0f"
) -> str:
    """``label: figure unit beside baseline_label: baseline unit (ratio)``, one line."""
    return (
        f"{label}: {figure:{fmt}} {unit} beside {baseline_label}: {baseline:{fmt}} {unit} "
        f"({ratio(figure, baseline):.1%} of the baseline, same run)"
    )
