"""The Dockerfile the chart runs: it cannot be built here (no container engine), so what
the chart and the package rely on is checked in its text."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text("utf-8")
IGNORED = [
    line.strip()
    for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
    if line.strip() and not line.startswith("#")
]


def stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]


def test_every_installed_package_is_copied_into_the_build() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    build = next(s for s in stages() if "pip install ." in s)
    for pattern in includes:
        package = pattern.rstrip("*")
        assert f"COPY {package}/ {package}/" in build, package
        assert package not in IGNORED, package
    assert project["project"]["readme"] in build


def test_viewer_is_built_with_the_project_script() -> None:
    node, build, _ = stages()
    assert node.startswith("node:")
    assert "RUN scripts/build-viewer.sh" in node
    assert "scripts/build-viewer.sh" not in IGNORED
    assert "COPY --from=viewer /src/broker/static/viewer/vendor/" in build


def test_runtime_is_slim_python_as_the_charts_user_with_a_healthcheck() -> None:
    runtime = stages()[-1]
    assert re.match(r"python:3\.1[1-9]-slim", runtime)
    (user,) = re.findall(r"^USER (\d+):(\d+)$", runtime, flags=re.MULTILINE)
    assert int(user[0]) != 0
    values = yaml.safe_load((ROOT / "helm" / "renkei" / "values.yaml").read_text("utf-8"))
    assert values["securityContext"]["runAsUser"] == int(user[0])
    assert values["securityContext"]["runAsGroup"] == int(user[1])
    assert "HEALTHCHECK" in runtime
    assert 'ENTRYPOINT ["renkei"]' in runtime
