#!/usr/bin/env bash
# make bench-scaling: how fast the autoscaler reacts. From the receiver's committed lag
# crossing lagThreshold to the Deployment's spec.replicas changing, and to the new pods being
# Ready; median of FERRY_BENCH_RUNS (5) runs, beside KEDA's defaults. A benchmark, not a
# timed test. The driver is bench/scaling/driver.rs, built into the operator's faults_e2e
# test binary (the workspace's one target dir). Needs the local stack: make stack-up.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
FERRY_STACK_DIR="${FERRY_STACK_DIR:-/tmp/ferry-stack}"
[[ -f "$FERRY_STACK_DIR/env" ]] || { echo "no $FERRY_STACK_DIR/env: start the stack with make stack-up" >&2; exit 1; }
# shellcheck disable=SC1091
source "$FERRY_STACK_DIR/env"
mkdir -p target
rm -f target/bench-scaling.txt
"${CARGO:-cargo}" test -q -p ferry-operator --test faults_e2e bench_scaling_reaction -- \
  --ignored --exact --nocapture 2>&1 | tee target/bench-scaling.log | grep -E '^run [0-9]' || true
[[ -s target/bench-scaling.txt ]] || { echo "bench-scaling failed: see target/bench-scaling.log" >&2; exit 1; }
cat target/bench-scaling.txt
