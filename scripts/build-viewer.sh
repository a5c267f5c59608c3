#!/usr/bin/env bash
# Build the hub's browser assets from the npm registry with the committed lock files, so
# that no page the hub serves needs a CDN at run time (isolated networks such as LGWAN):
# - the map viewer (/viewer): MapLibre GL JS (and, for the tests, playwright-core),
#   copied to broker/static/viewer/vendor;
# - the API docs (/docs, /redoc): Swagger UI and ReDoc, copied to broker/static/docs/vendor.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
viewer="$here/broker/static/viewer"
docs="$here/broker/static/docs"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is needed to build the map viewer and API docs / 地図ビューアーと API ドキュメントのビルドには npm が必要です" >&2
  exit 1
fi

install() {  # npm ci in $1 unless its node_modules already match the lock file
  if [ ! -f "$1/node_modules/.package-lock.json" ] || [ "$1/package-lock.json" -nt "$1/node_modules/.package-lock.json" ]; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

install "$viewer"
mkdir -p "$viewer/vendor"
cp "$viewer"/node_modules/maplibre-gl/dist/maplibre-gl.js "$viewer"/node_modules/maplibre-gl/dist/maplibre-gl.css \
   "$viewer"/node_modules/maplibre-gl/LICENSE.txt "$viewer/vendor/"

install "$docs"
mkdir -p "$docs/vendor"
cp "$docs"/node_modules/swagger-ui-dist/swagger-ui-bundle.js "$docs"/node_modules/swagger-ui-dist/swagger-ui.css \
   "$docs/vendor/"
# ReDoc's footer shows a logo from cdn.redoc.ly, which the page's policy would block
# anyway: point it at nothing so the page makes no attempt to reach another host.
sed 's#"https://cdn.redoc.ly/redoc/logo-mini.svg"#"data:,"#g' \
  "$docs"/node_modules/redoc/bundles/redoc.standalone.js > "$docs/vendor/redoc.standalone.js"
cp "$docs"/node_modules/swagger-ui-dist/LICENSE "$docs/vendor/swagger-ui.LICENSE"
cp "$docs"/node_modules/redoc/LICENSE "$docs/vendor/redoc.LICENSE"
