#!/usr/bin/env bash
# `make bench-api`: the read API's benchmark (not a timed test), against the local stack's
# Redis (bash e2e/local/stack.sh up redis). Starts a release `ferry-api` on a list
# Pipeline's config, then worker/benches/read_api.rs preloads SOURCES lists of 100 dsdata
# records, reads one source's 100-value history at 1, 50 and 500 concurrent clients through
# the API and with a direct redis-rs LRANGE in the same run, prints both with their ratios
# (closed loop), then both again at one offered rate, half the API's closed-loop rate
# (open loop; FERRY_BENCH_LOAD sets the fraction), then the event delay (batch EXEC -> SSE).
# Beside both, the floor: the client binary itself as a bare HTTP server doing one LRANGE a
# request with no decoding and no JSON (FERRY_BENCH_FLOOR=0 leaves it out).
# Details and figures: bench/README.md.
# Usage: bash bench/api.sh     (SOURCES=1000 BENCH_SECONDS=5 by default)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=e2e/local/lib.sh
source e2e/local/lib.sh
STACK_ENV="${FERRY_STACK_DIR:-/tmp/ferry-stack}/env"
[[ -f "$STACK_ENV" ]] || { echo "no $STACK_ENV: start the stack: make stack-up" >&2; exit 1; }
# shellcheck disable=SC1090
source "$STACK_ENV"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${FERRY_CACHE:-$HOME/.cache/ferry}/cargo-target}"
SOURCES="${SOURCES:-1000}"
SECONDS_PER_LEVEL="${BENCH_SECONDS:-5}"
PREFIX="bench-api-$(date +%s)-$RANDOM"
WORK="$(mktemp -d)"
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PORT="$(free_port)"

# FERRY_BENCH_SERVE and FERRY_BENCH_CLIENT name prebuilt binaries (a copy of one build, so
# that a build in another tree of the shared target dir cannot swap them mid-run).
if [[ -n "${FERRY_BENCH_SERVE:-}" && -n "${FERRY_BENCH_CLIENT:-}" ]]; then
  BIN="$FERRY_BENCH_SERVE"
  BENCH="$FERRY_BENCH_CLIENT"
else
  cargo build --release -q -p ferry-worker --bin ferry-api
  BENCH="$(cargo bench -q -p ferry-worker --bench read_api --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "read_api" and m.get("executable"):
        print(m["executable"])')"
  BIN="$CARGO_TARGET_DIR/release/ferry-api"
fi

cat >"$WORK/receiver.yaml" <<YAML
pipeline: bench
kafka: {bootstrap_servers: "$KAFKA_BOOTSTRAP", topic: unused, consumer_group: unused}
redis: {url: "$REDIS_URL", key_prefix: $PREFIX}
format: dsdata
stage:
  receiver:
    storage: {type: list, history_depth: 100}
    batch: {max_records: 2000, max_wait: 50ms}
YAML
RUST_LOG=warn "$BIN" --config "$WORK/receiver.yaml" --listen "127.0.0.1:$PORT" \
  2>"$WORK/serve.log" &
SERVE=$!
trap 'kill "$SERVE" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
FLOOR_ADDRESS=""
if [[ "${FERRY_BENCH_FLOOR:-1}" != 0 ]]; then
  FLOOR_PORT="$(free_port)"
  FLOOR_ADDRESS="127.0.0.1:$FLOOR_PORT"
  FERRY_BENCH_FLOOR_SERVE="$FLOOR_ADDRESS" FERRY_BENCH_PREFIX="$PREFIX" REDIS_URL="$REDIS_URL" \
    "$BENCH" 2>"$WORK/floor.log" &
  FLOOR=$!
  trap 'kill "$SERVE" "$FLOOR" 2>/dev/null || true; rm -rf "$WORK"' EXIT
  FERRY_WAIT_LOG="$WORK/floor.log" wait_for 10 "the floor server on $FLOOR_ADDRESS" \
    port_open 127.0.0.1 "$FLOOR_PORT"
fi
echo "== read API vs direct LRANGE: $SOURCES sources x 100 values, ${SECONDS_PER_LEVEL}s per level, $(nproc) cores"
FERRY_BENCH_API="127.0.0.1:$PORT" FERRY_BENCH_PREFIX="$PREFIX" FERRY_BENCH_SOURCES="$SOURCES" \
  FERRY_BENCH_SECONDS="$SECONDS_PER_LEVEL" REDIS_URL="$REDIS_URL" FERRY_BENCH_FLOOR="$FLOOR_ADDRESS" \
  "$BENCH"
