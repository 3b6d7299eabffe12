#!/usr/bin/env bash
# Runs one Apache Kafka node (KRaft: broker and controller in one JVM) for
# `cargo xtask up`, `cargo xtask test` and the tests' private brokers. The one
# place that knows how a development Kafka is configured and started.
#
#   run.sh LIBS_DIR DATA_DIR PORT CONTROLLER_PORT
#   run.sh --new-cluster-id [COUNT]   (prints COUNT fresh cluster ids; a test)
#
# LIBS_DIR holds the broker's jars (`cargo xtask install-broker`). DATA_DIR
# keeps server.properties and the log (records, metadata); it is formatted on
# the first start and reused after, so a restart resumes with its topics and
# records. Clients connect to 127.0.0.1:PORT. The heap is KAFKA_HEAP (default
# 512m). The script execs the JVM: signals reach Kafka itself (SIGTERM is a
# controlled shutdown). Its log goes to stderr, warnings and up by default
# (KAFKA_LOG_LEVEL: info for more).
set -euo pipefail

# A cluster id is 16 random bytes, URL-safe base64 without padding. One that
# starts with '-' is read by kafka-storage as an option and Kafka does not
# start (one fresh start in 64 failed so): like Kafka's own ids, it is drawn
# again.
new_cluster_id() {
    local id=-
    while [ "${id:0:1}" = - ]; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    done
    echo "$id"
}

if [ "${1:-}" = --new-cluster-id ]; then
    for _ in $(seq "${2:-1}"); do new_cluster_id; done
    exit 0
fi

if [ $# -ne 4 ]; then
    echo "usage: $0 LIBS_DIR DATA_DIR PORT CONTROLLER_PORT" >&2
    exit 2
fi
libs=$1 dir=$2 port=$3 controller_port=$4
java=${JAVA_HOME:+$JAVA_HOME/bin/}java

[ -d "$libs" ] || { echo "kafka: no broker jars in $libs (run \`cargo xtask install-broker\`)" >&2; exit 1; }
mkdir -p "$dir/log"

# Written on every start, so a changed port or setting applies to kept data.
cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/log
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# As in compose.yaml: topics are created on purpose (xtask, the relay, the
# tests), never by a typo in a client.
auto.create.topics.enable=false
num.partitions=3
# A development machine has 2 cores to share with everything else.
num.network.threads=2
num.io.threads=2
background.threads=2
# The controller appends a no-op record to the metadata log when it has had
# nothing to write for this long (default 500 ms): on an idle stack that was
# most of the raft I/O, quorum controller and metadata loader threads' work,
# about 0.4% of a core of the broker's 2.0% (docs/perf.md). One node has no
# follower to keep informed.
metadata.max.idle.interval.ms=5000
EOF

# -XX:-UsePerfData: no hsperfdata file, and no sampler thread updating it
# every 50 ms (the JVM's periodic task thread, 0.1% of a core idle).
common_jvm=(-Djava.awt.headless=true -XX:+UseSerialGC -XX:-UsePerfData
    -Dorg.slf4j.simpleLogger.defaultLogLevel="${KAFKA_LOG_LEVEL:-warn}"
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient=error
    -Dorg.slf4j.simpleLogger.showDateTime=true
    -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS
    -Dorg.slf4j.simpleLogger.showThreadName=false
    -Dorg.slf4j.simpleLogger.showShortLogName=true
    -cp "$libs/*")

if [ ! -f "$dir/log/meta.properties" ]; then
    cluster_id=$(new_cluster_id)
    "$java" -Xmx128m "${common_jvm[@]}" kafka.tools.StorageTool format \
        --cluster-id "$cluster_id" --config "$dir/server.properties" >/dev/null
fi

exec "$java" -Xms"${KAFKA_HEAP:-512m}" -Xmx"${KAFKA_HEAP:-512m}" "${common_jvm[@]}" \
    kafka.Kafka "$dir/server.properties"
