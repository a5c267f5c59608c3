"""ngsildclient, an NGSI-LD client written for Orion-LD, against a running broker: it
recognises the broker from ``/version``, creates, reads, queries (q, a dotted trailing
path, ``geoQ``), counts, pages and batch-deletes (``ngsildclient_flow.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import broker

NGSILDCLIENT = "ngsildclient==0.5.2"
FLOW = Path(__file__).with_name("ngsildclient_flow.py")


@pytest.fixture(scope="session")
def ngsildclient_python() -> Path:
    """A virtualenv with ngsildclient (its pins clash with ours). Made once under
    ``~/.cache/renkei-ngsildclient`` (``RENKEI_NGSILDCLIENT_HOME``)."""
    home = Path(
        os.environ.get("RENKEI_NGSILDCLIENT_HOME", Path.home() / ".cache" / "renkei-ngsildclient")
    )
    version = NGSILDCLIENT.split("==")[1]
    venv = home / f"venv-{version}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    marker = venv / f".{NGSILDCLIENT}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, NGSILDCLIENT],
            check=True,
            timeout=900,
        )
        marker.touch()
    return python


@pytest.mark.ngsildclient
def test_ngsildclient_flow(ngsildclient_python: Path, tmp_path: Path) -> None:
    with broker(tmp_path / "hub.db") as url:
        host, port = url.removeprefix("http://").split(":")
        run = subprocess.run(
            [str(ngsildclient_python), str(FLOW), host, port],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))},
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ngsildclient flow ok" in run.stdout
