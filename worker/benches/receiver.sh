#!/usr/bin/env bash
# Receiver throughput benchmark (not a timed test), against the local stack
# (bash e2e/local/stack.sh up kafka redis):
#   1. preloads RECORDS dsdata records over KEYS keys into a fresh 6-partition topic with
#      `ferry-worker simulate --rate 0`;
#   2. runs one `ferry-worker receive` (list, history 100) until the group's lag is 0, and
#      reports records/s;
#   3. in the same run, the ceilings: `redis-benchmark -P 64 -t lpush -n 1000000 -q` and a
#      bare rdkafka consume of the same topic (benches/bare_consume.rs), printed as ratios.
# Usage: bash worker/benches/receiver.sh     (RECORDS=1000000 KEYS=1000 by default)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STACK_ENV="${FERRY_STACK_DIR:-/tmp/ferry-stack}/env"
[[ -f "$STACK_ENV" ]] || { echo "no $STACK_ENV: start the stack: make stack-up" >&2; exit 1; }
# shellcheck disable=SC1090
source "$STACK_ENV"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${FERRY_CACHE:-$HOME/.cache/ferry}/cargo-target}"
RECORDS="${RECORDS:-1000000}"
KEYS="${KEYS:-1000}"
RUN="bench-$(date +%s)-$RANDOM"
TOPIC="$RUN"
GROUP="$RUN-receiver"
WORK="$(mktemp -d)"
REDIS_PORT="${REDIS_URL##*:}"; REDIS_PORT="${REDIS_PORT%%/*}"
REDIS_HOST="${REDIS_URL#redis://}"; REDIS_HOST="${REDIS_HOST%%:*}"

cargo build --release -q -p ferry-worker
cargo bench -q -p ferry-worker --bench bare_consume --no-run 2>/dev/null
BIN="$CARGO_TARGET_DIR/release/ferry-worker"

"$FERRY_BIN/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --topic "$TOPIC" \
  --partitions 6 --replication-factor 1 >/dev/null
echo "== preloading $RECORDS records, $KEYS keys, into $TOPIC"
"$BIN" simulate --bootstrap-servers "$KAFKA_BOOTSTRAP" --topic "$TOPIC" --sources "$KEYS" \
  --rate 0 --count "$RECORDS" --progress-interval 5s 2>&1 | tail -1

cat >"$WORK/receiver.yaml" <<YAML
pipeline: bench
kafka: {bootstrap_servers: "$KAFKA_BOOTSTRAP", topic: $TOPIC, consumer_group: $GROUP}
redis: {url: "$REDIS_URL", key_prefix: $RUN}
format: dsdata
http: {listen: "127.0.0.1:0"}
stage:
  receiver:
    storage: {type: list, history_depth: 100}
    batch: {max_records: 2000, max_wait: 20ms}
YAML

group_lag() {
  "$FERRY_BIN/kafka-consumer-groups" --bootstrap-server "$KAFKA_BOOTSTRAP" --describe \
    --group "$GROUP" 2>/dev/null | awk -v t="$TOPIC" '$2 == t && $6 ~ /^[0-9]+$/ {lag += $6; n++} END {print (n == 6 ? lag : -1)}'
}

echo "== receiver: list, history 100"
start=$(date +%s.%N)
RUST_LOG=warn "$BIN" receive --config "$WORK/receiver.yaml" 2>"$WORK/receiver.log" &
worker=$!
trap 'kill $worker 2>/dev/null || true; rm -rf "$WORK"' EXIT
while :; do
  sleep 0.5
  lag=$(group_lag)
  [[ "$lag" == 0 ]] && break
  kill -0 "$worker" 2>/dev/null || { echo "receiver died:"; tail "$WORK/receiver.log"; exit 1; }
done
end=$(date +%s.%N)
kill -TERM "$worker"; wait "$worker" || true
receiver_rate=$(echo "$RECORDS / ($end - $start)" | bc -l)
printf 'receiver: %d records in %.2f s: %.0f records/s (until group lag 0, incl. join and 1 s commit interval)\n' \
  "$RECORDS" "$(echo "$end - $start" | bc -l)" "$receiver_rate"

echo "== redis-benchmark -P 64 -t lpush -n 1000000 -q"
redis_line=$(redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -P 64 -t lpush -n 1000000 -q 2>/dev/null | tr '\r' '\n' | grep -E '^LPUSH: [0-9.]+ requests per second' | tail -1)
echo "$redis_line"
redis_rate=$(echo "$redis_line" | awk '{print $2}')

echo "== bare rdkafka consume of $TOPIC"
bare_line=$(BENCH_TOPIC="$TOPIC" BENCH_COUNT="$RECORDS" cargo bench -q -p ferry-worker --bench bare_consume 2>/dev/null | grep bare_consume)
echo "$bare_line"
bare_rate=$(echo "$bare_line" | sed -E 's/.*: ([0-9]+) records\/s/\1/')

printf '== ratios: receiver/bare-consume %.2f, receiver/redis-lpush %.2f\n' \
  "$(echo "$receiver_rate / $bare_rate" | bc -l)" "$(echo "$receiver_rate / $redis_rate" | bc -l)"
