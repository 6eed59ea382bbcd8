#!/usr/bin/env bash
# Static checks of charts/ferry, runnable offline (the Makefile's `chart-check`):
#   1. the chart's CRD copy matches the generated crds/pipeline.yaml;
#   2. helm lint, and every value is documented in README.md and typed in the schema;
#   3. for several value sets (defaults, HA with every option, single-namespace mode, the
#      kind path's values): helm template | kubeconform -strict against JSON schemas made
#      here from the Kubernetes OpenAPI spec and the Pipeline/Strimzi CRDs, and the RBAC
#      least-privilege check;
#   4. values the schema or the templates must reject are rejected, with their message;
#   5. the sample Pipelines validate against the Pipeline CRD's schema.
# Ends with one "chart-check: N passed, N failed" line; exits 1 when any step failed.
set -euo pipefail
CHECK_NAME=chart-check
# shellcheck source=e2e/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


need_helm
need_kubeconform
need_pyyaml

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*" >&2; }

prepare_schemas "$WORK"

# ---- 1. CRD copy ---------------------------------------------------------------
if "$CHART_LIB_DIR/check-crd-copy.sh"; then pass "CRD copy"; else fail "CRD copy"; fi

# ---- 2. lint -------------------------------------------------------------------
if "$HELM" lint --strict "$CHART_DIR" --kube-version "${KUBE_VERSION#v}" >"$WORK/lint.log" 2>&1; then
  pass "helm lint ($(tail -n1 "$WORK/lint.log"))"
else
  cat "$WORK/lint.log" >&2
  fail "helm lint"
fi

# ---- 2b. every value documented and in the schema -----------------------------------
if docs_out="$(python3 "$CHART_LIB_DIR/check-docs.py" "$CHART_DIR" 2>&1)"; then
  pass "every value in README.md's table and values.schema.json ($docs_out)"
else
  printf '%s\n' "$docs_out" >&2
  fail "values documentation"
fi

# ---- 3. render + kubeconform + RBAC per value set ------------------------------
# name | helm args | check-rbac.py flags
scenarios=(
  "defaults||--expect-strimzi"
  "ha-all-options|--set replicaCount=2 --set manualScaling=true --set strimzi.manageTopics=true --set strimzi.kafkaNamespaces={kafka,kafka-eu} --set worker.allowedImages={registry.example/ferry/worker:*} --set metrics.serviceMonitor.enabled=true --set networkPolicy.enabled=true --set networkPolicy.egress.enabled=true --set-json networkPolicy.metricsFrom=[{\"namespaceSelector\":{\"matchLabels\":{\"kubernetes.io/metadata.name\":\"monitoring\"}}}]|--expect-strimzi --expect-lease --expect-scale --expect-topics kafka,kafka-eu"
  "single-namespace|--set watchNamespace=apps --set strimzi.enabled=false --set leaderElection.enabled=true|--namespaced --expect-lease"
  "read-api|--set readApi.enabled=true|--expect-strimzi --expect-api"
  "single-namespace-read-api|--set watchNamespace=apps --set readApi.enabled=true|--namespaced --expect-strimzi --expect-api"
  "single-namespace-topics|--set watchNamespace=apps --set strimzi.manageTopics=true|--namespaced --expect-strimzi --expect-topics apps"
  "no-rbac-no-sa|--set rbac.create=false --set serviceAccount.create=false --set serviceAccount.name=ferry-admin-made|"
  "kind-path|-f $REPO_ROOT/e2e/kind/ferry-values.yaml|--expect-strimzi"
)
for scenario in "${scenarios[@]}"; do
  IFS='|' read -r name helm_args rbac_flags <<<"$scenario"
  out="$WORK/$name.yaml"
  # shellcheck disable=SC2086 # helm_args and rbac_flags are word lists by design
  if ! "$HELM" template ferry "$CHART_DIR" --namespace ferry-system --include-crds \
    --kube-version "${KUBE_VERSION#v}" $helm_args >"$out" 2>"$WORK/$name.err"; then
    cat "$WORK/$name.err" >&2
    fail "$name: helm template"
    continue
  fi
  if summary="$(kubeconform_run "$out" 2>&1)"; then
    pass "$name: kubeconform: ${summary##*$'\n'}"
  else
    printf '%s\n' "$summary" >&2
    fail "$name: kubeconform"
  fi
  if [[ "$name" == no-rbac-no-sa ]]; then
    if grep -qE '^kind: (Cluster)?Role(Binding)?$|^kind: ServiceAccount$' "$out"; then
      fail "$name: RBAC or ServiceAccount rendered although both are turned off"
    else
      pass "$name: no RBAC objects and no ServiceAccount rendered"
    fi
    continue
  fi
  # shellcheck disable=SC2086
  if rbac_out="$(python3 "$CHART_LIB_DIR/check-rbac.py" $rbac_flags "$out" 2>&1)"; then
    pass "$name: $rbac_out"
  else
    printf '%s\n' "$rbac_out" >&2
    fail "$name: RBAC"
  fi
