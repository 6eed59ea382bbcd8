#!/usr/bin/env bash
# `make demo`: Ferry's main job on the local stack, with progress printed as it goes.
#
#   0. the dependency step (e2e/deps/deps.sh): every package and tool, before anything uses it
#   1. the local stack (Redis, Kafka, Kubernetes with a real kubelet)
#   2. release builds of the operator and worker; the worker image into containerd
#   3. the Pipeline CRD, then the operator (a local process watching the cluster)
#   4. examples/pipeline.yaml in namespace ferry-demo, on a 6-partition topic
#   5. the simulator: a burst well above one receiver's rate, then the seed's steady load
#   6. a live line per poll (lag, desired, ready, keys in Redis) while receivers scale
#      up and, once the backlog is gone, back down
#   7. a chart of lag and replicas over time, in the terminal and as an SVG
#
# The stack stays up afterwards for poking around; `make stack-down` removes it.
# Knobs: DEMO_BURST (records, default 600000), DEMO_STEADY (seconds of the seed's
# 1000 sources x 1 record/s, default 90), DEMO_SETTLE (seconds to watch after, default 120).
set -euo pipefail
export FERRY_LOG_TAG="demo"
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

DEMO_NS=ferry-demo
DEMO_TOPIC=sensors
DEMO_BURST="${DEMO_BURST:-600000}"
DEMO_STEADY="${DEMO_STEADY:-90}"
DEMO_SETTLE="${DEMO_SETTLE:-120}"
DEMO_DIR="$FERRY_STACK_DIR/demo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
mkdir -p "$DEMO_DIR"

phase_start deps
deps_install build stack
phase_end deps

phase_start stack
bash "$FERRY_LOCAL_DIR/stack.sh" up
# shellcheck source=/dev/null
source "$FERRY_STACK_DIR/env"
kubectl() { "$FERRY_BIN/kubectl" "$@"; }
phase_end stack

phase_start build
step "building the operator and worker (release)"
with_build_lock cargo build --release -p ferry-operator --bin ferry-operator -p ferry-worker --bin ferry-worker --bin ferry-api
bash "$FERRY_LOCAL_DIR/images.sh" worker "$CARGO_TARGET_DIR/release/ferry-worker" \
  "$CARGO_TARGET_DIR/release/ferry-api"
phase_end build

phase_start operator
step "installing the Pipeline CRD"
kubectl apply --server-side --force-conflicts -f crds/pipeline.yaml >/dev/null
# kubectl wait fails at once while the new CRD has no status.conditions yet: retry that.
established=0
for _ in $(seq 1 60); do
  if kubectl wait --for=condition=Established crd/pipelines.ferry.dev --timeout=60s >/dev/null 2>&1; then
    established=1
    break
  fi
  sleep 1
done
# Once more with its output, to say why.
((established)) || kubectl wait --for=condition=Established crd/pipelines.ferry.dev --timeout=5s >/dev/null
step "starting the operator (log: $FERRY_LOG_DIR/operator.log)"
stop_daemon ferry-operator >/dev/null 2>&1 || true
start_daemon ferry-operator "$FERRY_LOG_DIR/operator.log" \
  env KUBECONFIG="$KUBECONFIG" FERRY_WORKER_IMAGE=ferry/worker:dev FERRY_READ_API=true RUST_LOG=info \
  "$CARGO_TARGET_DIR/release/ferry-operator" run --listen 127.0.0.1:18080 --log-format json
wait_for 30 "the operator's /readyz" curl -fsS -o /dev/null http://127.0.0.1:18080/readyz
ok "operator ready"
phase_end operator

phase_start pipeline
step "creating topic $DEMO_TOPIC with 6 partitions"
"$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --delete --topic "$DEMO_TOPIC" >/dev/null 2>&1 || true
"$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --delete --topic "$DEMO_TOPIC-dlq" >/dev/null 2>&1 || true
wait_for 30 "topic $DEMO_TOPIC to be gone" bash -c "! '$FERRY_BIN/kafka-topics' --bootstrap-server '$KAFKA_BOOTSTRAP' --list | grep -qx '$DEMO_TOPIC'"
"$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --topic "$DEMO_TOPIC" --partitions 6 --replication-factor 1 >/dev/null
# The dead-letter topics examples/pipeline.yaml names: Ferry does not create the topics it
# produces to (a missing one is reported as TopicMissing).
for dead in "$DEMO_TOPIC-dlq" "$DEMO_TOPIC-invalid"; do
  "$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists --topic "$dead" --partitions 1 --replication-factor 1 >/dev/null
