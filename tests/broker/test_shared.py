"""``broker.shared``, the contract between the hub and its connectors: every name it
lists is the broker's own object (no copy), and a user loads only the modules of the
names it takes."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import broker.shared as shared

ROOT = Path(__file__).resolve().parents[2]


def imported_for_type_checkers() -> dict[str, str]:
    """name -> module of the imports ``broker/shared.py`` makes for type checkers."""
    tree = ast.parse((ROOT / "broker" / "shared.py").read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name: node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("broker.")
        for alias in node.names
    }


def test_type_checkers_and_the_running_program_see_the_same_names() -> None:
    assert sorted(shared.__all__) == sorted(imported_for_type_checkers())
    assert imported_for_type_checkers() == shared._HOME


@pytest.mark.parametrize("name", shared.__all__)
def test_every_name_is_the_brokers_own_object(name: str) -> None:
    home = importlib.import_module(shared._HOME[name])
    assert getattr(shared, name) is getattr(home, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="存在しない"):
        getattr(shared, "存在しない")  # noqa: B009 (a type checker refuses the plain form)
    with pytest.raises(ImportError):
        exec("from broker.shared import Store", {})


def test_dir_lists_the_contract() -> None:
    assert set(shared.__all__) <= set(dir(shared))


def loaded_after(statement: str) -> list[str]:
    code = (
        f"import sys; {statement}; "
        "print(*sorted(m for m in sys.modules if m.startswith(('broker', 'paho', 'jwt'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.split()


def test_a_user_loads_only_the_modules_of_the_names_it_takes() -> None:
    """``opendata`` takes the geometry types: it does not load MQTT, JWT or access control."""
    assert loaded_after("import broker.shared") == ["broker", "broker.shared"]
    assert loaded_after("from broker.shared import GEOMETRY_TYPES") == [
        "broker",
        "broker.errors",
        "broker.model",
        "broker.model.geo",
        "broker.shared",
    ]
