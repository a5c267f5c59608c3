# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
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


PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080"]
LONG_TITLE = "狛江市 町丁目別 AED 設置状況と人口千人あたりの設置数（令和8年4月1日現在・市民課集計）"


def rgb(color: str) -> tuple[int, int, int]:
    return (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))


def test_viewer_with_a_published_layer_loads_every_time_in_japanese(
    built_viewer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?lang=ja loads reliably; a long Japanese layer title stays inside the panel; the
    layer's district polygons, covering every facility, are drawn below the points."""
    layers = tmp_path / "layers"
    layers.mkdir()
    districts = {
        "type": "FeatureCollection",
        "title": LONG_TITLE,
        "features": [
            {
                "type": "Feature",
                "id": code,
                "properties": {"地区名": name, "aed_count": n},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[w, 35.55], [e, 35.55], [e, 35.70], [w, 35.70], [w, 35.55]]],
                },
            }
            for code, name, n, w, e in [
                ("13219001001", "猪方一丁目", 3, 139.50, 139.578),
                ("13219002001", "和泉本町一丁目", 5, 139.578, 139.66),
            ]
        ],
    }
    (layers / "aed-per-district.geojson").write_text(
        json.dumps(districts, ensure_ascii=False), encoding="utf-8"
    )
    monkeypatch.setenv("RENKEI_OGC_LAYERS_DIR", str(layers))
    shot = tmp_path / "viewer.png"
    with broker(tmp_path / "hub.db") as url:
        sample = json.loads(SAMPLES.read_text(encoding="utf-8"))
        r = httpx.post(f"{url}/ngsi-ld/v1/entityOperations/upsert", json=sample, timeout=30)
        assert r.status_code in (201, 204), r.text
        run = subprocess.run(
            [
                "node",
                str(Path(__file__).with_name("load.cjs")),
                f"{url}/viewer?lang=ja",
                str(shot),
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NODE_PATH": str(built_viewer), "CHROMIUM": CHROMIUM},
        )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert not seen["console"], seen["console"]
    # every load ends loaded, in Japanese, with the whole layer list
    for load in seen["loads"]:
        assert load == {
            "ready": True,
            "error": None,
            "status": "5 レイヤー、7 件の地物を表示しています",
            "title": "Renkei 地図ビューアー",
            "layers": 5,
        }
    # two switches in a row: Japanese again, loaded once (not the list twice)
    assert seen["switched"]["status"] == "5 レイヤー、7 件の地物を表示しています"
    assert seen["switched"]["layers"] == 5
    assert seen["switched"]["ready"] is True

    # the long title is cut with an ellipsis inside the panel; the tooltip has all of it
    item = next(i for i in seen["items"] if i["tooltip"] == LONG_TITLE)
    assert item["text"] == LONG_TITLE
    assert item["cut"]
    assert item["ellipsis"] == "ellipsis"
    assert item["countVisible"]
    assert all(i["right"] <= seen["panel"]["right"] for i in seen["items"])
    assert not seen["panel"]["overflows"]

    # fills, then lines, then points, whatever the collections' order
    types = [t for t, _ in seen["order"]]
    assert types.index("circle") > max(i for i, t in enumerate(types) if t == "fill")
    assert types.index("circle") > max(i for i, t in enumerate(types) if t == "line")
    # a facility inside a district keeps its own colour: no polygon drawn over it
    image = Image.open(shot).convert("RGB")
    points = seen["points"]
    assert points
    for p in points:
        alone = all(
            (p["x"] - q["x"]) ** 2 + (p["y"] - q["y"]) ** 2 > 20**2 for q in points if q is not p
        )
        if alone:
            colour = rgb(PALETTE[int(p["source"][1:]) % len(PALETTE)])
            assert image.getpixel((round(p["x"]), round(p["y"]))) == colour, p