done
redis-cli -p "$REDIS_PORT" FLUSHDB >/dev/null
step "applying examples/pipeline.yaml in namespace $DEMO_NS"
kubectl delete namespace "$DEMO_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
kubectl create namespace "$DEMO_NS" >/dev/null
# The example names the stack's bridge address; follow it if this stack advertises another.
sed "s/10\.244\.0\.1/$FERRY_ADVERTISE_HOST/g" examples/pipeline.yaml | kubectl apply -n "$DEMO_NS" -f - >/dev/null
wait_for 180 "the sample Pipeline to be Ready" \
  bash -c "'$FERRY_BIN/kubectl' get pl sensors -n $DEMO_NS -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
kubectl get pl -n "$DEMO_NS"
step "enabling the read API and dashboard (spec.api)"
kubectl patch pl sensors -n "$DEMO_NS" --type merge -p '{"spec":{"api":{"enabled":true}}}' >/dev/null
wait_for 120 "the dashboard's pod to be ready" \
  "$FERRY_BIN/kubectl" rollout status deploy/sensors-api -n "$DEMO_NS" --timeout=5s
dashboard_ip="$(kubectl get svc sensors-api -n "$DEMO_NS" -o jsonpath='{.spec.clusterIP}')"
ok "dashboard at http://$dashboard_ip/ (the Service sensors-api)"
phase_end pipeline

phase_start load
step "simulator: a burst of $DEMO_BURST records as fast as the broker takes, then ${DEMO_STEADY}s of 1000 sources x 1 record/s"
(
  "$CARGO_TARGET_DIR/release/ferry-worker" --log-format pretty simulate \
    --bootstrap-servers "$KAFKA_BOOTSTRAP" --topic "$DEMO_TOPIC" --rate 0 --count "$DEMO_BURST" --progress-interval 5s
  "$CARGO_TARGET_DIR/release/ferry-worker" --log-format pretty simulate \
    --bootstrap-servers "$KAFKA_BOOTSTRAP" --topic "$DEMO_TOPIC" --rate 1 --duration "${DEMO_STEADY}s" --progress-interval 15s --seed 7
) >"$DEMO_DIR/simulator.log" 2>&1 &
sim_pid=$!
python3 "$FERRY_LOCAL_DIR/demo_watch.py" \
  --namespace "$DEMO_NS" --pipeline sensors --redis-port "$REDIS_PORT" \
  --sim-pid "$sim_pid" --settle "$DEMO_SETTLE" --svg "$DEMO_DIR/scaling.svg"
wait "$sim_pid" || warn "the simulator exited with an error: see $DEMO_DIR/simulator.log"
phase_end load

step "what landed in Redis"
printf '  keys: %s\n' "$(redis-cli -p "$REDIS_PORT" DBSIZE)"
printf '  ferry:list:src-0042 holds %s values (history depth 100), newest first\n' \
  "$(redis-cli -p "$REDIS_PORT" LLEN ferry:list:src-0042)"
printf '  stats of src-0042: %s\n' "$(redis-cli -p "$REDIS_PORT" HGETALL ferry:stats:stats:src-0042 | paste -sd' ')"
printf '  validation counters: %s\n' "$(redis-cli -p "$REDIS_PORT" HGETALL ferry:counters:validate:_total | paste -sd' ')"
kubectl get pl,deploy -n "$DEMO_NS"
phase_summary
ok "demo done. The chart is $DEMO_DIR/scaling.svg. The stack is still up: 'make stack-down' removes it."
ok "dashboard: http://$dashboard_ip/?source=src-0042 from this machine while the stack is up, or 'kubectl port-forward -n $DEMO_NS svc/sensors-api 8090:80' and http://localhost:8090/"
