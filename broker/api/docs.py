"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) over ``/openapi.json``, served by the hub.

FastAPI's own pages load both from public CDNs, which leaves them blank on an isolated
municipal network (LGWAN). Here the assets come from their npm packages at build time
(``scripts/build-viewer.sh`` copies them to ``broker/static/docs/vendor``, as it does
MapLibre for the viewer) and no page refers to another host. The pages are written out
rather than taken from ``fastapi.openapi.docs`` because those inline their start-up
script, which a ``script-src 'self'`` policy forbids.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

from broker.errors import ResourceNotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static" / "docs"
VENDOR = STATIC / "vendor"
#: File name -> media type of everything under /docs/ besides the page itself.
_ASSETS = {
    "vendor/swagger-ui-bundle.js": "text/javascript",
    "vendor/swagger-ui.css": "text/css",
    "vendor/redoc.standalone.js": "text/javascript",
    "swagger-init.js": "text/javascript",
}

_MISSING = """<!doctype html><html lang="ja"><meta charset="utf-8"><title>Renkei API docs</title>
<p>API ドキュメント (Swagger UI / ReDoc) はまだビルドされていません。<code>make viewer</code>
を実行してください (npm が必要です)。API の定義は <a href="/openapi.json">/openapi.json</a> にあります。</p>
<p>The API docs (Swagger UI / ReDoc) are not built yet: run <code>make viewer</code>
(needs npm). The API definition is at <a href="/openapi.json">/openapi.json</a>.</p></html>"""

_SWAGGER = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Renkei NGSI-LD broker - Swagger UI</title>
<link rel="stylesheet" href="/docs/vendor/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/vendor/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body>
</html>
"""

_REDOC = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Renkei NGSI-LD broker - ReDoc</title>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/docs/vendor/redoc.standalone.js"></script>
</body>
</html>
"""


def _page(html: str, needs: str) -> Response:
    if not (VENDOR / needs).is_file():
        return HTMLResponse(_MISSING, status_code=503)
    return HTMLResponse(html)


@router.get("/docs")
async def swagger_ui() -> Response:
    return _page(_SWAGGER, "swagger-ui-bundle.js")


@router.get("/redoc")
async def redoc() -> Response:
    return _page(_REDOC, "redoc.standalone.js")


@router.get("/docs/{name:path}")
async def asset(name: str) -> Response:
    kind = _ASSETS.get(name)
    if kind is None or not (STATIC / name).is_file():
        raise ResourceNotFound(f"no API docs file {name}")
    return FileResponse(STATIC / name, media_type=kind)
