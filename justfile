# salesplan — one entry point for people and CI.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Run the whole system with a scripted tunnel run and print what happened.
demo *ARGS:
    scripts/demo.sh {{ARGS}}

# Unit and integration tests against real PostgreSQL and NATS JetStream.
test *ARGS: build-bins
    eval "$(scripts/deps.sh)" && if cargo nextest --version >/dev/null 2>&1; then cargo nextest run --workspace --no-fail-fast {{ARGS}}; else cargo test --workspace --no-fail-fast {{ARGS}}; fi

# Fault run: LEADS leads through the webhook and as many in a bulk add while every service is
# killed and restarted, then NATS and PostgreSQL; checks that nothing was lost or doubled.
# `just chaos 5000 --cluster`: the production topology (3 NATS nodes, R3, two replicas of
# every service; a node killed, a replica of each killed, a rolling restart of all).
chaos *ARGS: build-bins
    cargo run --quiet -p integration-tests --bin chaos -- {{ARGS}}

# Release builds, then the floors of this machine beside the system's numbers (markdown on
# stdout, JSON in target/bench/results.json). LEADS for the intake runs, DEALS for the queries;
# ARGS e.g. `--only intake` to run one part. PostgreSQL and NATS are private instances: a
# machine's own PostgreSQL may run without autovacuum (CI images do), production does not.
bench LEADS="100000" DEALS="1000000" *ARGS:
    eval "$(SALESPLAN_DEPS=private scripts/deps.sh)" && cargo build --release --quiet --bins && target/release/bench --leads {{LEADS}} --deals {{DEALS}} --out target/bench/results.json {{ARGS}}

# Formatting, clippy with warnings as errors, no unused dependency, and the deploy files
# (manifests, Dockerfile).
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    python3 scripts/unused-deps.py
    scripts/check-deploy.sh

# Start PostgreSQL and NATS if none is reachable, and print their URLs.
deps:
    scripts/deps.sh

# Stop the private PostgreSQL and NATS that `just deps` started.
deps-stop:
    scripts/deps.sh stop

# Apply every service's migrations to DATABASE_URL.
migrate:
    eval "$(scripts/deps.sh)" && cargo build --quiet --bins && for s in deal-service distributor reporting; do target/debug/$s migrate; done

# The service binaries (process-level tests run them).
build-bins:
    cargo build --quiet --bins
