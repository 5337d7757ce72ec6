#!/usr/bin/env bash
# Apache Kafka (KRaft, one combined broker+controller node on 127.0.0.1) for development, tests and
# the demo. Usage: ops/kafka/kafka.sh fetch|start|stop|status
#
# The jars come from Maven Central through ops/kafka/pom.xml into ops/kafka/.cache/libs; data and logs
# live under .state/kafka. Every wait is bounded and every failure ends with a one-line error.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

KAFKA_DIR="$REPO_ROOT/ops/kafka"
LIBS="$KAFKA_DIR/.cache/libs"
DATA="$STATE_DIR/kafka"
PORT="${CAMPAIGNS_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${CAMPAIGNS_KAFKA_CONTROLLER_PORT:-19093}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
START_TIMEOUT="${CAMPAIGNS_KAFKA_START_TIMEOUT:-90}"
# CAMPAIGNS_KAFKA_SASL=1: clients authenticate with SASL/SCRAM-SHA-512 and the StandardAuthorizer enforces ACLs
# (nothing is allowed without one). The broker's own user 'admin' (a super user) has a random password in
# $DATA/admin.password (0600); it creates the other users and their ACLs (docs/security.md). Off by default.
SASL="${CAMPAIGNS_KAFKA_SASL:-0}"
ADMIN_PASSWORD_FILE="$STATE_DIR/kafka/admin.password"

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_DIR/pom.xml"; }

fetch() {
  local version; version=$(kafka_version)
  if [ -f "$LIBS/.complete-$version" ]; then return 0; fi
  command -v java >/dev/null || die "java not found: install a Java 17+ JDK (Kafka $version needs it)"
  command -v mvn >/dev/null || die "mvn not found: install Apache Maven (it fetches Kafka $version from Maven Central)"
  info "fetching Apache Kafka $version from Maven Central (first run only)"
  rm -rf "$LIBS"
  if ! mvn -q -B -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$LIBS" -DincludeScope=runtime >"$STATE_DIR/kafka-fetch.log" 2>&1; then
    tail -n 5 "$STATE_DIR/kafka-fetch.log" >&2
    die "could not resolve org.apache.kafka:kafka_2.13:$version from Maven Central (is the registry reachable? see .state/kafka-fetch.log)"
  fi
  touch "$LIBS/.complete-$version"
}

write_config() {
  mkdir -p "$DATA/logs" "$DATA/data"
  # Topic data holds addresses and message bodies: owner only (also a directory made before umask 077).
  chmod 700 "$DATA"
  if [ "$SASL" = 1 ]; then write_sasl_config; return 0; fi
  cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/data
num.partitions=6
# Topics are declared by the app with explicit partitions and configs; an implicit topic hides typos
# and, for Faust tables, causes partition mismatches with their changelogs.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=268435456
PROPS
}

# SASL_PLAINTEXT on 127.0.0.1 (TLS is for a real network) with SCRAM-SHA-512 and ACLs. The controller listener
# stays PLAINTEXT on loopback; its connections are the broker's own, hence User:ANONYMOUS among the super users.
write_sasl_config() {
  [ -s "$ADMIN_PASSWORD_FILE" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$ADMIN_PASSWORD_FILE"
  local password; password=$(cat "$ADMIN_PASSWORD_FILE")
  cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=SASL_PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$password";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$DATA/data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
}

# Broker heap kept small: the machine also runs PostgreSQL, the workers and the tests.
JAVA_ARGS=(-Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true
  -cp "$LIBS/*")

is_running() {
  [ -f "$DATA/kafka.pid" ] && kill -0 "$(cat "$DATA/kafka.pid")" 2>/dev/null
}

answers_metadata() {
  "$PYTHON" - "$PORT" "$SASL" "$ADMIN_PASSWORD_FILE" 2>/dev/null <<'PY'
import sys
from confluent_kafka.admin import AdminClient
conf = {"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "log_level": 0}
if sys.argv[2] == "1":
    conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
                 "sasl.password": open(sys.argv[3]).read().strip()})
admin = AdminClient(conf)
md = admin.list_topics(timeout=2)
sys.exit(0 if md.brokers else 1)
PY
}

start() {
  fetch
  if [ -d "$DATA" ]; then chmod 700 "$DATA"; fi  # owner only, also for a broker started before umask 077
  if is_running && answers_metadata; then info "kafka $(kafka_version) already running on 127.0.0.1:$PORT"; return 0; fi
  if is_running; then stop; fi
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_in_use "$p" && die "port 127.0.0.1:$p is already taken by another process: stop it or set CAMPAIGNS_KAFKA_PORT / CAMPAIGNS_KAFKA_CONTROLLER_PORT"
  done
  write_config
  if [ ! -f "$DATA/data/meta.properties" ]; then
    info "formatting KRaft storage in $DATA/data"
    local cluster_id; cluster_id=$(java "${JAVA_ARGS[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    local scram=()
    [ "$SASL" = 1 ] && scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=$(cat "$ADMIN_PASSWORD_FILE")]")
    java "${JAVA_ARGS[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA/server.properties" "${scram[@]}" \
      >"$DATA/logs/format.log" 2>&1 || { tail -n 5 "$DATA/logs/format.log" >&2; die "formatting KRaft storage failed (see $DATA/logs/format.log)"; }
  fi
  info "starting kafka $(kafka_version) on 127.0.0.1:$PORT"
  # setsid: the broker outlives the make/pytest process that started it and ignores its Ctrl-C.
  setsid nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$DATA/server.properties" >"$DATA/logs/server.log" 2>&1 </dev/null &
  echo $! >"$DATA/kafka.pid"
  if ! wait_until "$START_TIMEOUT" "kafka metadata" answers_metadata; then
    tail -n 5 "$DATA/logs/server.log" >&2
    die "kafka did not answer metadata on 127.0.0.1:$PORT within ${START_TIMEOUT}s (see $DATA/logs/server.log)"
  fi
  info "kafka $(kafka_version) ready on 127.0.0.1:$PORT"
}

stop() {
  if ! is_running; then info "kafka not running"; rm -f "$DATA/kafka.pid"; return 0; fi
  local pid; pid=$(cat "$DATA/kafka.pid")
  kill "$pid" 2>/dev/null || true
  if ! wait_until 60 "kafka stop" bash -c "! kill -0 $pid"; then
    info "kafka did not stop within 60s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DATA/kafka.pid"
  info "kafka stopped"
}

status() {
  if is_running && answers_metadata; then echo "kafka $(kafka_version): running on 127.0.0.1:$PORT (pid $(cat "$DATA/kafka.pid"))"
  elif is_running; then echo "kafka $(kafka_version): process $(cat "$DATA/kafka.pid") up but not answering metadata"; return 1
  else echo "kafka $(kafka_version): stopped"; return 3
  fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  version) kafka_version ;;
  *) die "usage: $0 fetch|start|stop|status|version" ;;
esac
