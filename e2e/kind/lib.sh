# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables here are used by the scripts that source this file
# Shared by e2e/kind/up.sh, down.sh and check.sh: pinned versions, names and helpers.

KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KIND_DIR/../.." && pwd)"
export REPO_ROOT

# ---- pinned versions ----------------------------------------------------------------
# kind (sigs.k8s.io/kind) is a go row of e2e/deps/deps.txt, built by the dependency step;
# kind-config.yaml pins the node image of that release by digest.
KIND_VERSION="$(awk '$1 == "go" && $2 == "kind" {sub(/.*@/, "", $3); print $3}' "$REPO_ROOT/e2e/deps/deps.txt")"
STRIMZI_CHART_VERSION=1.2.0     # Strimzi operator chart (same release as shared/strimzi-crds)
STRIMZI_CHART=oci://quay.io/strimzi-helm/strimzi-kafka-operator
VALKEY_CHART_VERSION=0.9.3      # valkey-io/valkey-helm chart "valkey" (Valkey 9, Redis protocol)
VALKEY_CHART_REPO=https://valkey.io/valkey-helm/

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
khelm() { "${HELM:-helm}" --kube-context "$KIND_CONTEXT" "$@"; }

# helm_version_supported VERSION: true for what `helm version --short` prints for Helm 3 and
# Helm 4 ("v3.22.0+g1a2b3c4", "v4.3.2"); false for Helm 2, a later major, or anything else.
helm_version_supported() {
  [[ "$1" =~ ^v(3|4)\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?$ ]]
}

# kind_tool NAME: the path of NAME: the dependency step's build (e2e/deps/deps.sh path NAME,
# a pinned go row) when it is there, else NAME on PATH; nothing when neither is.
kind_tool() {
  local p
  p="$(bash "$REPO_ROOT/e2e/deps/deps.sh" path "$1" 2>/dev/null || true)"
  if [[ -n "$p" && -x "$p" ]]; then
    printf '%s\n' "$p"
  else
    command -v "$1" 2>/dev/null || true
  fi
}

# build_image DOCKERFILE IMAGE ARCHIVE: docker build with provenance attestations off, then the
# image saved as ARCHIVE for `kind load image-archive`. Docker 29 stores images in containerd;
# an image with an attestation manifest then saves incompletely and `kind load docker-image`
# fails ("content digest ... not found", kind #3795), and docker-image's already-loaded check
# misses images it loaded before (kind #4236). An archive is always imported.
build_image() {
  local dockerfile="$1" image="$2" archive="$3"
  DOCKER_BUILDKIT=1 docker buildx build --provenance=false --load -f "$dockerfile" -t "$image" "$REPO_ROOT"
  mkdir -p "$(dirname "$archive")"
  docker image save -o "$archive" "$image"
}
