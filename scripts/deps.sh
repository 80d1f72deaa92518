#!/usr/bin/env bash
# Makes sure PostgreSQL and NATS (JetStream) are reachable, and that the nats-server binary
# exists (tests start a private one each). Prints `export` lines for DATABASE_URL and
# NATS_URL on stdout; everything else goes to stderr.
#
#   eval "$(scripts/deps.sh)"     # use them
#   scripts/deps.sh stop          # stop the private instances this script started
#
# Order: DATABASE_URL / NATS_URL when set and reachable; else the local defaults when
# reachable; else (or always, with SALESPLAN_DEPS=private) private instances under target/deps (installing the Debian packages
# `postgresql` / `nats-server` when missing and running as root with apt-get).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/target/deps"
pg_port=55432
nats_port=54222
log() { echo "deps: $*" >&2; }

# host and port of a URL like scheme://user@host:port/db
host_port() {
  local rest="${1#*://}"
  rest="${rest#*@}"
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  local host="${rest%%:*}" port="${rest##*:}"
  [ "$port" = "$rest" ] && port="$2"
  echo "$host" "$port"
}

reachable() { # url default-port
  read -r host port < <(host_port "$1" "$2")
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

install_pkg() { # package binary-description
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian package $1"
    (apt-get install -y -qq "$1" >/dev/null 2>&1) || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$1" >/dev/null; }
  else
    log "missing $2: install the '$1' package (Debian/Ubuntu: sudo apt-get install $1)"
    exit 1
  fi
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  return 1
}

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_private_postgres() {
  local bin
  bin="$(pg_bin)" || { install_pkg postgresql "PostgreSQL server"; bin="$(pg_bin)"; }
  local data="$deps/pg"
  mkdir -p "$deps"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a private PostgreSQL in $data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
    chmod 700 "$data"
    as_pg_user "$bin/initdb" -D "$data" -U postgres -A trust >/dev/null
  fi
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$data"
  log "starting a private PostgreSQL on 127.0.0.1:$pg_port"
  as_pg_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
}

nats_bin() {
  command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || return 1
}

start_private_nats() {
  local bin="$1"
  mkdir -p "$deps/nats"
  log "starting a private nats-server (JetStream) on 127.0.0.1:$nats_port"
  nohup "$bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$deps/nats" -P "$deps/nats/nats.pid" \
    >"$deps/nats/server.log" 2>&1 &
  for _ in $(seq 1 50); do
    reachable "nats://127.0.0.1:$nats_port" 4222 && return 0
    sleep 0.1
  done
  log "nats-server did not start; see $deps/nats/server.log"
  exit 1
}

stop_private() {
  if [ -f "$deps/nats/nats.pid" ]; then
    kill "$(cat "$deps/nats/nats.pid")" 2>/dev/null || true
    rm -f "$deps/nats/nats.pid"
    log "stopped private nats-server"
  fi
  if [ -f "$deps/pg/postmaster.pid" ]; then
    as_pg_user "$(pg_bin)/pg_ctl" -D "$deps/pg" -m fast stop >/dev/null || true
    log "stopped private PostgreSQL"
  fi
}

if [ "${1:-}" = stop ]; then
  stop_private
  exit 0
fi

# PostgreSQL
default_db="postgres://postgres@127.0.0.1:5432/postgres"
private_db="postgres://postgres@127.0.0.1:$pg_port/postgres"
force_private="${SALESPLAN_DEPS:-}"   # "private": ignore servers already running
if [ "$force_private" != private ] && [ -n "${DATABASE_URL:-}" ] && reachable "$DATABASE_URL" 5432; then
  db="$DATABASE_URL"
elif [ "$force_private" != private ] && reachable "$default_db" 5432; then
  db="$default_db"
else
  reachable "$private_db" 5432 || start_private_postgres
  db="$private_db"
fi

# NATS: the binary is needed in any case (each test starts its own server).
nats="$(nats_bin)" || { install_pkg nats-server "nats-server"; nats="$(nats_bin)"; }
default_nats="nats://127.0.0.1:4222"
private_nats="nats://127.0.0.1:$nats_port"
if [ "$force_private" != private ] && [ -n "${NATS_URL:-}" ] && reachable "$NATS_URL" 4222; then
  nats_url="$NATS_URL"
elif [ "$force_private" != private ] && reachable "$default_nats" 4222; then
  nats_url="$default_nats"
else
  reachable "$private_nats" 4222 || start_private_nats "$nats"
  nats_url="$private_nats"
fi

log "PostgreSQL: ${db%%\?*}  NATS: $nats_url  nats-server: $nats"
echo "export DATABASE_URL='$db'"
echo "export NATS_URL='$nats_url'"
echo "export NATS_SERVER_BIN='$nats'"
