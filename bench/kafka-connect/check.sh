#!/usr/bin/env bash
# Looks for the Redis Kafka Connect sink on Maven Central, the only Java repository this
# machine reaches. Writes the exact Maven output to maven-evidence.txt. When the connector
# appears, bench/README.md says how Kafka Connect standalone would run it.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
m2="${FERRY_CACHE:-$HOME/.cache/ferry}/m2"
out="$here/maven-evidence.txt"
{
  echo "# bench/kafka-connect/check.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), Maven $(mvn -B -v 2>/dev/null | sed -e 's/\x1b\[[0-9;]*m//g' | head -n1 | awk '{print $3}')"
  for artifact in com.redis:redis-kafka-connect:LATEST com.redis:redis-kafka-connect:0.9.1 \
                  com.redis:redis-kafka-connect:0.9.0; do
    echo
    echo "\$ mvn -B -U dependency:get -Dartifact=$artifact"
    (cd "$(mktemp -d)" && mvn -B -U -Dmaven.repo.local="$m2" dependency:get -Dartifact="$artifact" 2>&1) \
      | grep -E '^\[(INFO|ERROR)\] (Downloading|Downloaded|BUILD|Failed|Could not|  *com\.redis|[0-9]\)|-+$)' \
      | sed -e 's/\x1b\[[0-9;]*m//g' -e 's#https\{0,1\}://[^/ ]*/maven2#<Maven Central>#g'
  done
} > "$out"
cat "$out"
if grep -q 'BUILD SUCCESS' "$out"; then
  echo "found: the connector is on Maven Central now" >&2
  exit 0
fi
exit 1
