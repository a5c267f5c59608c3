"""FiLiP, the FIWARE Python client Japanese city platforms use, against a running broker:
entities, attribute values, queries and batches over NGSI v2 (``filip_flow.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.receiver import Receiver
from tests.support import broker

FILIP = "filip==0.8.1"
FLOW = Path(__file__).with_name("filip_flow.py")


@pytest.fixture(scope="session")
def filip_python() -> Path:
    """A virtualenv with FiLiP (its pins clash with ours: paho-mqtt~=2.0, PyLD~=2.0,
    pydantic<2.14). Made once under ``~/.cache/renkei-filip`` (``RENKEI_FILIP_HOME``)."""
    home = Path(os.environ.get("RENKEI_FILIP_HOME", Path.home() / ".cache" / "renkei-filip"))
    venv = home / f"venv-{FILIP.split('==')[1]}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    marker = venv / f".{FILIP}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", FILIP],
            check=True,
            timeout=900,
        )
        marker.touch()
    return python


@pytest.mark.filip
def test_filip_flow(filip_python: Path, tmp_path: Path, receiver: Receiver) -> None:
    with broker(tmp_path / "hub.db") as url:
        run = subprocess.run(
            [str(filip_python), str(FLOW), url, receiver.url],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))},
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "filip flow ok" in run.stdout
    # the subscription FiLiP made notified the creation and the change, nothing once inactive
    received = receiver.wait(2)
    receiver.quiet(2)
    (h1, first), (_, second) = received
    assert h1["ngsiv2-attrsformat"] == "normalized"
    assert (h1["fiware-service"], h1["fiware-servicepath"]) == ("komae", "/subs")
    assert first["data"][0]["name"]["value"] == "狛江第一小学校"
    assert [n["data"][0]["capacity"]["value"] for n in (first, second)] == [300, 350]
