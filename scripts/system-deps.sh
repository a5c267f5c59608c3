#!/usr/bin/env bash
# Debian packages Renkei needs: installed with apt-get when run as root, otherwise
# the one command to run is printed and the script fails.
#   system-deps.sh venv   what creating the virtualenv needs
#   system-deps.sh test   what the test suite needs (real services the tests start)
set -euo pipefail
case "${1:-test}" in
  venv) packages=() ; python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
          || packages=(python3-venv python3-dev) ;;
  test) packages=(mosquitto chromium fonts-noto-cjk gdal-bin postgresql redis-server libpq-dev python3-dev gcc curl) ;;  # CKAN: scripts/ckan-dev.sh
  *) echo "usage: $0 venv|test" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "Installing Debian packages / Debian パッケージをインストールします: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "Renkei needs these Debian packages / 次のパッケージが必要です: ${missing[*]}" >&2
  echo "Run / 実行してください:  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
