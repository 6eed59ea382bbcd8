#!/usr/bin/env bash
# A TLS + AUTH Redis and a SASL_SSL (SCRAM-SHA-512) Kafka broker, private to one test run,
# on loopback and free ports, beside (never instead of) the local stack.
#
#   e2e/local/secure.sh up DIR     start both; writes DIR/env (see below); idempotent no
#   e2e/local/secure.sh down DIR   stop what `up DIR` started (by the pids it recorded)
#
# DIR/env (mode 600) holds:
#   SECURE_CA_FILE                  the CA that signed both servers' certificates
#   SECURE_REDIS_TLS_PORT           rediss:// port (server cert for 127.0.0.1 and localhost)
#   SECURE_REDIS_PLAIN_PORT         redis:// port, same server, AUTH required
#   SECURE_REDIS_DEFAULT_PASSWORD   `requirepass` (the default user)
#   SECURE_REDIS_USER / SECURE_REDIS_USER_PASSWORD   an ACL user with every permission
#   SECURE_KAFKA_SASL_SSL           host:port of the SASL_SSL listener (SCRAM-SHA-512)
#   SECURE_KAFKA_SSL                host:port of an SSL listener (TLS, no SASL)
#   SECURE_KAFKA_PLAINTEXT          host:port of a PLAINTEXT listener, for test setup only
#   SECURE_KAFKA_USER / SECURE_KAFKA_PASSWORD        the SCRAM-SHA-512 user
#
# Needs openssl, redis-server built with TLS, java, and the Kafka jars the stack caches in
# ${FERRY_CACHE:-$HOME/.cache/ferry}/kafka-4.3.1/libs (e2e/local/stack.sh up kafka).
set -euo pipefail

export FERRY_LOG_TAG=secure
# shellcheck source=e2e/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_LIBS="$FERRY_CACHE/kafka-$KAFKA_VERSION/libs"

usage() {
  echo "usage: $0 up|down DIR" >&2
  exit 2
}

