"""``/viewer``: a map of every OGC collection (MapLibre GL JS, served from this broker).

The page and its script live in ``broker/static/viewer``; MapLibre itself is copied
there (``vendor/``) from the npm package by ``scripts/build-viewer.sh`` so that no
CDN is needed at run time. ``/viewer/config.json`` carries the basemap settings.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

from broker.api.deps import HubDep
from broker.api.hygiene import html_policy
from broker.errors import ResourceNotFound

router = APIRouter(prefix="/viewer", include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static" / "viewer"
_SERVED = {".html", ".js", ".css", ".json", ".map", ".png", ".svg"}

_MISSING = """<!doctype html><html lang="ja"><meta charset="utf-8"><title>Renkei viewer</title>
<p>地図ビューアーはまだビルドされていません。<code>make viewer</code> を実行してください (npm が必要です)。</p>
<p>The map viewer is not built yet: run <code>make viewer</code> (needs npm).</p></html>"""


@router.get("")
async def page(hub: HubDep) -> Response:
    if not (STATIC / "vendor" / "maplibre-gl.js").is_file():
        return HTMLResponse(_MISSING, status_code=503)
    tiles = hub.settings.viewer_tiles_url
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(tiles)) if tiles else None
    policy = html_policy(origin) if origin else html_policy()
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html",
        headers={"content-security-policy": policy},
    )


@router.get("/config.json")
async def config(hub: HubDep) -> Response:
    s = hub.settings
    body = {
        "ogc": "/ogc",
        "tiles": s.viewer_tiles_url,
        "attribution": s.viewer_tiles_attribution,
        "maxFeatures": 5000,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/{name:path}")
async def asset(name: str) -> Response:
    path = (STATIC / name).resolve()
    if (
        not path.is_relative_to(STATIC)
        or path.suffix not in _SERVED
        or not path.is_file()
        or "node_modules" in path.parts
        or path.name.startswith("package")
    ):
        raise ResourceNotFound(f"no viewer file {name}")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=kind)
