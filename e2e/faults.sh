#!/usr/bin/env bash
# make test-faults: every fault test at full size, then one table of them all.
#
#   receiver SIGKILL every 5 s       1,000,000 records (FERRY_FAULT_KILL_RECORDS)
#   Redis outage, Redis AOF SIGKILL, Kafka outage, slow Redis, rebalances, operator SIGKILL
#                                    FERRY_FAULT_RECORDS records (200,000)
#   no flapping                      5 minutes of steady lag (FERRY_NO_FLAP_SECS)
#
# Redis and Kafka that a test stops are the test's own (free loopback ports, temp dirs); the
# shared stack is never stopped. Needs the local stack: make stack-up.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
FERRY_STACK_DIR="${FERRY_STACK_DIR:-/tmp/ferry-stack}"
[[ -f "$FERRY_STACK_DIR/env" ]] || { echo "no $FERRY_STACK_DIR/env: start the stack with make stack-up" >&2; exit 1; }
# shellcheck disable=SC1091
source "$FERRY_STACK_DIR/env"
# lib.sh's locations: the one cargo target dir every script builds into, so that a fault run
# reuses the stack's and the benchmarks' builds instead of a second tree in the clone.
# shellcheck source=e2e/local/lib.sh
source "$REPO_ROOT/e2e/local/lib.sh"

export FERRY_FAULT_REPORT="$REPO_ROOT/target/fault-report.tsv"
LOGS="$REPO_ROOT/target/fault-logs"
mkdir -p "$LOGS"
: >"$FERRY_FAULT_REPORT"
CARGO="${CARGO:-cargo}"
KILL_RECORDS="${FERRY_FAULT_KILL_RECORDS:-1000000}"
RECORDS="${FERRY_FAULT_RECORDS:-200000}"

echo "==> building the worker (simulator) and the test binaries"
"$CARGO" build -q -p ferry-worker --bin ferry-worker
"$CARGO" test -q -p ferry-worker --test faults --test position --no-run
"$CARGO" test -q -p ferry-operator --test faults_e2e --test no_flapping --no-run
# The operator's fault tests run worker pods: their image comes from this tree's release
# build, imported again in case the stack's Kubernetes was started after the last import.
echo "==> importing the worker image (ferry/worker:dev)"
"$CARGO" build -q --release -p ferry-worker --bin ferry-worker --bin ferry-api
release="$CARGO_TARGET_DIR/release"
bash "$REPO_ROOT/e2e/local/images.sh" worker "$release/ferry-worker" "$release/ferry-api"

failed=()
run() { # name, env assignments..., -- cargo test args...
  local name="$1"; shift
  local envs=()
  while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
  shift
  echo "==> $name (log $LOGS/$name.log)"
  if ! env "${envs[@]}" "$CARGO" test -q "$@" >"$LOGS/$name.log" 2>&1; then
    failed+=("$name")
    echo "    FAILED: $(grep -m1 -E "panicked|error" "$LOGS/$name.log" || tail -n1 "$LOGS/$name.log")"
  fi
}

run kills "FERRY_FAULT_RECORDS=$KILL_RECORDS" -- -p ferry-worker --test faults fault_receivers_sigkilled -- --nocapture
run worker-faults "FERRY_FAULT_RECORDS=$RECORDS" -- -p ferry-worker --test faults -- --skip fault_receivers_sigkilled --include-ignored --test-threads=2 --nocapture
run position "FERRY_FAULT_RECORDS=$RECORDS" -- -p ferry-worker --test position -- --test-threads=1 --nocapture
run operator-faults "FERRY_FAULT_RECORDS=$RECORDS" -- -p ferry-operator --test faults_e2e -- --test-threads=1 --nocapture
run no-flapping "FERRY_NO_FLAP_SECS=${FERRY_NO_FLAP_SECS:-300}" -- -p ferry-operator --test no_flapping -- --ignored --nocapture

echo
echo "== Faults: Redis against the oracle of what was produced (lost and duplicated must be 0) =="
{
  printf 'fault\tproduced\tfound\tlost\tduplicated\tkeys wrong\tworker peak RSS (MiB)\tnotes\n'
  cat "$FERRY_FAULT_REPORT"
} | column -t -s $'\t'
if ((${#failed[@]})); then
  echo
  echo "FAILED: ${failed[*]} (logs in $LOGS)"
  exit 1
fi
