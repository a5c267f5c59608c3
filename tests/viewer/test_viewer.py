"""/viewer in headless Chromium: features render from /ogc, a click shows attributes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support import broker

ROOT = Path(__file__).resolve().parents[2]
VIEWER = ROOT / "broker" / "static" / "viewer"
SAMPLES = ROOT / "broker" / "samples" / "komae.json"
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def built_viewer() -> Path:
    """MapLibre vendored and playwright-core installed, by the build step users run."""
    subprocess.run([str(ROOT / "scripts" / "build-viewer.sh")], check=True, timeout=600)
    assert (VIEWER / "vendor" / "maplibre-gl.js").is_file()
    return VIEWER / "node_modules"


def run_viewer(node_modules: Path, url: str, shot: Path) -> dict[str, Any]:
    assert shutil.which("node"), "node is needed for the viewer test"
    assert Path(CHROMIUM).exists(), "Debian chromium is needed: scripts/system-deps.sh test"
    run = subprocess.run(
        ["node", str(Path(__file__).with_name("screenshot.cjs")), url, str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NODE_PATH": str(node_modules), "CHROMIUM": CHROMIUM},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_viewer_renders_every_collection_and_shows_attributes(
    built_viewer: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "viewer.png"
    with broker(tmp_path / "hub.db") as url:
        sample = json.loads(SAMPLES.read_text(encoding="utf-8"))
        r = httpx.post(f"{url}/ngsi-ld/v1/entityOperations/upsert", json=sample, timeout=30)
        assert r.status_code in (201, 204), r.text
        seen = run_viewer(built_viewer, f"{url}/viewer", shot)
    assert seen["error"] is None, seen["console"]
    assert seen["title"] == "Renkei 地図ビューアー"  # Japanese UI for a ja-JP browser
    assert seen["layers"] == ["AirQualityObserved", "District", "EvacuationSite", "ParkingSpot"]
    assert seen["features"] == 5
    assert seen["rendered"] >= 5  # drawn on the canvas, not just loaded
    assert "狛江" in seen["popup"]  # the clicked feature's attributes, names in Japanese
    assert seen["english"] == {
        "title": "Renkei map viewer",
        "status": "Showing 5 features in 4 layers",
        "layers": 4,
    }
    # everything came from this broker: no CDN, no tile server
    assert all(u.startswith((url, "blob:", "data:")) for u in seen["requests"]), seen["requests"]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 800)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 50, "the screenshot looks blank"
    # the layers' colours are on the map (EvacuationSite blue, District green outline)
    pixels = {c for _, c in colours}
    assert (0x43, 0x63, 0xD8) in pixels
    assert (0x3C, 0xB4, 0x4B) in pixels


def test_viewer_serves_its_config_and_nothing_outside_its_folder(
    built_viewer: Path, tmp_path: Path
) -> None:
    with broker(tmp_path / "hub.db") as url:
        config = httpx.get(f"{url}/viewer/config.json").json()
        assert config["ogc"] == "/ogc"
        assert config["tiles"] is None
        assert httpx.get(f"{url}/viewer/vendor/maplibre-gl.js").status_code == 200
        assert httpx.get(f"{url}/viewer/package.json").status_code == 404
        assert httpx.get(f"{url}/viewer/node_modules/maplibre-gl/package.json").status_code == 404
        assert httpx.get(f"{url}/viewer/%2E%2E/api/ogc.py").status_code == 404