done

# Hardened pod and leader-election wiring, on the HA rendering.
ha="$WORK/ha-all-options.yaml"
if [[ -f "$ha" ]] && python3 - "$ha" "$WORK/defaults.yaml" <<'PY'
import sys, yaml
def deployment(path):
    return next(d for d in yaml.safe_load_all(open(path)) if d and d.get("kind") == "Deployment")
def env(dep):
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}, c
ha, default = deployment(sys.argv[1]), deployment(sys.argv[2])
problems = []
for dep, want in ((ha, "true"), (default, "false")):
    e, c = env(dep)
    if e.get("FERRY_LEADER_ELECTION") != want:
        problems.append(f"replicas={dep['spec']['replicas']}: FERRY_LEADER_ELECTION={e.get('FERRY_LEADER_ELECTION')}, want {want}")
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if (e.get(var) or {}).get("fieldRef", {}).get("fieldPath") != field:
            problems.append(f"{var} is not the downward API's {field}")
    sc, psc = c["securityContext"], dep["spec"]["template"]["spec"]["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"] and psc.get("runAsNonRoot")
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        problems.append(f"the operator pod is not hardened: {psc} {sc}")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append("probes are not on /healthz and /readyz")
    if e.get("FERRY_WORKER_IMAGE") != "ferry/worker:0.1.0" or c["image"] != "ferry/operator:0.1.0":
        problems.append(f"images default wrongly: {c['image']}, worker {e.get('FERRY_WORKER_IMAGE')}")
    allowed = "registry.example/ferry/worker:*" if dep is ha else None
    if e.get("FERRY_ALLOWED_WORKER_IMAGES") != allowed:
        problems.append(f"FERRY_ALLOWED_WORKER_IMAGES={e.get('FERRY_ALLOWED_WORKER_IMAGES')}, want {allowed} (worker.allowedImages)")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
then
  pass "operator Deployment: hardened pod, probes, downward API, default images, the worker image allow-list, leader election follows replicaCount"
else
  fail "operator Deployment wiring"
fi

# ---- 4. values that must be rejected --------------------------------------------
# helm args | substring of the expected error
rejections=(
  "--set logFormat=xml|value must be one of 'json', 'pretty'"
  "--set replicaCount=0|/replicaCount"
  "--set image.tag=1.0:bad|/image/tag"
  "--set imagePullPolicy=Always|additional properties 'imagePullPolicy' not allowed"
  "--set watchNamespace=Not_A_Namespace|/watchNamespace"
  "--set strimzi.manageTopics=yes|/strimzi/manageTopics"
  "--set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false|needs metrics.service.enabled"
  "--set strimzi.manageTopics=true --set strimzi.enabled=false|needs strimzi.enabled"
  "--set strimzi.manageTopics=true|strimzi.manageTopics needs strimzi.kafkaNamespaces"
  "--set strimzi.kafkaNamespaces={Not_A_Namespace}|/strimzi/kafkaNamespaces/0"
  "--set replicaCount=3 --set leaderElection.enabled=false|several active operators"
  "--set httpPort=80|/httpPort"
)
for rejection in "${rejections[@]}"; do
  IFS='|' read -r helm_args want <<<"$rejection"
  # shellcheck disable=SC2086
  if "$HELM" template ferry "$CHART_DIR" $helm_args >/dev/null 2>"$WORK/reject.err"; then
    fail "accepted bad values: $helm_args"
  elif grep -qF -- "$want" "$WORK/reject.err"; then
    pass "rejected $helm_args ($(grep -F -- "$want" "$WORK/reject.err" | head -n1 | sed 's/^[- ]*//'))"
  else
    cat "$WORK/reject.err" >&2
    fail "rejected $helm_args, but without the message '$want'"
  fi
done

# ---- 5. sample manifests against the CRD schemas ---------------------------------
samples=("$REPO_ROOT/examples/pipeline.yaml" "$REPO_ROOT/e2e/kind/pipeline.yaml" "$REPO_ROOT/e2e/kind/kafka.yaml")
for f in "$REPO_ROOT"/e2e/kind/*-job.yaml; do [[ -f "$f" ]] && samples+=("$f"); done
if summary="$(kubeconform_run "${samples[@]}" 2>&1)"; then
  pass "sample manifests: ${summary##*$'\n'}"
else
  printf '%s\n' "$summary" >&2
  fail "sample manifests"
fi

echo "chart-check: $passed passed, $failed failed"
((failed == 0))
