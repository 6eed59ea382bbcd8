#!/usr/bin/env bash
# Installs charts/ferry into a real API server (the local stack's: e2e/local/stack.sh up k8s)
# and checks what only a real cluster can tell:
#   1. helm install --dry-run=server accepts the chart;
#   2. a real install with 2 replicas rolls out: both pods pass /readyz, one holds the Lease;
#   3. the ServiceAccount can do what the operator needs and nothing more (kubectl auth can-i);
#   4. the operator reconciles a Pipeline with the chart's RBAC: ConfigMap, receiver
#      Deployment and status are written;
#   5. helm uninstall removes every object the chart made (the CRD stays, as Helm intends).
# Steps 2 and 4 need the operator image in the cluster's containerd: it is built from
# target/{release,debug}/ferry-operator with e2e/local/images.sh as ferry/operator:chart-test.
# Without it (or when other Pipelines exist in the cluster, which a cluster-wide operator
# would reconcile too) the chart is installed with replicaCount 0 and only the objects,
# RBAC and uninstall are checked.
# Ends with one "install-test: N passed, N failed" line.
set -euo pipefail
CHECK_NAME=install-test
# shellcheck source=e2e/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_helm
if [[ -z "${KUBECONFIG:-}" && -f "$FERRY_STACK_DIR/env" ]]; then
  KUBECONFIG="$(sed -n 's/^export KUBECONFIG=//p' "$FERRY_STACK_DIR/env")"
  export KUBECONFIG
fi
KUBECTL="$(_chart_tool kubectl)"
[[ -n "$KUBECTL" ]] || die "kubectl not found"
"$KUBECTL" get --raw /readyz >/dev/null 2>&1 ||
  die "no reachable API server (KUBECONFIG=${KUBECONFIG:-unset}); start one with e2e/local/stack.sh up k8s"

suffix="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
RELEASE="ferry-it-$suffix"
NS="ferry-chart-it-$suffix"
SA="$RELEASE" # fullname: the release name already contains the chart name
passed=0
failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*" >&2; }
k() { "$KUBECTL" "$@"; }

