#!/usr/bin/env bash
# A local CKAN 2.11 catalogue for developing and testing `renkei publish`.
#
#   scripts/ckan-dev.sh start   install (first time) and start CKAN; prints URL and token
#   scripts/ckan-dev.sh env     print RENKEI_CKAN_URL / RENKEI_CKAN_TOKEN_FILE of a running one
#   scripts/ckan-dev.sh stop    stop every process the script started
#   scripts/ckan-dev.sh purge   stop and delete the catalogue's data
#
# CKAN is installed from PyPI into its own virtualenv (RENKEI_CKAN_HOME, default
# ~/.cache/renkei-ckan). PostgreSQL and Redis come from Debian (scripts/system-deps.sh
# test) and run as private instances on free ports under RENKEI_CKAN_RUN (default
# /tmp/renkei-ckan-$UID): the system services are neither used nor changed. CKAN needs a
# Solr server, which cannot be installed here: tests/opendata/solr_standin.py, a small
# HTTP stand-in for the endpoints CKAN calls, takes its place (test infrastructure).
# The DataStore plugin is enabled with its own database and read-only user; the licence
# list is the one Japanese catalogues use (opendata/ckan-licenses-ja.json: CC BY 4.0, PDL1.0...).
set -euo pipefail

CKAN_VERSION="${RENKEI_CKAN_VERSION:-2.11.6}"
HOME_DIR="${RENKEI_CKAN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/renkei-ckan}"
RUN="${RENKEI_CKAN_RUN:-/tmp/renkei-ckan-$(id -u)}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$HOME_DIR/venv-$CKAN_VERSION"
PGBIN="${RENKEI_PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
ADMIN=renkei-admin

say() { echo "ckan-dev: $*" >&2; }
die() { say "$*"; exit 1; }

