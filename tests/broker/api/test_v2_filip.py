"""FiLiP, the FIWARE Python client Japanese city platforms use, against a running broker:
entities, attribute values, queries and batches over NGSI v2 (``filip_flow.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.receiver import Receiver
from tests.support import broker, package_python, run_flow

FILIP = "filip==0.8.1"
FLOW = Path(__file__).with_name("filip_flow.py")


@pytest.fixture(scope="session")
def filip_python() -> Path:
    """A virtualenv with FiLiP (its pins clash with ours: paho-mqtt~=2.0, PyLD~=2.0,
    pydantic<2.14). Made once under ``~/.cache/renkei-filip`` (``RENKEI_FILIP_HOME``)."""
    return package_python(FILIP)


@pytest.mark.filip
def test_filip_flow(filip_python: Path, tmp_path: Path, receiver: Receiver) -> None:
    with broker(tmp_path / "hub.db") as url:
        out = run_flow(filip_python, FLOW, url, receiver.url)
    assert "filip flow ok" in out
    # the subscription FiLiP made notified the creation and the change, nothing once inactive
    received = receiver.wait(2)
    receiver.quiet(2)
    (h1, first), (_, second) = received
    assert h1["ngsiv2-attrsformat"] == "normalized"
    assert (h1["fiware-service"], h1["fiware-servicepath"]) == ("komae", "/subs")
    assert first["data"][0]["name"]["value"] == "狛江第一小学校"
    assert [n["data"][0]["capacity"]["value"] for n in (first, second)] == [300, 350]
