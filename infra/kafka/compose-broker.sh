#!/usr/bin/env bash
# The compose stack's broker, configured like `dnc up`'s (infra/launch/kafka_config.py): SASL/SCRAM on the
# client listeners, the KRaft StandardAuthorizer (what no ACL allows is denied), and the
# superuser created when the storage is formatted (SCRAM credentials live in the metadata
# log). The controller listener stays PLAINTEXT inside the compose network (KRaft does not
# support SCRAM there; it serves controller requests only). `dnc acl apply` (the acl-init
# service) then creates one principal per role and their ACLs.
#
# One script for both compose stacks. Unset, the variables below give the single broker of the
# default stack; the `cluster` profile runs it three times (kafka-1..3), each node a broker and
# a KRaft controller, with replication factor 3 and min.insync.replicas 2 by default:
#   BROKER_NODE_ID         node.id (1)
#   BROKER_HOST            this node's name on the compose network (kafka)
#   BROKER_EXTERNAL_PORT   listener published on the host's loopback, same port inside (9092)
#   BROKER_QUORUM_VOTERS   controller.quorum.voters, the same on every node (1@kafka:9093)
#   BROKER_REPLICATION     replication factor of the internal topics and of new topics (1);
#                          min.insync.replicas is RF-1 (at least 1)
set -euo pipefail
: "${DNC_KAFKA_SUPERUSER_PASSWORD:?set DNC_KAFKA_SUPERUSER_PASSWORD (bash infra/compose-env.sh > .env)}"
NODE_ID="${BROKER_NODE_ID:-1}"
HOST="${BROKER_HOST:-kafka}"
EXTERNAL_PORT="${BROKER_EXTERNAL_PORT:-9092}"
VOTERS="${BROKER_QUORUM_VOTERS:-1@kafka:9093}"
RF="${BROKER_REPLICATION:-1}"
MIN_ISR=$((RF > 1 ? RF - 1 : 1))
CONFIG=/tmp/server.properties
CLIENT=/tmp/superuser.properties
JAAS="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"dnc-superuser\" password=\"${DNC_KAFKA_SUPERUSER_PASSWORD}\";"
umask 077
cat > "$CONFIG" <<EOF
node.id=${NODE_ID}
process.roles=broker,controller
listeners=INTERNAL://0.0.0.0:19092,EXTERNAL://0.0.0.0:${EXTERNAL_PORT},CONTROLLER://0.0.0.0:9093
advertised.listeners=INTERNAL://${HOST}:19092,EXTERNAL://127.0.0.1:${EXTERNAL_PORT}
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
controller.quorum.voters=${VOTERS}
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.internal.scram-sha-512.sasl.jaas.config=${JAAS}
listener.name.external.scram-sha-512.sasl.jaas.config=${JAAS}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:dnc-superuser;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=/var/lib/kafka/data
num.partitions=3
auto.create.topics.enable=false
default.replication.factor=${RF}
min.insync.replicas=${MIN_ISR}
offsets.topic.replication.factor=${RF}
transaction.state.log.replication.factor=${RF}
transaction.state.log.min.isr=${MIN_ISR}
group.initial.rebalance.delay.ms=0
EOF
cat > "$CLIENT" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=${JAAS}
EOF
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "${KAFKA_CLUSTER_ID:-XhK1tmerTme5_VcLyJztyw}" \
    -c "$CONFIG" --add-scram "SCRAM-SHA-512=[name=dnc-superuser,password=${DNC_KAFKA_SUPERUSER_PASSWORD}]"
exec /opt/kafka/bin/kafka-server-start.sh "$CONFIG"
