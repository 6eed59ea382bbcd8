#!/usr/bin/env bash
# Try Ferry on kind: a three-node cluster with Strimzi Kafka, Valkey (Redis protocol) and
# Ferry's operator, then a simulator burst that makes the receivers scale out and back.
#
#   e2e/kind/up.sh            # everything; re-running reuses what is there
#   e2e/kind/down.sh          # deletes the cluster
#
# Needs Docker with buildx (Docker 29's containerd image store or the classic one), kubectl,
# kind and Helm 3 or 4 (`bash e2e/deps/deps.sh install kind` builds the pinned kind and Helm 4
# from their Go modules; a helm already on PATH is used first), and internet access for the
# images and charts. Every step waits on a readiness condition with a timeout; set
# FERRY_KIND_SKIP_DEMO=1 to stop after the Pipeline is Ready, FERRY_KIND_SKIP_BUILD=1 to reuse
# image archives already built.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dump_state() {
  local rc=$?
  ((rc == 0)) && return 0
  say "failed (exit $rc); cluster state follows" >&2
  kctl get nodes -o wide >&2 || true
  kctl get pods -A -o wide >&2 || true
  kctl get pipelines -A -o wide >&2 || true
  kctl -n "$DEMO_NS" get events --sort-by=.lastTimestamp >&2 2>/dev/null | tail -n 30 >&2 || true
  kctl -n "$FERRY_NS" logs deploy/ferry --tail=50 >&2 2>/dev/null || true
  say "inspect with: kubectl --context $KIND_CONTEXT get pods -A; remove with e2e/kind/down.sh" >&2
}
trap dump_state EXIT

# ---- tools ---------------------------------------------------------------------------
step tools "checking docker, kind, kubectl and helm"
need docker kubectl
KIND="$(kind_tool kind)"
[[ -n "$KIND" ]] || die "kind is missing: bash e2e/deps/deps.sh install kind (builds kind $KIND_VERSION)"
HELM="$(command -v helm 2>/dev/null || kind_tool helm4)"
[[ -n "$HELM" ]] || die "helm is missing: bash e2e/deps/deps.sh install kind (builds Helm 4)"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"
docker buildx version >/dev/null 2>&1 || die "docker buildx is missing (the images are built with --provenance=false)"
kind_have="$("$KIND" version | awk '{print $2}')"
[[ "$kind_have" == "$KIND_VERSION" ]] ||
  say "warning: kind $kind_have, not $KIND_VERSION: the node image in kind-config.yaml was built for $KIND_VERSION"
helm_have="$("$HELM" version --short 2>/dev/null || true)"
helm_version_supported "$helm_have" || die "Helm 3 or 4 is required ($HELM: ${helm_have:-no version})"
say "kind $kind_have ($KIND), helm $helm_have ($HELM)"

# ---- images (built first: the slowest step needs no cluster) ---------------------------
WORKER_ARCHIVE="$FERRY_CACHE/kind-images/worker.tar"
OPERATOR_ARCHIVE="$FERRY_CACHE/kind-images/operator.tar"
if [[ "${FERRY_KIND_SKIP_BUILD:-0}" != 1 ]]; then
  step images "building $WORKER_IMAGE and $OPERATOR_IMAGE (first build compiles librdkafka: several minutes)"
  build_image "$REPO_ROOT/Dockerfile.worker" "$WORKER_IMAGE" "$WORKER_ARCHIVE"
  build_image "$REPO_ROOT/Dockerfile.operator" "$OPERATOR_IMAGE" "$OPERATOR_ARCHIVE"
fi
[[ -s "$WORKER_ARCHIVE" && -s "$OPERATOR_ARCHIVE" ]] ||
  die "image archives $WORKER_ARCHIVE and $OPERATOR_ARCHIVE are missing (run without FERRY_KIND_SKIP_BUILD)"

# ---- cluster ----------------------------------------------------------------------------
step cluster "kind cluster $CLUSTER_NAME (1 control plane, 2 workers)"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  say "cluster $CLUSTER_NAME exists: reusing it"
else
  "$KIND" create cluster --name "$CLUSTER_NAME" --config "$REPO_ROOT/kind-config.yaml" --wait 5m
fi
kctl wait --for=condition=Ready nodes --all --timeout=300s ||
  die "the kind nodes did not become Ready within 5 minutes"
say "loading the image archives into every node"
"$KIND" load image-archive --name "$CLUSTER_NAME" "$WORKER_ARCHIVE"
"$KIND" load image-archive --name "$CLUSTER_NAME" "$OPERATOR_ARCHIVE"

# ---- Strimzi and Kafka ----------------------------------------------------------------------
step strimzi "Strimzi operator $STRIMZI_CHART_VERSION (Helm) in namespace $KAFKA_NS"
khelm upgrade --install strimzi "$STRIMZI_CHART" --version "$STRIMZI_CHART_VERSION" \
  --namespace "$KAFKA_NS" --create-namespace --wait --timeout 10m ||
  die "the Strimzi operator did not become ready within 10 minutes"
kctl wait --for=condition=Established crd/kafkas.kafka.strimzi.io crd/kafkanodepools.kafka.strimzi.io \
  crd/kafkatopics.kafka.strimzi.io --timeout=60s

