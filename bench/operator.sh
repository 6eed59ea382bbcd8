#!/usr/bin/env bash
# The operator at scale (make bench-operator): 1000 paused Pipelines in a namespace of
# their own, then the time until every one has status.observedGeneration ==
# metadata.generation, the operator's peak RSS (VmHWM) and its CPU over a 2-minute steady
# window afterwards. Goals: 1000 reconciled in <= 30 s, RSS <= 100 MiB.
#
# Pipelines are created first, with the operator stopped; the clock starts when the
# operator starts, so it measures the operator, not kubectl. spec.paused: true scales every
# stage to zero: the Deployments exist, no pod runs. All Pipelines point at the local
# Kafka's one topic with their own consumer groups, so lag polling has real work (it
# batches Kafka calls per broker; operator/src/lag.rs).
#
# Needs the Kubernetes part of the local stack (KUBECONFIG in $FERRY_STACK_DIR/env); skips
# with a message otherwise. Knobs: BENCH_OP_PIPELINES [1000], BENCH_OP_STEADY_S [120],
# BENCH_SKIP_BUILD=1 (use $CARGO_TARGET_DIR/release/ferry-operator as it is).
set -euo pipefail
export FERRY_LOG_TAG=bench-operator
# shellcheck source=e2e/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/local/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
N="${BENCH_OP_PIPELINES:-1000}"
STEADY_S="${BENCH_OP_STEADY_S:-120}"
MODE="${BENCH_OP_MODE:-autoscaled}"
[[ "$MODE" == autoscaled || "$MODE" == paused ]] || die "BENCH_OP_MODE is autoscaled or paused, not '$MODE'"
NS=ferry-bench-ops
TOPIC=ferry-bench-ops
OUT="${BENCH_OUT:-$BENCH_DIR/results}"
PORT=18099
TARGET="$CARGO_TARGET_DIR/release"

[[ -f "$FERRY_ENV_FILE" ]] || die "no $FERRY_ENV_FILE: start the stack first (make stack-up)"
# shellcheck source=/dev/null
source "$FERRY_ENV_FILE"
if [[ -z "${KUBECONFIG:-}" ]] || ! kubectl get --raw /readyz >/dev/null 2>&1; then
  warn "the Kubernetes part of the local stack is not up (no KUBECONFIG in $FERRY_ENV_FILE or API server not ready): skipping"
  exit 0
fi
if [[ -f "$FERRY_PID_DIR/ferry-operator.pid" ]] && daemon_running ferry-operator; then
  warn "another ferry-operator (make demo) watches all namespaces: it will reconcile $NS too and skew the numbers"
fi

if [[ "${BENCH_SKIP_BUILD:-0}" == 1 && -x "$TARGET/ferry-operator" ]]; then
  ok "BENCH_SKIP_BUILD=1: using $TARGET/ferry-operator as built"
else
  step "building the operator (release)"
  (cd "$REPO_ROOT" && with_build_lock cargo build --release -q -p ferry-operator --bin ferry-operator)
fi
kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/crds/pipeline.yaml" >/dev/null
kubectl wait --for=condition=Established crd/pipelines.ferry.dev --timeout=60s >/dev/null
"$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
  --topic "$TOPIC" --partitions 6 --replication-factor 1 >/dev/null

work="$(mktemp -d /tmp/ferry-bench-operator.XXXXXX)"
cleanup() {
  if [[ -n "${op_pid:-}" ]] && kill -0 "$op_pid" 2>/dev/null; then
    kill -TERM "$op_pid" 2>/dev/null || true
    wait "$op_pid" 2>/dev/null || true
  fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "creating $N paused Pipelines in namespace $NS (operator not running yet)"
kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null 2>&1 || true
kubectl create namespace "$NS" >/dev/null
python3 - "$N" "$NS" "$KAFKA_BOOTSTRAP" "$TOPIC" "${REDIS_HOST:-127.0.0.1}" "${REDIS_PORT:-16379}" "$MODE" > "$work/pipelines.yaml" <<'EOF'
import sys
n, ns, bootstrap, topic, redis_host, redis_port, mode = sys.argv[1:]
# autoscaled: lag polled every 5 s, 0 replicas while the topic has no lag (minReplicas 0).
# paused: every stage at 0 replicas and not polled.
paused = "true" if mode == "paused" else "false"
scaling = "" if mode == "paused" else "\n    scaling: {mode: auto, minReplicas: 0, maxReplicas: 4, pollInterval: 5s}"
for i in range(int(n)):
    print(f"""---
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata:
  name: p{i:04d}
  namespace: {ns}
spec:
  paused: {paused}
  kafka:
    bootstrapServers: {bootstrap}
    topic: {topic}
  redis:
    host: {redis_host}
    port: {redis_port}
    keyPrefix: bench{i:04d}
  format: dsdata
  receiver:
    storage: {{type: list, historyDepth: 100}}{scaling}
""")
EOF
t0=$(date +%s)
kubectl apply --server-side -f "$work/pipelines.yaml" >/dev/null
ok "$N Pipelines created in $(( $(date +%s) - t0 )) s"

# The reconciled count: Pipelines whose status caught up with their spec.
reconciled() {
  kubectl get pipelines -n "$NS" -o jsonpath='{range .items[*]}{.metadata.generation} {.status.observedGeneration}{"\n"}{end}' \
    | awk '$1 != "" && $1 == $2 {n++} END {print n+0}'
}
cpu_s() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }
hwm_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

