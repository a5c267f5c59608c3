"""Helpers for tests that run real processes: free ports, a broker subprocess.

``free_port`` and ``wait_http`` are also the benchmarks' (``bench/harness.py``).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    Client sockets (this process's, and any other program's) take their local ports from
    the ephemeral range, so a port picked there can be taken again before the server
    binds it; one from 20000-31999 cannot be taken that way.
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def eventually(
    check: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Wait until ``check()`` holds (looked at every 20 ms); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.02)


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until ``url`` answers 200; stop waiting at once if ``proc`` has exited.

    Raises TimeoutError after ``timeout`` seconds, ChildProcessError when ``proc`` exits.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ChildProcessError(f"exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def start_broker(db: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``renkei serve`` on a SQLite file; the caller stops (or kills) it."""
    env = {**os.environ, "RENKEI_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--port",
            str(port),
            "--store",
            f"sqlite:///{db}",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
    except (TimeoutError, ChildProcessError):
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(
            f"broker did not start: {err.decode(errors='replace')[-2000:]}"
        ) from None
    return proc


@contextmanager
def broker(db: Path, *extra: str) -> Iterator[str]:
    """A running broker subprocess; yields its base URL and stops it afterwards."""
    port = free_port()
    proc = start_broker(db, port, *extra)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def package_python(requirement: str) -> Path:
    """The interpreter of a virtualenv holding ``requirement`` (``name==version``), for a
    client library or checker whose pins clash with ours. Made once from PyPI under
    ``~/.cache/renkei-<name>`` (``RENKEI_<NAME>_HOME``) and reused."""
    name, version = requirement.split("==")
    home = Path(
        os.environ.get(f"RENKEI_{name.upper()}_HOME", Path.home() / ".cache" / f"renkei-{name}")
    )
    venv = home / f"venv-{version}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    marker = venv / f".{requirement}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, requirement], check=True, timeout=900)
        marker.touch()
    return python


def run_flow(python: Path, script: Path, *args: str) -> str:
    """Run ``script`` with ``python`` (a :func:`package_python`), outside this test
    session's environment; its output, once it has exited 0."""
    run = subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