# A free loopback port: random in 20000-59999, not accepting connections, not handed out
# to an earlier call of this run.
_taken=" "
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [[ $_taken == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      _taken+="$port "
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

secret() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }

make_certs() {
  local dir="$1"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ferry-test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/server.key" 2>/dev/null
  openssl req -new -key "$dir/server.key" -subj "/CN=localhost" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/server.crt" 2>/dev/null
  # Kafka's PEM keystore: the PKCS#8 key, then the certificate chain.
  cat "$dir/server.key" "$dir/server.crt" "$dir/ca.crt" >"$dir/kafka-keystore.pem"
  chmod 600 "$dir"/*.key "$dir/kafka-keystore.pem"
}

start_redis() {
  local dir="$1"
  redis-server \
    --port "$SECURE_REDIS_PLAIN_PORT" --tls-port "$SECURE_REDIS_TLS_PORT" --bind 127.0.0.1 \
    --tls-cert-file "$dir/server.crt" --tls-key-file "$dir/server.key" \
    --tls-ca-cert-file "$dir/ca.crt" --tls-auth-clients no \
    --requirepass "$SECURE_REDIS_DEFAULT_PASSWORD" \
    --user "$SECURE_REDIS_USER" on ">$SECURE_REDIS_USER_PASSWORD" "~*" "&*" "+@all" \
    --save "" --appendonly no --dir "$dir" --daemonize no \
    >"$dir/redis.log" 2>&1 &
  echo $! >"$dir/redis.pid"
}

start_kafka() {
  local dir="$1" cluster_id
  [[ -d $KAFKA_LIBS ]] || die "no Kafka jars in $KAFKA_LIBS: run e2e/local/stack.sh up kafka first"
  command -v java >/dev/null || die "java is not installed"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$SECURE_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$SECURE_KAFKA_PLAIN_PORT,SASL_SSL://127.0.0.1:$SECURE_KAFKA_SASL_PORT,SSL://127.0.0.1:$SECURE_KAFKA_SSL_PORT,CONTROLLER://127.0.0.1:$SECURE_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$SECURE_KAFKA_PLAIN_PORT,SASL_SSL://127.0.0.1:$SECURE_KAFKA_SASL_PORT,SSL://127.0.0.1:$SECURE_KAFKA_SSL_PORT,CONTROLLER://127.0.0.1:$SECURE_KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/kafka-keystore.pem
ssl.client.auth=none
log.dirs=$dir/kafka-data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka.server.KafkaServer
logger.kafka.level = INFO
EOF
  cluster_id="$(kraft_cluster_id)"
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$KAFKA_LIBS/*" \
    kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" \
    --config "$dir/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$SECURE_KAFKA_USER,password=$SECURE_KAFKA_PASSWORD]" \
    >"$dir/kafka-format.log" 2>&1 || {
    tail -n 20 "$dir/kafka-format.log" >&2
    die "kafka-storage format failed"
  }
  java -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" "-Dkafka.logs.dir=$dir" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 &
  echo $! >"$dir/kafka.pid"
}

up() {
  local dir="$1"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [[ ! -f "$dir/env" ]] || die "$dir/env exists: run '$0 down $dir' first"
  command -v openssl >/dev/null || die "openssl is not installed"
  command -v redis-server >/dev/null || die "redis-server is not installed"

  SECURE_REDIS_TLS_PORT="$(free_port)"
  SECURE_REDIS_PLAIN_PORT="$(free_port)"
  SECURE_KAFKA_PLAIN_PORT="$(free_port)"
  SECURE_KAFKA_SASL_PORT="$(free_port)"
  SECURE_KAFKA_SSL_PORT="$(free_port)"
  SECURE_KAFKA_CONTROLLER_PORT="$(free_port)"
  SECURE_REDIS_DEFAULT_PASSWORD="$(secret)"
  SECURE_REDIS_USER=ferry
  SECURE_REDIS_USER_PASSWORD="$(secret)"
  SECURE_KAFKA_USER=ferry
  SECURE_KAFKA_PASSWORD="$(secret)"

  step "certificates in $dir"
  make_certs "$dir"
  step "redis-server: TLS on $SECURE_REDIS_TLS_PORT, AUTH on $SECURE_REDIS_PLAIN_PORT"
  start_redis "$dir"
  step "kafka: SASL_SSL on $SECURE_KAFKA_SASL_PORT, SSL on $SECURE_KAFKA_SSL_PORT, PLAINTEXT on $SECURE_KAFKA_PLAIN_PORT"
  start_kafka "$dir"

  local env="$dir/env"
  (
    umask 077
    cat >"$env" <<EOF
SECURE_CA_FILE=$dir/ca.crt
SECURE_REDIS_TLS_PORT=$SECURE_REDIS_TLS_PORT
SECURE_REDIS_PLAIN_PORT=$SECURE_REDIS_PLAIN_PORT
SECURE_REDIS_DEFAULT_PASSWORD=$SECURE_REDIS_DEFAULT_PASSWORD
SECURE_REDIS_USER=$SECURE_REDIS_USER
SECURE_REDIS_USER_PASSWORD=$SECURE_REDIS_USER_PASSWORD
SECURE_KAFKA_SASL_SSL=127.0.0.1:$SECURE_KAFKA_SASL_PORT
SECURE_KAFKA_SSL=127.0.0.1:$SECURE_KAFKA_SSL_PORT
SECURE_KAFKA_PLAINTEXT=127.0.0.1:$SECURE_KAFKA_PLAIN_PORT
SECURE_KAFKA_USER=$SECURE_KAFKA_USER
SECURE_KAFKA_PASSWORD=$SECURE_KAFKA_PASSWORD
EOF
  )

  FERRY_WAIT_LOG="$dir/redis.log" wait_for 20 "redis TLS port" \
    port_open 127.0.0.1 "$SECURE_REDIS_TLS_PORT" || die "redis did not start; see $dir/redis.log"
  FERRY_WAIT_LOG="$dir/kafka.log" wait_for 120 "kafka SASL_SSL port" \
    port_open 127.0.0.1 "$SECURE_KAFKA_SASL_PORT" || die "kafka did not start; see $dir/kafka.log"
  FERRY_WAIT_LOG="$dir/kafka.log" wait_for 60 "kafka PLAINTEXT port" \
    port_open 127.0.0.1 "$SECURE_KAFKA_PLAIN_PORT" || die "kafka did not start; see $dir/kafka.log"
  ok "secure servers up; settings in $env"
}

down() {
  local dir="$1" name pid
  for name in kafka redis; do
    [[ -f "$dir/$name.pid" ]] || continue
    pid="$(cat "$dir/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
  rm -f "$dir/env"
}

[[ $# -eq 2 ]] || usage
case "$1" in
  up) up "$2" ;;
  down) down "$2" ;;
  *) usage ;;
esac
