#!/usr/bin/env bash
# make bench: the local stack's Redis and Kafka (started when they are not up), every
# contender built (bench/build.sh), then bench/bench.py, which writes
# bench/results/results.md and bench/results/throughput.svg.
#
#   make bench                     everything (about 15 minutes on 2 cores, once built)
#   BENCH_RUNS=1 BENCH_RECORDS=200000 make bench       a quick look
#   BENCH_CONTENDERS=ferry,redis-benchmark make bench  some contenders only
# More knobs: the docstring of bench/bench.py.
set -euo pipefail
export FERRY_LOG_TAG=bench
# shellcheck source=e2e/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/local/lib.sh"

if ! FERRY_STACK_K8S=0 bash "$FERRY_LOCAL_DIR/stack.sh" status redis kafka >/dev/null 2>&1; then
  step "starting the local stack's Redis and Kafka"
  FERRY_STACK_K8S=0 bash "$FERRY_LOCAL_DIR/stack.sh" up redis kafka
fi
bash "$REPO_ROOT/bench/build.sh"
exec python3 "$REPO_ROOT/bench/bench.py"
