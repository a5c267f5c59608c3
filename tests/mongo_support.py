"""A MongoDB wire server for tests: mongoeco's in-memory engine behind its wire proxy.

No MongoDB server can be installed where the tests run, so the MongoDB backend is
driven through the real pymongo driver against ``mongoeco[wire]``. mongoeco needs
Python >= 3.13: a side virtualenv is built once with ``python3.13`` (found on PATH or
through pyenv) under ``~/.cache/renkei-mongoeco`` and reused. When no Python 3.13 is
found the tests that need the server are skipped, except in CI (``CI=true``), where
that is a failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from tests.support import free_port

SPEC = "mongoeco[wire]>=4.11"
CACHE = Path(os.environ.get("RENKEI_MONGOECO_HOME", Path.home() / ".cache" / "renkei-mongoeco"))
SERVER = Path(__file__).with_name("mongoeco_server.py")


class MongoecoUnavailable(RuntimeError):
    """No Python 3.13 to run mongoeco with."""


def _python313() -> list[str]:
    """A Python 3.13 interpreter: pyenv's (its real binary, so no shim needs selecting)
    or ``python3.13`` on PATH, whichever runs."""
    candidates: list[str] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        prefix = subprocess.run(
            [pyenv, "prefix", "3.13"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if prefix:
            candidates.append(str(Path(prefix, "bin", "python3.13")))
    found = shutil.which("python3.13")
    if found:
        candidates.append(found)
    env = {**os.environ, "PYENV_VERSION": "3.13"}
    check = "import sys; sys.exit(sys.version_info[:2] != (3, 13))"
    for candidate in candidates:
        ran = subprocess.run(
            [candidate, "-c", check], env=env, capture_output=True, check=False
        ).returncode
        if Path(candidate).exists() and ran == 0:
            return [candidate]
    raise MongoecoUnavailable("mongoeco needs python3.13, which is not installed")


def venv_python() -> Path:
    """The side virtualenv's interpreter, building the virtualenv on first use."""
    python = CACHE / "venv" / "bin" / "python"
    marker = CACHE / "venv" / f".installed-{SPEC}"
    if python.exists() and marker.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYENV_VERSION": "3.13"}
    subprocess.run([*_python313(), "-m", "venv", str(CACHE / "venv")], check=True, env=env)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SPEC],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode:
        raise RuntimeError(f"pip install {SPEC} failed:\n{pip.stderr[-3000:]}")
    marker.touch()
    return python


@contextmanager
def mongoeco_server() -> Iterator[str]:
    """A running wire server; yields its ``mongodb://`` URL (no database in it)."""
    python = venv_python()
    port = free_port()
    proc = subprocess.Popen(
        [str(python), "-I", str(SERVER), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"mongoeco did not start: {err[-2000:]}")
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def unavailable_is_failure() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class SharedServer:
    """One wire server for the whole test session, started on first use."""

    def __init__(self) -> None:
        self._server: AbstractContextManager[str] | None = None
        self._url: str | None = None

    def url(self, database: str) -> str:
        """A URL naming ``database`` on the shared server."""
        if self._url is None:
            server = mongoeco_server()
            self._url = server.__enter__()
            self._server = server
            atexit.register(self.stop)
        base, query = self._url.split("/?", 1)
        return f"{base}/{database}?{query}"

    def stop(self) -> None:
        if self._server is not None:
            server, self._server, self._url = self._server, None, None
            server.__exit__(None, None, None)


SHARED = SharedServer()
