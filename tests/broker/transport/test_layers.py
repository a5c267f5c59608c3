"""The transport is a leaf, and with the access-control package (and the errors it
raises), the outbound policy and the query language, it is all that ``connectors/`` takes
from the broker (through ``broker.shared``; ``tests/test_layers.py`` holds them to it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def broker_imports(folder: Path) -> dict[str, set[str]]:
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = {n for n in imported(path) if n == "broker" or n.startswith("broker.")}
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def test_the_transport_imports_no_other_broker_package() -> None:
    found = broker_imports(ROOT / "broker" / "transport")
    assert found == {}


def test_the_agent_loads_no_broker_internals() -> None:
    code = (
        "import sys, connectors.mqtt.app, connectors.mqtt.cli, connectors.csv.cli;"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('broker'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    assert [
        m for m in out if not m.startswith(("broker.auth", "broker.query", "broker.model"))
    ] == [
        "broker",
        "broker.errors",
        "broker.outbound",
        "broker.shared",
        "broker.transport",
        "broker.transport.mqtt",
    ]


def test_access_control_imports_nothing_else_from_the_broker() -> None:
    """``broker.auth`` is what the agent shares with the broker: it must stay a leaf
    (besides the errors), or the agent would load the broker's internals through it."""
    found = broker_imports(ROOT / "broker" / "auth")
    outside = {
        path: names
        for path, names in found.items()
        if any(not n.startswith(("broker.auth", "broker.errors")) for n in names)
    }
    assert outside == {}


def test_the_query_language_reaches_no_service_or_store() -> None:
    """What the agent takes of the query language must stay leaves (besides the errors),
    or the agent would load the broker's services or stores through it."""
    found = {
        **broker_imports(ROOT / "broker" / "query"),
        **broker_imports(ROOT / "broker" / "model"),
    }
    outside = {
        path: names
        for path, names in found.items()
        if any(not n.startswith(("broker.query", "broker.model", "broker.errors")) for n in names)
    }
    assert outside == {}
