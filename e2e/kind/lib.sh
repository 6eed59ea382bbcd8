# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables here are used by the scripts that source this file
# Shared by e2e/kind/up.sh, down.sh and check.sh: pinned versions, names and helpers.

# ---- pinned versions ----------------------------------------------------------------
KIND_VERSION=v0.33.0            # sigs.k8s.io/kind; kind-config.yaml pins its node image by digest
STRIMZI_CHART_VERSION=1.2.0     # Strimzi operator chart (same release as shared/strimzi-crds)
STRIMZI_CHART=oci://quay.io/strimzi-helm/strimzi-kafka-operator
VALKEY_CHART_VERSION=0.9.3      # valkey-io/valkey-helm chart "valkey" (Valkey 9, Redis protocol)
VALKEY_CHART_REPO=https://valkey.io/valkey-helm/

KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KIND_DIR/../.." && pwd)"
export REPO_ROOT
CLUSTER_NAME="${FERRY_KIND_CLUSTER:-ferry}"
KIND_CONTEXT="kind-$CLUSTER_NAME"
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
# The operator and worker images: tagged with the chart's appVersion.
FERRY_VERSION="$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_ROOT/charts/ferry/Chart.yaml")"
WORKER_IMAGE="ferry/worker:$FERRY_VERSION"
OPERATOR_IMAGE="ferry/operator:$FERRY_VERSION"

KAFKA_NS=kafka
DEMO_NS=ferry-demo
FERRY_NS=ferry-system

say() { printf '[%s %s] %s\n' "${STEP_NAME:-kind}" "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }
step() { STEP_NAME="$1"; shift; say "$*"; }

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...: runs COMMAND every 3 seconds until it
# succeeds; fails with DESCRIPTION after TIMEOUT_SECONDS. For conditions `kubectl wait`
# cannot express (a number growing past a threshold).
wait_until() {
  local what="$1" timeout="$2" deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@"; do
    if (($(date +%s) >= deadline)); then
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 3
  done
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is required but not on PATH"
  done
}

# kctl / khelm: kubectl and helm pinned to the kind cluster's context, whatever the
# user's current context is.
kctl() { kubectl --context "$KIND_CONTEXT" "$@"; }
khelm() { helm --kube-context "$KIND_CONTEXT" "$@"; }
