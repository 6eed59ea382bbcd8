#!/usr/bin/env bash
# Installs charts/ferry into a real API server (the local stack's: e2e/local/stack.sh up k8s),
# twice: cluster-wide (ClusterRole) and in single-namespace mode (watchNamespace: Roles only),
# and checks for each what only a real cluster can tell:
#   1. helm install --dry-run=server accepts the chart;
#   2. a real install with 2 replicas rolls out: both pods pass /readyz, one holds the Lease;
#   3. the ServiceAccount can do what the operator needs and nothing more (kubectl auth can-i);
#      cluster-wide with strimzi.manageTopics, KafkaTopics only in strimzi.kafkaNamespaces:
#      a real create as the ServiceAccount is refused in any other namespace;
#   4. the operator reconciles a Pipeline with the chart's RBAC: ConfigMap, receiver
#      Deployment and status are written;
#   5. helm uninstall removes every object the chart made (the CRD stays, as Helm intends).
# Steps 2 and 4 need the operator image in the cluster's containerd: it is built from
# target/{release,debug}/ferry-operator with e2e/local/images.sh as ferry/operator:chart-test.
# Without it the chart is installed with an operator image that is never pulled (the chart
# refuses replicaCount 0), so no operator runs and only the objects, RBAC and uninstall are
# checked; so is the cluster-wide install when other Pipelines exist in the cluster (a second
# cluster-wide operator would reconcile them too: `make demo` leaves its Pipeline behind).
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
passed=0
failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*" >&2; }
k() { "$KUBECTL" "$@"; }

