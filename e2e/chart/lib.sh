# shellcheck shell=bash
# shellcheck disable=SC2034 # some variables here are used only by the scripts that source this file
# Sourced by the chart and kind checks: paths, messages and the helm/kubeconform lookup.
#
# helm and kubeconform are looked up, in this order, in $FERRY_BIN (where
# e2e/local/k8s.sh links them), in the shared cache folder that k8s.sh builds
# into, and on PATH. When none has them they are built from their Go modules
# into that same cache folder, under the machine-wide heavy-build lock (Rust and
# Go builds must not overlap on a 2-core machine). The versions match k8s.sh so
# both scripts share one build.

CHART_HELM_VERSION="${CHART_HELM_VERSION:-v3.22.0}"              # helm.sh/helm/v3, newest 3.x
CHART_KUBECONFORM_VERSION="${CHART_KUBECONFORM_VERSION:-v0.8.0}" # github.com/yannh/kubeconform

CHART_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CHART_LIB_DIR/../.." && pwd)"
export REPO_ROOT
export CHART_DIR="$REPO_ROOT/charts/ferry"
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
FERRY_STACK_DIR="${FERRY_STACK_DIR:-/tmp/ferry-stack}"
FERRY_BIN="${FERRY_BIN:-$FERRY_STACK_DIR/bin}"
FERRY_HEAVY_BUILD_LOCK="${FERRY_HEAVY_BUILD_LOCK:-/tmp/ferry-heavy-build.lock}"
CHART_TOOLS_DIR="$FERRY_CACHE/tools-helm-${CHART_HELM_VERSION}_kubeconform-${CHART_KUBECONFORM_VERSION}/bin"

say() { printf '[%s %s] %s\n' "${CHECK_NAME:-check}" "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# _chart_tool NAME: prints the path of a working NAME, or nothing.
_chart_tool() {
  local name="$1" c
  for c in "$FERRY_BIN/$name" "$CHART_TOOLS_DIR/$name"; do
    if [[ -x "$c" ]]; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  command -v "$name" 2>/dev/null || true
}

_chart_go_install() {
  local name="$1" pkg="$2" ldflags="$3"
  command -v go >/dev/null || die "$name is missing and there is no Go toolchain to build it"
  command -v flock >/dev/null || die "$name is missing and flock (util-linux) is not installed"
  mkdir -p "$CHART_TOOLS_DIR"
  say "building $pkg into $CHART_TOOLS_DIR (waits for $FERRY_HEAVY_BUILD_LOCK)"
  flock "$FERRY_HEAVY_BUILD_LOCK" env CGO_ENABLED=0 GOBIN="$CHART_TOOLS_DIR" GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "$ldflags" "$pkg" || die "go install $pkg failed"
}

# need_helm / need_kubeconform: set HELM / KUBECONFORM, building them when missing.
need_helm() {
  HELM="$(_chart_tool helm)"
  if [[ -z "$HELM" ]]; then
    _chart_go_install helm "helm.sh/helm/v3/cmd/helm@$CHART_HELM_VERSION" \
      "-s -w -X helm.sh/helm/v3/internal/version.version=$CHART_HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    HELM="$CHART_TOOLS_DIR/helm"
  fi
  export HELM
}

need_kubeconform() {
  KUBECONFORM="$(_chart_tool kubeconform)"
  if [[ -z "$KUBECONFORM" ]]; then
    _chart_go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$CHART_KUBECONFORM_VERSION" \
      "-s -w -X main.version=$CHART_KUBECONFORM_VERSION"
    KUBECONFORM="$CHART_TOOLS_DIR/kubeconform"
  fi
  export KUBECONFORM
}

# need_pyyaml: PyYAML for the schema and RBAC scripts (pip-installed when absent).
need_pyyaml() {
  command -v python3 >/dev/null || die "python3 is required"
  if ! python3 -c 'import yaml' 2>/dev/null; then
    say "installing PyYAML with pip"
    python3 -m pip install --quiet 'PyYAML>=6,<7' || die "cannot install PyYAML"
  fi
}

# ---- kubeconform schemas --------------------------------------------------------------
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}" # matches e2e/local/k8s.sh; the kind node image is 1.34 too
STRIMZI_CRDS_DIR="${STRIMZI_CRDS_DIR:-$REPO_ROOT/../shared/strimzi-crds}"

