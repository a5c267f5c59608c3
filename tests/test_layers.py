"""The broker's layers point down only (docs: DESIGN.md, "Layout").

Every module's imports are read from its source (``ast``), so the rules hold for
imports made inside functions too, not only for what happens to be loaded:

* ``broker.model`` is the leaf: it imports no other broker package (``broker.errors``,
  which imports nothing from broker, counts as part of it);
* ``broker.store``, ``broker.query`` (and ``broker.notify``, ``broker.jsonld``) never
  import ``broker.core`` or ``broker.api``;
* ``broker.api`` reaches stores only through the services, never ``broker.store``;
* ``connectors/`` and ``opendata/`` import from the broker only ``broker.shared``, the
  stable contract between the hub and its connectors (written
  ``from broker.shared import ...``), which re-exports leaves only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a module file."""
    return imports_of(
        path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
    )


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``source``, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            yield node.lineno, stem
            for alias in node.names:  # ``from broker import core`` imports a package
                yield node.lineno, f"{stem}.{alias.name}"


def modules(package: str) -> list[Path]:
    found = sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
    assert found, f"no modules under {package}"
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(package: str, forbidden: list[str], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in modules(package):
        for line, name in imported(path):
            if any(within(name, a) for a in allowed):
                continue
            if any(within(name, f) for f in forbidden):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def test_the_model_imports_no_other_broker_package() -> None:
    assert violations("broker.model", ["broker"], ("broker.model", "broker.errors")) == []


def test_errors_import_nothing_from_broker() -> None:
    """``broker.errors`` counts as part of the leaf, so it must be a leaf itself."""
    path = BROKER / "errors.py"
    assert [name for _, name in imported(path) if within(name, "broker")] == []


@pytest.mark.parametrize(
    "package", ["broker.store", "broker.query", "broker.model", "broker.notify", "broker.jsonld"]
)
def test_lower_layers_do_not_reach_up_to_services_or_routes(package: str) -> None:
    assert violations(package, ["broker.core", "broker.api", "broker.app"]) == []


def test_routes_reach_stores_only_through_services() -> None:
    assert violations("broker.api", ["broker.store"]) == []


@pytest.mark.parametrize("package", ["connectors", "opendata"])
def test_connectors_reach_the_broker_only_through_its_shared_module(package: str) -> None:
    assert violations(package, ["broker"], ("broker.shared",)) == []


#: What ``broker.shared`` may re-export: leaves that reach no service, store or route
#: (``tests/broker/transport/test_layers.py`` holds ``auth``, ``query`` and the transport
#: to that), so a connector never loads the broker's internals through it.
SHARED_FROM = (
    "broker.auth",
    "broker.errors",
    "broker.model",
    "broker.outbound",
    "broker.query",
    "broker.transport",
)


def test_the_shared_module_re_exports_leaves_only() -> None:
    names = [name for _, name in imported(BROKER / "shared.py") if within(name, "broker")]
    assert names  # the walk sees the imports made for type checkers
    assert [n for n in names if not any(within(n, leaf) for leaf in SHARED_FROM)] == []


def test_the_walk_sees_every_form_of_import() -> None:
    """Plain, aliased, relative and function-local imports are all found."""
    source = (
        "import broker.store.base as b\n"
        "from .. import store\n"
        "from .common import negotiate\n"
        "def f():\n"
        "    from broker.store.sqlite import SqliteStore\n"
    )
    names = [name for _, name in imports_of(source, "broker.api.probe")]
    assert "broker.store.base" in names
    assert "broker.store" in names
    assert "broker.api.common" in names
    assert "broker.store.sqlite" in names
    assert any(within(n, "broker.store") for n in names)