releases=()   # "release namespace" pairs to uninstall on exit
namespaces=() # namespaces to delete on exit
cleanup() {
  local pair
  for pair in "${releases[@]}"; do
    # shellcheck disable=SC2086 # "release namespace"
    set -- $pair
    if "$HELM" status "$1" -n "$2" >/dev/null 2>&1; then
      "$HELM" uninstall "$1" -n "$2" --wait --timeout 2m >/dev/null 2>&1 || true
    fi
  done
  for ns in "${namespaces[@]}"; do
    k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# ---- the operator image ---------------------------------------------------------------
have_image=0
operator_bin=""
for b in "${FERRY_OPERATOR_BIN:-}" "$CARGO_TARGET_DIR/release/ferry-operator" "$CARGO_TARGET_DIR/debug/ferry-operator"; do
  if [[ -n "$b" && -x "$b" ]]; then operator_bin="$b"; break; fi
done
if [[ -z "$operator_bin" ]]; then
  say "no ferry-operator binary (cargo build -p ferry-operator): the operator will not run"
else
  # A copy: cargo may rewrite the binary while the image is being built.
  copy_dir="$(mktemp -d)"
  cp "$operator_bin" "$copy_dir/ferry-operator"
  if bash "$REPO_ROOT/e2e/local/images.sh" image ferry/operator:chart-test "$copy_dir/ferry-operator" >/dev/null 2>&1; then
    have_image=1
    say "operator image ferry/operator:chart-test built from $operator_bin"
  else
    say "cannot load an operator image (e2e/local/images.sh failed): the operator will not run"
  fi
  rm -rf "$copy_dir"
fi

# The Strimzi CRDs, for the KafkaTopic checks (the same set and field manager as the
# operator tests, so either may install them first).
choose_strimzi_crds
for crd in "${STRIMZI_CRDS[@]}"; do
  k apply --server-side --force-conflicts --field-manager "$STRIMZI_CRDS_FIELD_MANAGER" -f "$crd" >/dev/null
done
k wait --for=condition=Established crd/kafkatopics.kafka.strimzi.io --timeout=60s >/dev/null

# kafka_topic NAMESPACE: a KafkaTopic manifest in NAMESPACE.
kafka_topic() {
  cat <<EOF
apiVersion: kafka.strimzi.io/v1
kind: KafkaTopic
metadata:
  name: chart-it-$suffix
  namespace: $1
  labels:
    strimzi.io/cluster: my-cluster
spec:
  partitions: 1
EOF
}

# scenario MODE: MODE is `cluster` (every namespace, ClusterRole) or `namespaced`
# (watchNamespace set to a second namespace: Roles and RoleBindings only).
scenario() {
  local mode="$1" release ns watch_ns sa replicas=1 run_operator=0 others out holder deadline
  release="ferry-it-$mode-$suffix"
  ns="ferry-it-$mode-$suffix"
  sa="$release" # the full name: the release name already contains the chart name
  watch_ns="$ns"
  local extra=() watching="every namespace" kafka_ns=""
  if [[ "$mode" == cluster ]]; then
    # KafkaTopics may be written here and nowhere else.
    kafka_ns="$ns-kafka"
    k create namespace "$kafka_ns" >/dev/null
    namespaces+=("$kafka_ns")
    extra=(--set strimzi.manageTopics=true --set "strimzi.kafkaNamespaces={$kafka_ns}")
  fi
  if [[ "$mode" == namespaced ]]; then
    watch_ns="$ns-apps"
    k create namespace "$watch_ns" >/dev/null
    namespaces+=("$watch_ns")
    extra=(--set "watchNamespace=$watch_ns")
    watching="namespace $watch_ns only"
  fi
  releases+=("$release $ns")
  namespaces+=("$ns")
  CHECK_NAME="install-test $mode"

  if ((have_image)); then
    others="$(k get pipelines -A --no-headers 2>/dev/null | wc -l || true)"
    if [[ "$mode" == cluster && "${others:-0}" -gt 0 ]]; then
      say "$others Pipeline(s) exist in the cluster: a cluster-wide operator would reconcile them too; it will not run"
    else
      run_operator=1
      replicas=2
    fi
  fi
  # An operator that must not run gets a tag no image has: with pullPolicy Never its pod
  # waits in ErrImageNeverPull and reconciles nothing.
  local tag=chart-test wait=(--wait --timeout 4m)
  if ((!run_operator)); then
    tag=never-pulled
    wait=()
  fi
  local install_args=(
    "$release" "$CHART_DIR" --namespace "$ns" --create-namespace
    --set "replicaCount=$replicas" --set leaderElection.enabled=true --set "leaderElection.leaseName=$release"
    --set image.repository=ferry/operator --set "image.tag=$tag" --set image.pullPolicy=Never
    --set worker.image.repository=ferry/worker --set worker.image.tag=dev --set logFormat=pretty
    --set networkPolicy.enabled=true --set-json 'networkPolicy.metricsFrom=[{"podSelector":{}}]'
    "${extra[@]}"
  )

  # 1. dry run
  if out="$("$HELM" install "${install_args[@]}" --dry-run=server 2>&1)"; then
    pass "helm install --dry-run=server: $(grep -c '^kind:' <<<"$out") objects rendered and accepted"
  else
    printf '%s\n' "$out" >&2
    fail "helm install --dry-run=server"
  fi

  # 2. real install
  if "$HELM" install "${install_args[@]}" "${wait[@]}" >/dev/null; then
    pass "helm install $release into $ns (replicaCount=$replicas, image tag $tag, watching $watching) ${wait[*]:-without --wait}"
  else
    fail "helm install"
    k -n "$ns" get pods -o wide >&2 || true
    k -n "$ns" logs "deploy/$release" --tail=30 >&2 || true
  fi
  if ((run_operator)); then
    if k -n "$ns" rollout status "deploy/$release" --timeout=120s >/dev/null &&
      [[ "$(k -n "$ns" get deploy "$release" -o jsonpath='{.status.readyReplicas}')" == 2 ]]; then
      pass "2 operator pods Ready (readiness probe /readyz passed)"
    else
      fail "operator pods not Ready"
    fi
    holder=""
    deadline=$(($(date +%s) + 60))
    while (($(date +%s) < deadline)); do
      holder="$(k -n "$ns" get lease "$release" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
      [[ -n "$holder" ]] && break
      sleep 2
    done
    if [[ -n "$holder" ]] && k -n "$ns" get pod "$holder" >/dev/null 2>&1; then
      pass "Lease $ns/$release held by operator pod $holder (leader election with the chart's Role)"
    else
      fail "no operator pod holds Lease $ns/$release (holder: '${holder:-none}')"
    fi
  fi

  # 3. what the ServiceAccount may do
  local as=(--as "system:serviceaccount:$ns:$sa") rbac_ok=1 allowed denied scope
  can() { [[ "$(k auth can-i "${as[@]}" "$@" 2>/dev/null)" == yes ]]; }
  scope="-n $watch_ns"
  local allow=("list pipelines.ferry.dev $scope" "watch pipelines.ferry.dev $scope"
    "patch pipelines.ferry.dev --subresource=status $scope" "create deployments.apps $scope"
    "delete configmaps $scope" "create events.events.k8s.io $scope" "patch events $scope" "list pods $scope"
    "watch kafkas.kafka.strimzi.io $scope" "create leases.coordination.k8s.io -n $ns"
    "patch leases.coordination.k8s.io/$release -n $ns")
  local deny=("get secrets -n $ns" "get secrets $scope" "update pipelines.ferry.dev $scope"
    "delete pipelines.ferry.dev $scope" "create leases.coordination.k8s.io -n default"
    "patch leases.coordination.k8s.io/other -n $ns" "create kafkatopics.kafka.strimzi.io $scope"
    "patch pipelines.ferry.dev --subresource=scale $scope" "create pods $scope" "get nodes" "create clusterroles")
  if [[ "$mode" == cluster ]]; then
    allow+=("list pipelines.ferry.dev -A" "watch deployments.apps -A"
      "get kafkatopics.kafka.strimzi.io -n $kafka_ns" "create kafkatopics.kafka.strimzi.io -n $kafka_ns"
      "patch kafkatopics.kafka.strimzi.io -n $kafka_ns" "delete kafkatopics.kafka.strimzi.io -n $kafka_ns"
      "patch pipelines.ferry.dev $scope")
    deny+=("create kafkatopics.kafka.strimzi.io -n default" "create kafkatopics.kafka.strimzi.io -A"
      "list kafkatopics.kafka.strimzi.io -n $kafka_ns")
  else
    deny+=("list pipelines.ferry.dev -A" "list pipelines.ferry.dev -n default" "create deployments.apps -n default")
  fi
  for allowed in "${allow[@]}"; do
    # shellcheck disable=SC2086 # word lists by design
    can $allowed || { rbac_ok=0; say "ServiceAccount may not: $allowed" >&2; }
  done
  for denied in "${deny[@]}"; do
    # shellcheck disable=SC2086
    if can $denied; then rbac_ok=0; say "ServiceAccount may, but should not: $denied" >&2; fi
  done
  if ((rbac_ok)); then
    pass "kubectl auth can-i: ${#allow[@]} needed permissions granted, ${#deny[@]} others denied (Secrets, other Leases, topics${kafka_ns:+ outside $kafka_ns}, scale, pods, nodes, RBAC${extra[*]:+, other namespaces})"
  else
    fail "ServiceAccount permissions"
  fi

  # 3b. a real KafkaTopic create as the ServiceAccount: refused outside the Kafka namespace.
  if [[ -n "$kafka_ns" ]]; then
    local topic_out topic_ok=1 target
    for target in "$watch_ns" default; do
      if topic_out="$(kafka_topic "$target" | k create "${as[@]}" -f - 2>&1)"; then
        topic_ok=0
        say "the ServiceAccount created a KafkaTopic in $target, outside strimzi.kafkaNamespaces" >&2
        k -n "$target" delete kafkatopic "chart-it-$suffix" --wait=false >/dev/null 2>&1 || true
      elif ! grep -qi forbidden <<<"$topic_out"; then
        topic_ok=0
        say "creating a KafkaTopic in $target failed, but not for RBAC: $topic_out" >&2
      fi
    done
    if ! topic_out="$(kafka_topic "$kafka_ns" | k create "${as[@]}" -f - 2>&1)"; then
      topic_ok=0
      say "the ServiceAccount cannot create a KafkaTopic in $kafka_ns: $topic_out" >&2
    elif ! k -n "$kafka_ns" delete kafkatopic "chart-it-$suffix" "${as[@]}" >/dev/null 2>&1; then
      topic_ok=0
      say "the ServiceAccount cannot delete its KafkaTopic in $kafka_ns" >&2
    fi
    if ((topic_ok)); then
      pass "as the ServiceAccount: a KafkaTopic create is forbidden in $watch_ns and default, allowed (and its delete) in $kafka_ns"
    else
      fail "KafkaTopic scope"
    fi
  fi

  # 4. the operator reconciles a Pipeline with these permissions
  if ((run_operator)); then
    k apply -f - >/dev/null <<EOF
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata:
  name: chart-it
  namespace: $watch_ns
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
    if k -n "$watch_ns" wait deploy/chart-it-receiver --for=create --timeout=90s >/dev/null 2>&1 &&
      k -n "$watch_ns" get configmap -l app.kubernetes.io/managed-by=ferry-operator -o name | grep -q . &&
      k -n "$watch_ns" wait pipeline/chart-it --for=jsonpath='{.status.conditions[0].type}' --timeout=60s >/dev/null 2>&1; then
      pass "operator reconciled Pipeline $watch_ns/chart-it: ConfigMap, Deployment chart-it-receiver and status written"
    else
      k -n "$watch_ns" get pipeline,deploy,configmap -o wide >&2 || true
      k -n "$ns" logs "deploy/$release" --tail=40 >&2 || true
      fail "operator did not reconcile Pipeline chart-it"
    fi
    # Any "forbidden" from the API server in any operator pod's log is a missing permission.
    local logs
    logs="$(k -n "$ns" logs -l "app.kubernetes.io/instance=$release" --tail=-1 --prefix 2>&1 || true)"
    if grep -qi forbidden <<<"$logs"; then
      grep -i forbidden <<<"$logs" | head -n 5 >&2
      fail "the operator hit RBAC denials (above)"
    else
      pass "no RBAC denial in the operator logs ($(wc -l <<<"$logs") lines)"
    fi
    k -n "$watch_ns" delete pipeline chart-it --wait=true --timeout=60s >/dev/null 2>&1 || true
  fi

  # 5. uninstall
  if "$HELM" uninstall "$release" -n "$ns" --wait --timeout 2m >/dev/null; then
    local left
    left="$(
      k get clusterrole,clusterrolebinding -l "app.kubernetes.io/instance=$release" -o name 2>/dev/null
      k -n "$ns" get deploy,sa,role,rolebinding,service,networkpolicy -l "app.kubernetes.io/instance=$release" -o name 2>/dev/null
      k -n "$watch_ns" get role,rolebinding -l "app.kubernetes.io/instance=$release" -o name 2>/dev/null
    )"
    if [[ -z "$left" ]] && k get crd pipelines.ferry.dev >/dev/null 2>&1; then
      pass "helm uninstall removed every chart object; the Pipeline CRD stays"
    else
      fail "left after uninstall: ${left:-nothing, but the CRD is gone}"
    fi
  else
    fail "helm uninstall"
  fi
}

scenario cluster
scenario namespaced
CHECK_NAME=install-test
echo "install-test: $passed passed, $failed failed"
((failed == 0))