cleanup() {
  if "$HELM" status "$RELEASE" -n "$NS" >/dev/null 2>&1; then
    "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout 2m >/dev/null 2>&1 || true
  fi
  k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ---- the operator image ---------------------------------------------------------------
run_operator=0
operator_bin=""
for b in "${FERRY_OPERATOR_BIN:-}" "$REPO_ROOT/target/release/ferry-operator" "$REPO_ROOT/target/debug/ferry-operator"; do
  if [[ -n "$b" && -x "$b" ]]; then operator_bin="$b"; break; fi
done
others="$(k get pipelines -A --no-headers 2>/dev/null | wc -l || true)"
if [[ "${others:-0}" -gt 0 ]]; then
  say "$others Pipeline(s) already exist in the cluster: a second, cluster-wide operator would reconcile them too; installing with replicaCount=0"
elif [[ -z "$operator_bin" ]]; then
  say "no ferry-operator binary (cargo build -p ferry-operator): installing with replicaCount=0"
else
  # A copy: cargo may rewrite the binary while the image is being built.
  copy_dir="$(mktemp -d)"
  cp "$operator_bin" "$copy_dir/ferry-operator"
  if bash "$REPO_ROOT/e2e/local/images.sh" image ferry/operator:chart-test "$copy_dir/ferry-operator" >/dev/null 2>&1; then
    run_operator=1
    say "operator image ferry/operator:chart-test built from $operator_bin"
  else
    say "cannot load an operator image (e2e/local/images.sh failed): installing with replicaCount=0"
  fi
  rm -rf "$copy_dir"
fi

replicas=0
((run_operator)) && replicas=2
install_args=(
  "$RELEASE" "$CHART_DIR" --namespace "$NS" --create-namespace
  --set "replicaCount=$replicas" --set leaderElection.enabled=true --set "leaderElection.leaseName=$RELEASE"
  --set image.repository=ferry/operator --set image.tag=chart-test --set image.pullPolicy=Never
  --set worker.image.repository=ferry/worker --set worker.image.tag=dev --set logFormat=pretty
  --set metrics.serviceMonitor.enabled=false --set networkPolicy.enabled=true
  --set-json 'networkPolicy.metricsFrom=[{"podSelector":{}}]'
)

# ---- 1. dry run ----------------------------------------------------------------------------
if out="$("$HELM" install "${install_args[@]}" --dry-run=server 2>&1)"; then
  pass "helm install --dry-run=server: $(grep -c '^kind:' <<<"$out") objects rendered and accepted"
else
  printf '%s\n' "$out" >&2
  fail "helm install --dry-run=server"
fi

# ---- 2. real install ---------------------------------------------------------------------------
if "$HELM" install "${install_args[@]}" --wait --timeout 4m >/dev/null; then
  pass "helm install $RELEASE into $NS (replicaCount=$replicas) --wait"
else
  fail "helm install"
  k -n "$NS" get pods -o wide >&2 || true
  k -n "$NS" logs "deploy/$RELEASE" --tail=30 >&2 || true
fi
if ((run_operator)); then
  if k -n "$NS" rollout status "deploy/$RELEASE" --timeout=120s >/dev/null &&
    [[ "$(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.status.readyReplicas}')" == 2 ]]; then
    pass "2 operator pods Ready (readiness probe /readyz passed)"
  else
    fail "operator pods not Ready"
  fi
  holder=""
  deadline=$(($(date +%s) + 60))
  while (($(date +%s) < deadline)); do
    holder="$(k -n "$NS" get lease "$RELEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
    [[ -n "$holder" ]] && break
    sleep 2
  done
  if [[ -n "$holder" ]] && k -n "$NS" get pod "$holder" >/dev/null 2>&1; then
    pass "Lease $NS/$RELEASE held by operator pod $holder (leader election with the chart's Role)"
  else
    fail "no operator pod holds Lease $NS/$RELEASE (holder: '${holder:-none}')"
  fi
fi

# ---- 3. what the ServiceAccount may do ------------------------------------------------------------
as=(--as "system:serviceaccount:$NS:$SA")
can() { [[ "$(k auth can-i "${as[@]}" "$@" 2>/dev/null)" == yes ]]; }
rbac_ok=1
for allowed in "list pipelines.ferry.dev -A" "watch pipelines.ferry.dev -A" "patch pipelines.ferry.dev --subresource=status -n default" \
  "create deployments.apps -n default" "delete configmaps -n default" "create events.events.k8s.io -n default" \
  "patch events -n default" "watch kafkas.kafka.strimzi.io -A" "create leases.coordination.k8s.io -n $NS" \
  "patch leases.coordination.k8s.io/$RELEASE -n $NS"; do
  # shellcheck disable=SC2086 # word lists by design
  can $allowed || { rbac_ok=0; say "ServiceAccount may not: $allowed" >&2; }
done
for denied in "get secrets -n $NS" "list secrets -A" "update pipelines.ferry.dev -n default" "delete pipelines.ferry.dev -n default" \
  "create leases.coordination.k8s.io -n default" "patch leases.coordination.k8s.io/other -n $NS" \
  "create kafkatopics.kafka.strimzi.io -n default" "patch pipelines.ferry.dev --subresource=scale -n default" \
  "create pods -n default" "get nodes" "create clusterroles"; do
  # shellcheck disable=SC2086
  if can $denied; then rbac_ok=0; say "ServiceAccount may, but should not: $denied" >&2; fi
done
if ((rbac_ok)); then
  pass "kubectl auth can-i: 10 needed permissions granted, 11 others (Secrets, other Leases, topics, scale, pods, nodes, RBAC) denied"
else
  fail "ServiceAccount permissions"
fi

# ---- 4. the operator reconciles a Pipeline with these permissions -------------------------------------
if ((run_operator)); then
  k apply -f - >/dev/null <<EOF
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata:
  name: chart-it
  namespace: $NS
spec:
  kafka:
    bootstrapServers: ${KAFKA_BOOTSTRAP:-127.0.0.1:19092}
    topic: chart-it
  redis:
    host: ${REDIS_HOST:-127.0.0.1}
    port: ${REDIS_PORT:-16379}
  receiver:
    storage:
      type: list
      historyDepth: 10
EOF
  if k -n "$NS" wait deploy/chart-it-receiver --for=create --timeout=90s >/dev/null 2>&1 &&
    k -n "$NS" get configmap -l app.kubernetes.io/managed-by=ferry-operator -o name | grep -q . &&
    k -n "$NS" wait pipeline/chart-it --for=jsonpath='{.status.conditions[0].type}' --timeout=60s >/dev/null 2>&1; then
    pass "operator reconciled Pipeline chart-it: ConfigMap, Deployment chart-it-receiver and status written"
  else
    k -n "$NS" get pipeline,deploy,configmap -o wide >&2 || true
    k -n "$NS" logs "deploy/$RELEASE" --tail=40 >&2 || true
    fail "operator did not reconcile Pipeline chart-it"
  fi
  # Any "forbidden" from the API server in any operator pod's log is a missing permission.
  logs="$(k -n "$NS" logs -l "app.kubernetes.io/instance=$RELEASE" --tail=-1 --prefix 2>&1 || true)"
  if grep -qi forbidden <<<"$logs"; then
    grep -i forbidden <<<"$logs" | head -n 5 >&2
    fail "the operator hit RBAC denials (above)"
  else
    pass "no RBAC denial in the operator logs ($(wc -l <<<"$logs") lines)"
  fi
  k -n "$NS" delete pipeline chart-it --wait=true --timeout=60s >/dev/null 2>&1 || true
fi

# ---- 5. uninstall ------------------------------------------------------------------------------------------
if "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout 2m >/dev/null; then
  left="$(
    k get clusterrole,clusterrolebinding -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null
    k -n "$NS" get deploy,sa,role,rolebinding,service,networkpolicy -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null
  )"
  if [[ -z "$left" ]] && k get crd pipelines.ferry.dev >/dev/null 2>&1; then
    pass "helm uninstall removed every chart object; the Pipeline CRD stays"
  else
    fail "left after uninstall: ${left:-nothing, but the CRD is gone}"
  fi
else
  fail "helm uninstall"
fi

echo "install-test: $passed passed, $failed failed"
((failed == 0))
