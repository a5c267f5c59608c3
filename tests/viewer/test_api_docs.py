"""/docs and /redoc in headless Chromium: they render from the hub's own assets only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import broker
from tests.viewer.test_viewer import CHROMIUM, built_viewer  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser


def load(node_modules: Path, url: str, selector: str) -> dict[str, Any]:
    run = subprocess.run(
        ["node", str(Path(__file__).with_name("page.cjs")), url, selector],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules), "CHROMIUM": CHROMIUM},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


@pytest.mark.parametrize(
    ("path", "selector", "shows"),
    [
        ("/docs", ".swagger-ui .info .title", "Renkei NGSI-LD broker"),  # Swagger UI
        ("/redoc", "h1", "Renkei NGSI-LD broker"),  # ReDoc: the API's title
    ],
)
def test_api_docs_render_offline_under_the_pages_policy(
    built_viewer: Path,  # noqa: F811
    tmp_path: Path,
    path: str,
    selector: str,
    shows: str,
) -> None:
    with broker(tmp_path / "hub.db") as url:
        seen = load(built_viewer, f"{url}{path}", selector)
    assert seen["status"] == 200
    assert seen["found"], seen["console"]
    assert shows in seen["text"]
    assert "script-src 'self';" in seen["csp"]
    assert seen["violations"] == [], seen["console"]
    assert not [c for c in seen["console"] if c.startswith("pageerror")], seen["console"]
    # everything came from this hub: no CDN, no web font
    assert all(u.startswith((url, "blob:", "data:")) for u in seen["requests"]), seen["requests"]
    assert f"{url}/openapi.json" in seen["requests"]