free_ports() {  # N distinct free ports, all held open until every one is chosen
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# PostgreSQL refuses to run as root: as root its files belong to, and it runs as, postgres.
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

install_ckan() {
  [ -x "$VENV/bin/ckan" ] && [ -f "$VENV/.installed" ] && return 0
  mkdir -p "$HOME_DIR"
  # one installer at a time: test sessions may start together on a fresh machine
  exec 9>"$HOME_DIR/.install.lock"
  flock 9
  if ! [ -f "$VENV/.installed" ]; then
    say "installing CKAN $CKAN_VERSION into $VENV (first time only, about a minute)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel
    "$VENV/bin/pip" install --quiet "ckan[requirements]==$CKAN_VERSION" \
      || die "pip install ckan[requirements]==$CKAN_VERSION failed"
    touch "$VENV/.installed"
  fi
  flock -u 9
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_url() {
  local url="$1" tries="${2:-300}"
  for _ in $(seq "$tries"); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

start_postgres() {
  local pgdata="$RUN/pg"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    [ "$(id -u)" = 0 ] && chown postgres: "$pgdata"
    chmod 700 "$pgdata"
    as_pg "$PGBIN/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$RUN/initdb.log" 2>&1 \
      || die "initdb failed, see $RUN/initdb.log"
  fi
  if ! as_pg "$PGBIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    as_pg "$PGBIN/pg_ctl" -D "$pgdata" -w -t 60 -l "$pgdata/server.log" \
      -o "-p $PG_PORT -k $pgdata -c listen_addresses=127.0.0.1" start >/dev/null \
      || die "PostgreSQL did not start, see $pgdata/server.log"
  fi
}

psql_pg() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

create_databases() {
  if [ "$(psql_pg -c "select 1 from pg_roles where rolname='ckan_default'")" != 1 ]; then
    psql_pg -c "create role ckan_default login password 'ckan'" \
      -c "create role datastore_default login password 'datastore'" \
      -c "create database ckan_default owner ckan_default encoding 'utf-8'" \
      -c "create database datastore_default owner ckan_default encoding 'utf-8'"
  fi
}

write_config() {
  local ini="$RUN/ckan.ini"
  [ -f "$ini" ] && return 0
  (cd "$RUN" && "$VENV/bin/ckan" generate config "$ini" >/dev/null)
  local db="postgresql://ckan_default:ckan@127.0.0.1:$PG_PORT"
  python3 - "$ini" <<EOF
import re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
settings = {
    "sqlalchemy.url": "$db/ckan_default",
    "ckan.site_url": "http://127.0.0.1:$CKAN_PORT",
    "ckan.site_id": "renkei-dev",
    "solr_url": "http://127.0.0.1:$SOLR_PORT/solr/ckan",
    "ckan.redis.url": "redis://127.0.0.1:$REDIS_PORT/0",
    "ckan.storage_path": "$RUN/storage",
    "ckan.plugins": "activity datastore",
    "ckan.datastore.write_url": "$db/datastore_default",
    "ckan.datastore.read_url": "postgresql://datastore_default:datastore@127.0.0.1:$PG_PORT/datastore_default",
    "ckan.locale_default": "ja",
    "ckan.max_resource_size": "100",
    "ckan.devserver.threaded": "true",
    "licenses_group_url": "file://$REPO/opendata/ckan-licenses-ja.json",
}
for key, value in settings.items():
    line = f"{key} = {value}"
    pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=.*$", re.M)
    text, n = pattern.subn(lambda m: line, text, count=1)
    if not n:
        text = text.replace("[app:main]\n", f"[app:main]\n{line}\n", 1)
open(path, "w", encoding="utf-8").write(text)
EOF
}

init_ckan() {
  local ini="$RUN/ckan.ini" ckan=("$VENV/bin/ckan" -c "$RUN/ckan.ini")
  [ -f "$RUN/token" ] && return 0
  mkdir -p "$RUN/storage"
  "${ckan[@]}" db init >"$RUN/db-init.log" 2>&1 || die "ckan db init failed, see $RUN/db-init.log"
  "${ckan[@]}" datastore set-permissions 2>/dev/null | psql_pg -d datastore_default >/dev/null \
    || die "datastore set-permissions failed"
  "${ckan[@]}" user add "$ADMIN" email=admin@renkei.invalid password="renkei-dev-$(id -u)-pass" \
    >"$RUN/user.log" 2>&1 || die "ckan user add failed, see $RUN/user.log"
  "${ckan[@]}" sysadmin add "$ADMIN" >>"$RUN/user.log" 2>&1 </dev/null || die "sysadmin add failed"
  "${ckan[@]}" user token add "$ADMIN" renkei-dev 2>>"$RUN/user.log" | tail -1 | tr -d '[:space:]' \
    >"$RUN/token.tmp"
  [ -s "$RUN/token.tmp" ] || die "no API token, see $RUN/user.log"
  chmod 600 "$RUN/token.tmp"
  mv "$RUN/token.tmp" "$RUN/token"
  : "$ini"
}

print_env() {
  echo "RENKEI_CKAN_URL=http://127.0.0.1:$CKAN_PORT"
  echo "RENKEI_CKAN_TOKEN_FILE=$RUN/token"
  echo "RENKEI_CKAN_SYSADMIN=$ADMIN"
}

load_ports() {
  if [ -f "$RUN/ports" ]; then
    # shellcheck disable=SC1091
    . "$RUN/ports"
  else
    read -r PG_PORT REDIS_PORT SOLR_PORT CKAN_PORT <<<"$(free_ports 4)"
    CKAN_PORT="${RENKEI_CKAN_PORT:-$CKAN_PORT}"
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nSOLR_PORT=%s\nCKAN_PORT=%s\n' \
      "$PG_PORT" "$REDIS_PORT" "$SOLR_PORT" "$CKAN_PORT" >"$RUN/ports"
  fi
}

start() {
  [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || die "PostgreSQL not installed: run scripts/system-deps.sh test"
  command -v redis-server >/dev/null || die "redis-server not installed: run scripts/system-deps.sh test"
  install_ckan
  mkdir -p "$RUN"
  chmod 755 "$RUN"
  load_ports
  start_postgres
  create_databases
  if ! pid_alive "$RUN/redis.pid"; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --pidfile "$RUN/redis.pid" --dir "$RUN" --logfile "$RUN/redis.log"
    for _ in $(seq 50); do [ -s "$RUN/redis.pid" ] && break; sleep 0.1; done
  fi
  if ! pid_alive "$RUN/solr.pid"; then
    nohup "$VENV/bin/python" "$REPO/tests/opendata/solr_standin.py" --port "$SOLR_PORT" \
      --data "$RUN/solr-index.json" >"$RUN/solr.log" 2>&1 &
    echo $! >"$RUN/solr.pid"
    wait_url "http://127.0.0.1:$SOLR_PORT/solr/ckan/admin/ping" 100 || die "Solr stand-in did not start"
  fi
  write_config
  init_ckan
  if ! pid_alive "$RUN/ckan.pid"; then
    nohup "$VENV/bin/ckan" -c "$RUN/ckan.ini" run -H 127.0.0.1 -p "$CKAN_PORT" -r -D -t \
      >"$RUN/ckan.log" 2>&1 &
    echo $! >"$RUN/ckan.pid"
    wait_url "http://127.0.0.1:$CKAN_PORT/api/3/action/status_show" 600 \
      || die "CKAN did not start, see $RUN/ckan.log"
  fi
  say "CKAN $CKAN_VERSION runs at http://127.0.0.1:$CKAN_PORT (sysadmin $ADMIN, token in $RUN/token)"
  print_env
}

stop_pid() {
  local file="$1"
  if pid_alive "$file"; then
    local pid; pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  [ -d "$RUN" ] || return 0
  for name in ckan solr redis; do  # all asked at once, then waited for
    pid_alive "$RUN/$name.pid" && kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
  done
  stop_pid "$RUN/ckan.pid"
  stop_pid "$RUN/solr.pid"
  stop_pid "$RUN/redis.pid"
  if [ -f "$RUN/pg/PG_VERSION" ] && [ -n "$PGBIN" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) [ -f "$RUN/ports" ] || die "not started (no $RUN/ports)"; load_ports; print_env ;;
  purge) stop; rm -rf "$RUN" ;;
  *) echo "usage: $0 start|stop|env|purge" >&2; exit 2 ;;
esac
