#!/usr/bin/env bash
# `just demo`: the whole system on this machine. Makes sure PostgreSQL and NATS are there,
# builds, migrates a fresh demo database, starts the four services as separate processes,
# runs the scripted tunnel run through the real webhook, prints the result, and stops
# everything with SIGTERM (a clean drain).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/deps.sh)"

echo "building…" >&2
cargo build --quiet --bins
bin="$root/target/debug"
logs="$root/target/demo"
mkdir -p "$logs"

# A fresh database per run, so the tables show this run only.
demo_db="salesplan_demo"
psql_url="$DATABASE_URL"
"$bin/demo-db" --admin-url "$psql_url" --name "$demo_db" >&2
DATABASE_URL="$(echo "$psql_url" | sed -E "s#(://[^/]*)/[^?]*#\1/$demo_db#")"
export DATABASE_URL
export SALESPLAN_LOG_FORMAT=json RUST_LOG="${RUST_LOG:-info}"
# Tokens are signed with the public development secret: accepted in development only.
export SALESPLAN_ENV=development

for service in deal-service distributor reporting; do
  "$bin/$service" migrate
done

pids=()
names=()
stop() {
  local failed=0 i
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      echo "${names[$i]} did not stop cleanly; see target/demo/${names[$i]}.log" >&2
      failed=1
    fi
  done
  pids=()
  return "$failed"
}
trap stop EXIT

# Free ports, not the defaults: another program on this machine may hold one of those (an
# outgoing connection's ephemeral port counts too).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
declare -A grpc_port=(
  [deal-service]="$(free_port)" [distributor]="$(free_port)"
  [reporting]="$(free_port)" [tunnel-listener]="$(free_port)"
)
webhook_port="$(free_port)"
export SALESPLAN_DEAL_SERVICE_URL="http://127.0.0.1:${grpc_port[deal-service]}"
export SALESPLAN_DISTRIBUTOR_URL="http://127.0.0.1:${grpc_port[distributor]}"
export SALESPLAN_REPORTING_URL="http://127.0.0.1:${grpc_port[reporting]}"
export SALESPLAN_INTAKE_URL="http://127.0.0.1:${grpc_port[tunnel-listener]}"

for service in deal-service distributor reporting tunnel-listener; do
  SALESPLAN_GRPC_ADDR="127.0.0.1:${grpc_port[$service]}" SALESPLAN_HTTP_ADDR="127.0.0.1:$webhook_port" \
    "$bin/$service" serve >"$logs/$service.log" 2>&1 &
  pids+=("$!")
  names+=("$service")
done
echo "services started (logs in target/demo/), running the scripted tunnel run…" >&2
echo

rm -f "$logs/last-run.env"
"$bin/demo" --last-run "$logs/last-run.env" --webhook "http://127.0.0.1:$webhook_port" \
  --deal-service "$SALESPLAN_DEAL_SERVICE_URL" --reporting "$SALESPLAN_REPORTING_URL" "$@"
# The demo's plan and the consistency token of its last change (PLAN=…, FRESH_AS=…).
# shellcheck disable=SC1091
source "$logs/last-run.env"

# The same data through salesplanctl, as a person at a terminal would see it.
export SALESPLAN_TOKEN
SALESPLAN_TOKEN="$("$bin/salesplanctl" token --account demo --user demo-viewer --perm deals:read --perm reports:read)"
echo
echo "$ salesplanctl plans list"
"$bin/salesplanctl" plans list
echo
echo "$ salesplanctl reports loss-reasons --by plan --plan $PLAN --fresh-as $FRESH_AS"
"$bin/salesplanctl" reports loss-reasons --by plan --plan "$PLAN" --fresh-as "$FRESH_AS"
echo
echo "$ salesplanctl managers show carl"
"$bin/salesplanctl" managers show carl
echo

stop
trap - EXIT
echo "All four services stopped cleanly (SIGTERM, drained). Logs: target/demo/*.log"