step kafka "single-node KRaft Kafka 'demo' and the sensors topics"
kctl apply -f "$KIND_DIR/kafka.yaml"
kctl -n "$KAFKA_NS" wait kafka/demo --for=condition=Ready --timeout=900s ||
  die "Kafka demo was not Ready within 15 minutes (kubectl -n $KAFKA_NS describe kafka demo)"
kctl -n "$KAFKA_NS" wait kafkatopic/sensors kafkatopic/sensors-dlq --for=condition=Ready --timeout=300s ||
  die "the KafkaTopics were not Ready within 5 minutes (is the entity operator running?)"

# ---- Valkey ---------------------------------------------------------------------------------
step valkey "Valkey chart $VALKEY_CHART_VERSION in namespace $DEMO_NS (NodePort 30379 -> 127.0.0.1:16379)"
khelm upgrade --install valkey valkey --repo "$VALKEY_CHART_REPO" --version "$VALKEY_CHART_VERSION" \
  --namespace "$DEMO_NS" --create-namespace -f "$KIND_DIR/valkey-values.yaml" --wait --timeout 5m ||
  die "Valkey did not become ready within 5 minutes"

# ---- Ferry ------------------------------------------------------------------------------------
step ferry "Ferry's operator (charts/ferry) in namespace $FERRY_NS"
# helm installs crds/ only on first install and never upgrades them: apply the CRD itself.
kctl apply --server-side --field-manager=ferry-kind -f "$REPO_ROOT/charts/ferry/crds/pipeline.yaml"
kctl wait --for=condition=Established crd/pipelines.ferry.dev --timeout=60s
khelm upgrade --install ferry "$REPO_ROOT/charts/ferry" --namespace "$FERRY_NS" --create-namespace \
  -f "$KIND_DIR/ferry-values.yaml" --wait --timeout 5m ||
  die "the operator did not become ready within 5 minutes"
kctl -n "$FERRY_NS" rollout status deployment/ferry --timeout=120s

step pipeline "Pipeline $DEMO_NS/sensors (bootstrap from Strimzi Kafka $KAFKA_NS/demo)"
kctl apply -f "$KIND_DIR/pipeline.yaml"
kctl -n "$DEMO_NS" wait pipeline/sensors --for=condition=Ready --timeout=300s ||
  die "Pipeline sensors was not Ready within 5 minutes (kubectl -n $DEMO_NS describe pipeline sensors)"
kctl -n "$DEMO_NS" rollout status deployment/sensors-receiver --timeout=180s
kctl -n "$DEMO_NS" get pipeline sensors -o wide

if [[ "${FERRY_KIND_SKIP_DEMO:-0}" == 1 ]]; then
  say "FERRY_KIND_SKIP_DEMO=1: not running the simulator"
  exit 0
fi

# ---- demo: a burst of load, scale out, scale back --------------------------------------------
step demo "simulator Job: 1000 sources x 50 records/s for 120s"
kctl -n "$DEMO_NS" delete job ferry-simulate --ignore-not-found --wait=true
kctl apply -f "$KIND_DIR/simulate-job.yaml"
min_replicas="$(kctl -n "$DEMO_NS" get pipeline sensors -o jsonpath='{.spec.receiver.scaling.minReplicas}')"

receivers_above_min() {
  local n
  n="$(kctl -n "$DEMO_NS" get pipeline sensors -o jsonpath='{.status.replicas}')"
  say "receivers: ${n:-?} (lag $(kctl -n "$DEMO_NS" get pipeline sensors -o jsonpath='{.status.lag}'))"
  [[ -n "$n" ]] && ((n > min_replicas))
}
wait_until "the receivers to scale out above $min_replicas (lag-based scaling)" 300 receivers_above_min
say "scaled out to $(kctl -n "$DEMO_NS" get pipeline sensors -o jsonpath='{.status.replicas}') receivers"

kctl -n "$DEMO_NS" wait job/ferry-simulate --for=condition=Complete --timeout=600s ||
  die "the simulator Job did not complete within 10 minutes (kubectl -n $DEMO_NS logs job/ferry-simulate)"
say "simulator done; waiting for the lag to drain and the receivers to scale back to $min_replicas"
kctl -n "$DEMO_NS" wait pipeline/sensors --for=jsonpath='{.status.replicas}'="$min_replicas" --timeout=600s ||
  die "the receivers did not scale back to $min_replicas within 10 minutes"

trap - EXIT
step finished "Ferry runs on kind"
kctl -n "$DEMO_NS" get pipeline sensors -o wide
cat <<EOF

  kubectl --context $KIND_CONTEXT -n $DEMO_NS get pipeline sensors -o wide   # status, lag, receivers
  kubectl --context $KIND_CONTEXT -n $DEMO_NS events --for pipeline/sensors  # what the operator did
  redis-cli -p 16379 --scan --pattern 'ferry:*' | head                        # what Ferry wrote (Valkey)
  curl -s 127.0.0.1:18080/metrics | grep ^ferry_                              # operator metrics
  e2e/kind/down.sh                                                            # delete the cluster
EOF