# _swagger_json WORKDIR: the OpenAPI v2 spec of k8s.io/kubernetes@$KUBE_VERSION, from the Go
# module cache (where e2e/local/k8s.sh's build leaves it), else downloaded as a Go module.
_swagger_json() {
  local modcache f
  modcache="$(go env GOMODCACHE 2>/dev/null || true)"
  f="$modcache/k8s.io/kubernetes@$KUBE_VERSION/api/openapi-spec/swagger.json"
  if [[ -n "$modcache" && ! -f "$f" ]]; then
    say "fetching the Go module k8s.io/kubernetes@$KUBE_VERSION for its OpenAPI spec"
    (cd "$1" && GOFLAGS=-mod=mod go mod download "k8s.io/kubernetes@$KUBE_VERSION") >&2 ||
      die "cannot download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
  fi
  [[ -f "$f" ]] || die "no OpenAPI spec for $KUBE_VERSION (looked for $f)"
  printf '%s\n' "$f"
}

# prepare_schemas WORKDIR: sets BUILTIN_SCHEMAS (cached per Kubernetes version and per
# revision of schemas.py), CRD_SCHEMAS (made fresh in WORKDIR from the chart's Pipeline
# CRD, the Strimzi CRDs and e2e/chart/schemas/) and KUBECONFORM_SKIP.
prepare_schemas() {
  local work="$1" gen_rev strimzi_crds=()
  gen_rev="$(sha256sum "$CHART_LIB_DIR/schemas.py" | cut -c1-12)"
  BUILTIN_SCHEMAS="$FERRY_CACHE/kubeconform-schemas/k8s-$KUBE_VERSION-$gen_rev"
  if [[ ! -f "$BUILTIN_SCHEMAS/.complete" ]]; then
    rm -rf "$BUILTIN_SCHEMAS"
    python3 "$CHART_LIB_DIR/schemas.py" builtin "$(_swagger_json "$work")" "$BUILTIN_SCHEMAS" >/dev/null ||
      die "cannot generate the built-in schemas"
    touch "$BUILTIN_SCHEMAS/.complete"
  fi
  CRD_SCHEMAS="$work/crd-schemas"
  if [[ -d "$STRIMZI_CRDS_DIR" ]]; then
    mapfile -t strimzi_crds < <(find "$STRIMZI_CRDS_DIR" -maxdepth 1 -name '0*-Crd-*.yaml' | sort)
  fi
  python3 "$CHART_LIB_DIR/schemas.py" crd "$CRD_SCHEMAS" "$CHART_DIR/crds/pipeline.yaml" "${strimzi_crds[@]}" >/dev/null ||
    die "cannot generate the CRD schemas"
  cp "$CHART_LIB_DIR"/schemas/*.json "$CRD_SCHEMAS/"
  KUBECONFORM_SKIP=()
  if ((${#strimzi_crds[@]} == 0)); then
    say "no Strimzi CRDs at $STRIMZI_CRDS_DIR: Strimzi kinds are skipped"
    KUBECONFORM_SKIP=(-skip "Kafka,KafkaNodePool,KafkaTopic")
  fi
  say "schemas: $(find "$BUILTIN_SCHEMAS" -name '*.json' | wc -l) built-in ($KUBE_VERSION), $(find "$CRD_SCHEMAS" -name '*.json' | wc -l) custom ($(find "$CRD_SCHEMAS" -name '*.json' -printf '%f ' | sort))"
}

# kubeconform_run FILE...: strict validation against the prepared schemas only (offline).
kubeconform_run() {
  "$KUBECONFORM" -strict -summary -kubernetes-version "${KUBE_VERSION#v}" \
    -schema-location "$BUILTIN_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "${KUBECONFORM_SKIP[@]}" "$@"
}
