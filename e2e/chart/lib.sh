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

CHART_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CHART_LIB_DIR/../.." && pwd)"
export REPO_ROOT
export CHART_DIR="$REPO_ROOT/charts/ferry"
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
FERRY_STACK_DIR="${FERRY_STACK_DIR:-/tmp/ferry-stack}"
FERRY_BIN="${FERRY_BIN:-$FERRY_STACK_DIR/bin}"

say() { printf '[%s %s] %s\n' "${CHECK_NAME:-check}" "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# _chart_tool NAME: prints the path of a working NAME, or nothing: the stack's bin dir
# first (it links the pinned helm and kubeconform, and the cluster's kubectl), then the
# dependency step's build, then PATH.
_chart_tool() {
  local name="$1" c
  for c in "$FERRY_BIN/$name" "$(bash "$REPO_ROOT/e2e/deps/deps.sh" path "$name" 2>/dev/null)"; do
    if [[ -n "$c" && -x "$c" ]]; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  command -v "$name" 2>/dev/null || true
}

# need_helm / need_kubeconform: set HELM (Helm 3) / KUBECONFORM. Both are go rows of
# e2e/deps/deps.txt, built by the dependency step; these scripts never build or install.
need_helm() {
  HELM="$(_chart_tool helm)"
  [[ -n "$HELM" ]] || die "helm is not installed: run 'make deps' (e2e/deps/deps.txt)"
  export HELM
}

# need_helm4: set HELM4, Helm 4 (the go row helm4 of e2e/deps/deps.txt), for the checks that
# run the chart through both majors.
need_helm4() {
  HELM4="$(_chart_tool helm4)"
  [[ -n "$HELM4" ]] || die "helm4 is not installed: run 'make deps' (e2e/deps/deps.txt)"
  export HELM4
}

need_kubeconform() {
  KUBECONFORM="$(_chart_tool kubeconform)"
  [[ -n "$KUBECONFORM" ]] || die "kubeconform is not installed: run 'make deps' (e2e/deps/deps.txt)"
  export KUBECONFORM
}

# need_pyyaml: PyYAML for the schema and RBAC scripts, from the dependency step's venv.
need_pyyaml() {
  command -v python3 >/dev/null || die "python3 is required"
  python3 -c 'import yaml' 2>/dev/null ||
    die "PyYAML is missing for $(command -v python3): run 'make deps' (e2e/deps/deps.txt)"
}

# ---- kubeconform schemas --------------------------------------------------------------
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}" # matches e2e/local/k8s.sh; the kind node image is 1.34 too
# Strimzi 1.2.0's real CRDs where the shared folder is beside the clone (STRIMZI_CRDS_DIR
# overrides where), else the project's minimal stand-ins: a clone alone must pass too.
STRIMZI_CRDS_DIR="${STRIMZI_CRDS_DIR:-$REPO_ROOT/../shared/strimzi-crds}"
STRIMZI_MINIMAL_CRDS_DIR="$REPO_ROOT/e2e/strimzi-minimal"
# One field manager for either set (as in the operator tests), so a switch of sets leaves
# none of the other set's labels behind; the schema list is replaced whole either way.
STRIMZI_CRDS_FIELD_MANAGER=ferry-strimzi-crds

# choose_strimzi_crds: sets STRIMZI_CRDS (the CRD files of the chosen set) and says which.
choose_strimzi_crds() {
  local dir="$STRIMZI_CRDS_DIR" set="Strimzi 1.2.0's real CRDs"
  if [[ ! -d "$dir" ]]; then
    dir="$STRIMZI_MINIMAL_CRDS_DIR"
    set="the project's minimal Strimzi CRDs ($STRIMZI_CRDS_DIR does not exist)"
  fi
  mapfile -t STRIMZI_CRDS < <(find "$dir" -maxdepth 1 -name '0*-Crd-*.yaml' | sort)
  ((${#STRIMZI_CRDS[@]} > 0)) || die "no Strimzi CRDs (0*-Crd-*.yaml) in $dir"
  say "strimzi: using $set, from $dir"
}

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
# CRD, the chosen Strimzi CRDs and e2e/chart/schemas/), STRIMZI_CRDS and KUBECONFORM_SKIP.
prepare_schemas() {
  local work="$1" gen_rev
  gen_rev="$(sha256sum "$CHART_LIB_DIR/schemas.py" | cut -c1-12)"
  BUILTIN_SCHEMAS="$FERRY_CACHE/kubeconform-schemas/k8s-$KUBE_VERSION-$gen_rev"
  if [[ ! -f "$BUILTIN_SCHEMAS/.complete" ]]; then
    rm -rf "$BUILTIN_SCHEMAS"
    python3 "$CHART_LIB_DIR/schemas.py" builtin "$(_swagger_json "$work")" "$BUILTIN_SCHEMAS" >/dev/null ||
      die "cannot generate the built-in schemas"
    touch "$BUILTIN_SCHEMAS/.complete"
  fi
  CRD_SCHEMAS="$work/crd-schemas"
  choose_strimzi_crds
  python3 "$CHART_LIB_DIR/schemas.py" crd "$CRD_SCHEMAS" "$CHART_DIR/crds/pipeline.yaml" "${STRIMZI_CRDS[@]}" >/dev/null ||
    die "cannot generate the CRD schemas"
  cp "$CHART_LIB_DIR"/schemas/*.json "$CRD_SCHEMAS/"
  KUBECONFORM_SKIP=()
  say "schemas: $(find "$BUILTIN_SCHEMAS" -name '*.json' | wc -l) built-in ($KUBE_VERSION), $(find "$CRD_SCHEMAS" -name '*.json' | wc -l) custom ($(find "$CRD_SCHEMAS" -name '*.json' -printf '%f ' | sort))"
}

# kubeconform_run FILE...: strict validation against the prepared schemas only (offline).
kubeconform_run() {
  "$KUBECONFORM" -strict -summary -kubernetes-version "${KUBE_VERSION#v}" \
    -schema-location "$BUILTIN_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "${KUBECONFORM_SKIP[@]}" "$@"
}
