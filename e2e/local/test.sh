#!/usr/bin/env bash
# `make test`: every check and every test, from a clean clone on a fresh machine.
#
#   0. the dependency step (e2e/deps/deps.sh): every package and tool, before anything uses it
#   1. static checks: rustfmt, clippy -D warnings, CRD drift
#   2. build, then the pure unit tests
#   3. the local stack (Redis, Kafka, Kubernetes with a real kubelet), the worker image
#   4. integration tests against that stack, then the chart checks
#   5. the stack comes down again (FERRY_KEEP_STACK=1 keeps it)
#
# Slow artifacts are cached outside the clone: cargo's target dir and the stack's
# builds live under $FERRY_CACHE (default ~/.cache/ferry).
set -euo pipefail
export FERRY_LOG_TAG="test"
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"

stack_started=0
finish() {
  local rc=$?
  if ((stack_started)) && [[ "${FERRY_KEEP_STACK:-0}" != 1 ]]; then
    bash "$FERRY_LOCAL_DIR/stack.sh" down || warn "stack down failed"
  fi
  phase_summary || true
  if ((rc == 0)); then ok "make test: everything passed"; else warn "make test FAILED (exit $rc)"; fi
  exit "$rc"
}
trap finish EXIT

cargo_locked() { with_build_lock cargo "$@"; }

phase_start deps
deps_install build stack test
phase_end deps

phase_start static
step "rustfmt"
cargo fmt --all -- --check
step "clippy -D warnings"
cargo_locked clippy --workspace --all-targets -- -D warnings
step "CRD drift: crds/pipeline.yaml against crdgen"
cargo run -q -p ferry-operator --bin crdgen | diff -u crds/pipeline.yaml - \
  || die "crds/pipeline.yaml is stale: run 'make crd' and commit it"
if [[ -f charts/ferry/crds/pipeline.yaml ]]; then
  diff -u crds/pipeline.yaml charts/ferry/crds/pipeline.yaml \
    || die "charts/ferry/crds/pipeline.yaml differs from crds/pipeline.yaml: run 'make crd'"
fi
phase_end static

phase_start build
cargo_locked build --workspace --all-targets
# Pods run the optimised worker: the scaling tests need its real throughput.
cargo_locked build --release -p ferry-worker --bin ferry-worker --bin ferry-api
phase_end build

phase_start unit-tests
cargo test --workspace --lib --bins
# The operator alone gets the worker crate without `runtime`, as Dockerfile.operator builds it.
cargo test -p ferry-operator --lib a_rule_that_does_not_parse
phase_end unit-tests

phase_start stack
stack_started=1
bash "$FERRY_LOCAL_DIR/stack.sh" up
# shellcheck source=/dev/null
source "$FERRY_STACK_DIR/env"
bash "$FERRY_LOCAL_DIR/images.sh" worker "$CARGO_TARGET_DIR/release/ferry-worker" \
  "$CARGO_TARGET_DIR/release/ferry-api"
phase_end stack

phase_start integration-tests
cargo test --workspace --no-fail-fast --test '*' -- --test-threads=2
phase_end integration-tests

phase_start chart
step "chart: helm lint, kubeconform -strict, RBAC and values checks"
bash e2e/chart/check.sh
step "kind path: shellcheck, hadolint, server-side dry run of its manifests"
bash e2e/kind/check.sh
step "chart: a real helm install and uninstall on the local cluster"
FERRY_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/ferry-operator" bash e2e/chart/install-test.sh
phase_end chart