metric() {
  curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}
# PATCH/POST/PUT/DELETE requests the API server counted on the kinds the operator writes.
apiserver_writes() {
  kubectl get --raw /metrics 2>/dev/null \
    | awk '/^apiserver_request_total\{/ && /verb="(PATCH|POST|PUT|DELETE|APPLY)"/ && /resource="(pipelines|configmaps|deployments|events)"/ {n += $NF} END {printf "%d", n}'
}
writes_before="$(apiserver_writes)"

step "starting the operator (watching $NS only; log $work/operator.log)"
load_start="$(cut -d' ' -f1 /proc/loadavg)"
start_ns=$(date +%s%N)
env KUBECONFIG="$KUBECONFIG" RUST_LOG=info FERRY_WORKER_IMAGE=ferry/worker:dev \
  "$TARGET/ferry-operator" run --listen "127.0.0.1:$PORT" --log-format json \
  --watch-namespace "$NS" > "$work/operator.log" 2>&1 &
op_pid=$!
done_s=""
while :; do
  kill -0 "$op_pid" 2>/dev/null || die "the operator exited; see $work/operator.log"
  n="$(reconciled)"
  elapsed=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  if (( n >= N )); then
    done_s="$(awk -v ms="$elapsed" 'BEGIN {printf "%.1f", ms / 1000}')"
    break
  fi
  (( elapsed > 600000 )) && { warn "only $n of $N reconciled after 600 s"; done_s=">600"; break; }
  sleep 1
done
# Reconciles run so far (the operator's own counter) and the API server's mutating requests
# on what the operator writes: how much work each Pipeline cost.
reconciles_at_done="$(metric ferry_operator_reconciliations_total)"
writes_at_done="$(($(apiserver_writes) - writes_before))"
ok "$N reconciled in $done_s s (peak RSS so far $(hwm_mib "$op_pid") MiB; $reconciles_at_done reconciles, $writes_at_done API writes)"
deployments="$(kubectl get deployments -n "$NS" --no-headers 2>/dev/null | wc -l)"
pods="$(kubectl get pods -n "$NS" --no-headers 2>/dev/null | wc -l)"

step "steady state: CPU over $STEADY_S s"
c0="$(cpu_s "$op_pid")"
polls0="$(metric ferry_operator_lag_polls_total)"
calls0="$(metric ferry_operator_lag_kafka_calls_total)"
sleep "$STEADY_S"
c1="$(cpu_s "$op_pid")"
polls="$(awk -v a="$polls0" -v b="$(metric ferry_operator_lag_polls_total)" 'BEGIN {printf "%d", b - a}')"
calls="$(awk -v a="$calls0" -v b="$(metric ferry_operator_lag_kafka_calls_total)" 'BEGIN {printf "%d", b - a}')"
threads="$(awk '/^Threads:/ {print $2}' "/proc/$op_pid/status")"
kafka_port="${KAFKA_BOOTSTRAP##*:}"
kafka_conns="$(ss -tnpH state established "( dport = :$kafka_port )" 2>/dev/null | grep -c "pid=$op_pid," || true)"
steady="$(awk -v a="$c0" -v b="$c1" -v s="$STEADY_S" 'BEGIN {printf "%.1f", 100 * (b - a) / s}')"
rss="$(hwm_mib "$op_pid")"
total_cpu="$c1"
load_end="$(cut -d' ' -f1 /proc/loadavg)"
if [[ "$MODE" == paused ]]; then
  mode_note="paused: Deployments at 0 replicas, no pods, no lag polling"
else
  mode_note="autoscaled, minReplicas 0: lag polled every 5 s, 0 replicas while there is no lag"
fi
verdict() { awk -v v="$1" -v g="$2" 'BEGIN {print (v + 0 <= g + 0 && v !~ />/) ? "met" : "NOT met"}'; }

mkdir -p "$OUT"
cat > "$OUT/operator.md" <<EOF
# Ferry operator at scale

Generated by \`make bench-operator\` on $(date -u '+%Y-%m-%d %H:%M') (UTC); method in
[bench/README.md](../README.md#the-operator-at-scale).

| measure | value | goal |
| --- | ---: | --- |
| Pipelines ($mode_note) | $N | |
| time from operator start until all have observedGeneration == generation | $done_s s | ≤ 30 s: $(verdict "$done_s" 30) |
| operator peak RSS (VmHWM) after the steady window | $rss MiB | ≤ 100 MiB: $(verdict "$rss" 100) |
| operator CPU, steady, over $STEADY_S s | $steady % of one core | |
| operator CPU in total (start + reconcile + steady) | $total_cpu s | |
| Deployments / pods in the namespace | $deployments / $pods | pods: 0 |
| operator threads / TCP connections to Kafka, end of the steady window | $threads / $kafka_conns | |
| consumer-group lag polls / Kafka calls they took, over the steady window | $polls / $calls | |
| reconciles / API writes (pipelines, configmaps, deployments, events; all clients) until all were reconciled | $reconciles_at_done / $writes_at_done | |

Load average (1 min) at the start: $load_start, at the end: $load_end, on a 2-core machine
shared with other engineers' builds and tests.
EOF
cat "$OUT/operator.md"
