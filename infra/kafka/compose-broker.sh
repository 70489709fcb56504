#!/usr/bin/env bash
# The compose stack's broker, configured like `dnc up`'s (infra/services.py): SASL/SCRAM on the
# client listeners, the KRaft StandardAuthorizer (what no ACL allows is denied), and the
# superuser created when the storage is formatted (SCRAM credentials live in the metadata
# log). The controller listener stays PLAINTEXT inside the compose network (KRaft does not
# support SCRAM there; it serves controller requests only). `dnc acl apply` (the acl-init
# service) then creates one principal per role and their ACLs.
set -euo pipefail
: "${DNC_KAFKA_SUPERUSER_PASSWORD:?set DNC_KAFKA_SUPERUSER_PASSWORD (bash infra/compose-env.sh > .env)}"
CONFIG=/tmp/server.properties
CLIENT=/tmp/superuser.properties
JAAS="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"dnc-superuser\" password=\"${DNC_KAFKA_SUPERUSER_PASSWORD}\";"
umask 077
cat > "$CONFIG" <<EOF
node.id=1
process.roles=broker,controller
listeners=INTERNAL://0.0.0.0:19092,EXTERNAL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093
advertised.listeners=INTERNAL://kafka:19092,EXTERNAL://127.0.0.1:9092
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
controller.quorum.voters=1@kafka:9093
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
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
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
