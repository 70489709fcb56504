#!/bin/sh
# One-shot of the compose profile "cluster" (service redis-cluster-init): joins the six nodes of
# REDIS_CLUSTER_NODES ("host:port host:port ...") into a Redis Cluster of 3 masters with a
# replica each (`redis-cli --cluster create --cluster-replicas 1`), then waits until the first
# node answers cluster_state:ok and sees every replica attached.
#
# Idempotent: a `docker compose up` after the first one finds slots already assigned on the
# first node and creates nothing (create would refuse non-empty nodes anyway). A node that
# lost its nodes.conf (its container re-created) is not re-added here: the cluster then runs
# on its replica; `redis-cli --cluster add-node` brings it back.
set -eu
: "${REDIS_CLUSTER_NODES:?set REDIS_CLUSTER_NODES to the nodes, e.g. redis-1:6379 redis-2:6379 ...}"
first="${REDIS_CLUSTER_NODES%% *}"
host="${first%:*}"
port="${first##*:}"
cluster_info() { redis-cli -h "$host" -p "$port" cluster info | tr -d '\r'; }
replicas() { redis-cli -h "$host" -p "$port" cluster nodes | awk '$3 ~ /slave/' | wc -l; }
# shellcheck disable=SC2086 # one word per node
set -- $REDIS_CLUSTER_NODES
expected_replicas=$(($# / 2))

assigned="$(cluster_info | sed -n 's/^cluster_slots_assigned://p')"
if [ "${assigned:-0}" -eq 0 ]; then
    # shellcheck disable=SC2086 # one argument per node
    redis-cli --cluster create $REDIS_CLUSTER_NODES --cluster-replicas 1 --cluster-yes
else
    echo "Redis Cluster already created (${assigned} slots assigned on ${first})"
fi
waited=0
until cluster_info | grep -qx 'cluster_state:ok' && [ "$(replicas)" -eq "$expected_replicas" ]; do
    if [ "$waited" -ge 60 ]; then
        echo "Redis Cluster not ok with ${expected_replicas} replicas after 60 s:" >&2
        cluster_info >&2
        redis-cli -h "$host" -p "$port" cluster nodes >&2
        exit 1
    fi
    waited=$((waited + 1))
    sleep 1
done
echo "Redis Cluster ok: $(($# - expected_replicas)) masters, ${expected_replicas} replicas"
redis-cli -h "$host" -p "$port" cluster nodes
