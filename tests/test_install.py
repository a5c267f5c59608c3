"""``pip install`` of the built distribution serves the map: the wheel carries MapLibre.

The wheel is built the way a user or a packager does (``pip wheel`` of a clean copy of the
sources, without the viewer's built files), installed with ``--no-deps`` into a fresh
virtualenv whose dependencies come from the test environment's site-packages (a ``.pth``
line, so nothing is downloaded), and ``renkei serve`` is started from that virtualenv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, wait_http

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENDOR = Path("broker") / "static" / "viewer" / "vendor"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the test run's own sources on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def copy_sources(dest: Path) -> Path:
    """The project's files as a fresh clone has them: no built viewer, no node_modules."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if not src.is_file():  # deleted in the work tree
            continue
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode)
    assert not (dest / VENDOR).exists()
    return dest


def build_wheel(source: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(out)],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_an_installed_wheel_serves_the_map(tmp_path: Path) -> None:
    source = copy_sources(tmp_path / "src")
    built = build_wheel(source, tmp_path / "dist", clean_env())
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("renkei-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies, already installed for the tests (not Renkei itself: its editable
    # hook there is a .pth file, which a .pth line does not run)
    (Path(purelib) / "renkei-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import broker; print(broker.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(purelib), where  # the installed copy, not the sources

    (tmp_path / "狛江").mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "renkei"),
            "serve",
            "--port",
            str(port),
            "--store",
            f"sqlite:///{tmp_path / '狛江' / 'hub.db'}",
        ],
        cwd=tmp_path,
        env=clean_env(RENKEI_LOG_LEVEL="warning"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=60, proc=proc)
        page = httpx.get(f"{url}/viewer")
        assert page.status_code == 200, page.text
        assert "/viewer/vendor/maplibre-gl.js" in page.text
        bundle = httpx.get(f"{url}/viewer/vendor/maplibre-gl.js")
        assert bundle.status_code == 200
        assert len(bundle.content) > 100_000
        assert httpx.get(f"{url}/viewer/vendor/maplibre-gl.css").status_code == 200
        assert httpx.get(f"{url}/viewer/viewer.js").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_without_npm_the_wheel_build_stops_and_says_why(tmp_path: Path) -> None:
    source = copy_sources(tmp_path / "src")
    empty = tmp_path / "bin"
    empty.mkdir()
    built = build_wheel(source, tmp_path / "dist", clean_env(PATH=str(empty)))
    assert built.returncode != 0
    out = built.stdout + built.stderr
    assert (
        "the map viewer (broker/static/viewer/vendor/) is not built and npm is not available" in out
    )
    assert "npm もないため" in out
    assert not list((tmp_path / "dist").glob("*.whl"))
