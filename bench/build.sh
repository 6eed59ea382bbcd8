#!/usr/bin/env bash
# Builds every contender of the benchmark, one heavy build at a time (the machine has 2
# cores): each build holds /tmp/ferry-heavy-build.lock, like the stack's own builds.
#
#   bench/build.sh [ferry] [tools] [redpanda-connect]      (no argument: all three)
#
# ferry            cargo build --release -p ferry-worker      -> $CARGO_TARGET_DIR/release/ferry-worker
#                  and worker/benches/bare_consume.rs (the bare-consumer limit)
# tools            bench/tools (own crate, not a workspace member): bench-last-per-key,
#                  bench-redis-writer, bench-latency          -> $CARGO_TARGET_DIR/release/bench-*
# redpanda-connect go build of bench/contenders/redpanda-connect (the pinned module's
#                  components)                                -> $FERRY_CACHE/bench-redpanda-connect-<v>/
# Prints nothing but progress; a build that is already there is skipped (cargo decides for
# the Rust ones).
set -euo pipefail
export FERRY_LOG_TAG=bench
# shellcheck source=e2e/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/local/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
RPC_VERSION="$(sed -n 's/^.*github.com\/redpanda-data\/connect\/v4 \(v[0-9.]*\).*$/\1/p' "$BENCH_DIR/contenders/redpanda-connect/go.mod" | head -n1)"
RPC_DIR="$FERRY_CACHE/bench-redpanda-connect-$RPC_VERSION"
export RPC_BIN="$RPC_DIR/redpanda-connect"

build_ferry() {
  step "cargo build --release -p ferry-worker, and the worker's bare_consume bench"
  (cd "$REPO_ROOT" && with_build_lock cargo build --release -q -p ferry-worker --bin ferry-worker)
  # The bare-consumer limit is the worker's own benches/bare_consume.rs; cargo names the
  # executable with a hash, so its path goes into a file bench.py reads.
  local path="$CARGO_TARGET_DIR/release/ferry-bench-bare-consume.path"
  (cd "$REPO_ROOT" && with_build_lock cargo bench -q -p ferry-worker --bench bare_consume --no-run \
      --message-format=json) \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "bare_consume" and m.get("executable"):
        print(m["executable"])' > "$path.tmp"
  [[ -s "$path.tmp" ]] || die "cargo bench --no-run did not name the bare_consume executable"
  mv "$path.tmp" "$path"
  ok "ferry-worker: $CARGO_TARGET_DIR/release/ferry-worker; bare_consume: $(cat "$path")"
}

build_tools() {
  step "cargo build --release (bench/tools)"
  # The workspace's target dir (lib.sh), so rdkafka-sys and friends built for ferry-worker
  # are reused.
  (cd "$BENCH_DIR/tools" && with_build_lock cargo build --release -q)
  ok "bench tools: $CARGO_TARGET_DIR/release/bench-{last-per-key,redis-writer,latency}"
}

build_redpanda_connect() {
  if [[ -x "$RPC_BIN" ]]; then
    ok "redpanda-connect $RPC_VERSION: cached at $RPC_BIN"
    return
  fi
  step "go build redpanda-connect $RPC_VERSION (first time: several minutes)"
  mkdir -p "$RPC_DIR"
  # go.sum is committed, so the checksum database is not needed (nor reachable here).
  (cd "$BENCH_DIR/contenders/redpanda-connect" && with_build_lock env CGO_ENABLED=0 \
      GOFLAGS="-buildvcs=false -mod=readonly" GONOSUMDB='*' GOSUMDB=off \
      go build -trimpath -ldflags "-s -w -X main.Version=$RPC_VERSION" -o "$RPC_BIN.tmp" .) \
    || die "go build of redpanda-connect failed"
  mv "$RPC_BIN.tmp" "$RPC_BIN"
  ok "redpanda-connect $RPC_VERSION: $RPC_BIN"
}

main() {
  local what=("$@")
  ((${#what[@]})) || what=(ferry tools redpanda-connect)
  local w
  for w in "${what[@]}"; do
    case "$w" in
      ferry) build_ferry ;;
      tools) build_tools ;;
      redpanda-connect) build_redpanda_connect ;;
      *) die "unknown build '$w' (ferry, tools, redpanda-connect)" ;;
    esac
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
