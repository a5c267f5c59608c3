"""NGSI-LD client libraries written against Orion-LD, against a running ``renkei serve``:
FiLiP's ``ContextBrokerLDClient`` (``filip_ld_flow.py``) and ngsildclient
(``ngsildclient_flow.py``) create, read, query (q, geo), batch, subscribe and delete,
with Japanese ids and values; each subscription's notification reaches a real receiver.

Each library runs in a virtualenv of its own, made from PyPI once: their pins clash with
ours and with each other (FiLiP: pydantic<2.14, paho-mqtt~=2.0; ngsildclient 0.5.2
pins its own older set).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.receiver import Receiver
from tests.support import broker, package_python, run_flow

FILIP = "filip==0.8.1"
NGSILDCLIENT = "ngsildclient==0.5.2"
HERE = Path(__file__).parent


def capacity_notified(receiver: Receiver, value: int) -> None:
    """The subscription the flow made notified the capacity change, in tenant komae."""

    def arrived(received: list[tuple[dict[str, str], object]]) -> bool:
        for headers, note in received:
            if not isinstance(note, dict) or headers.get("ngsild-tenant") != "komae":
                continue
            for entity in note.get("data", []):
                if entity.get("capacity", {}).get("value") == value:
                    assert entity["id"].startswith("urn:ngsi-ld:Shelter:狛江")
                    return True
        return False

    receiver.wait_for(arrived, timeout=10, what=f"the notification of capacity {value}")


@pytest.mark.filip
def test_filip_ld_client(tmp_path: Path, receiver: Receiver) -> None:
    python = package_python(FILIP)
    with broker(tmp_path / "hub.db") as url:
        out = run_flow(python, HERE / "filip_ld_flow.py", url, receiver.url)
    assert "filip ld flow ok" in out
    capacity_notified(receiver, 280)


@pytest.mark.ngsildclient
def test_ngsildclient(tmp_path: Path, receiver: Receiver) -> None:
    python = package_python(NGSILDCLIENT)
    with broker(tmp_path / "hub.db") as url:
        parts = urlsplit(url)
        out = run_flow(
            python,
            HERE / "ngsildclient_flow.py",
            str(parts.hostname),
            str(parts.port),
            receiver.url,
        )
    assert "ngsildclient flow ok" in out
    capacity_notified(receiver, 280)


@pytest.mark.ngsildclient
def test_ngsildclient_recognises_the_broker_and_queries_by_the_clauses(tmp_path: Path) -> None:
    """ngsildclient recognises the broker from ``/version`` (as Orion-LD), then queries
    with a dotted trailing path (clause 4.9), ``geoQ``, counts and pages through results."""
    python = package_python(NGSILDCLIENT)
    with broker(tmp_path / "hub.db") as url:
        parts = urlsplit(url)
        out = run_flow(
            python, HERE / "ngsildclient_version_flow.py", str(parts.hostname), str(parts.port)
        )
    assert "ngsildclient flow ok" in out
