#!/usr/bin/env bash
# Build the map viewer: install MapLibre GL JS (and, for the tests, playwright-core)
# from the npm registry with the committed lock file, and copy MapLibre's browser
# bundle next to the viewer page so /viewer needs no CDN at run time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
viewer="$here/broker/static/viewer"
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is needed to build the map viewer / 地図ビューアーのビルドには npm が必要です" >&2
  exit 1
fi
cd "$viewer"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p vendor
cp node_modules/maplibre-gl/dist/maplibre-gl.js node_modules/maplibre-gl/dist/maplibre-gl.css \
   node_modules/maplibre-gl/LICENSE.txt vendor/
