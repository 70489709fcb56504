"""The clusters the test suite and `dnc up --brokers 3 --redis-cluster` run, on their own.

A 3-broker KRaft cluster: the pipeline's topics get replication factor 3 and
min.insync.replicas 2, and an acks=all publisher keeps being acknowledged with a broker
SIGKILLed. A Redis Cluster: 3 masters with a replica each; a master SIGKILLed, its replica
is promoted (with the data written before) and the cluster is ok again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)
from pydantic import SecretStr
from rich.console import Console

from dnc.local import LocalPipeline, _scrape_targets
from infra.launch.redis_cluster import SLOTS, RedisCluster
from infra.launch.stack import LocalStack
from producers.publisher import OppositionPublisher
from schemas.errors import PublishError
from schemas.events import Kind, OppositionEvent
from schemas.settings import REDIS_CLUSTER_FILE, Settings
from schemas.topics import pipeline_topics
from tests.harness import Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _admin(stack: LocalStack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.bootstrap_servers})


def _replicas(admin: AdminClient, topic: str) -> dict[int, tuple[list[int], list[int]]]:
    """Per partition of ``topic``: its replicas and its in-sync replicas."""
    found = admin.list_topics(topic, timeout=10).topics[topic]
    return {p.id: (sorted(p.replicas), sorted(p.isrs)) for p in found.partitions.values()}


@pytest.fixture(scope="module")
def cluster_pipeline(
    kafka_cluster_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Pipeline:
    """The pipeline's topics on the cluster (no worker: these tests are about Kafka)."""
    p = Pipeline(
        kafka_cluster_stack,
        tmp_path_factory.mktemp("clusters"),
        prefix=f"c{uuid.uuid4().hex[:10]}",
    )
    return p


@pytest.mark.timeout(240)
def test_three_brokers_replicate_every_pipeline_topic_3_times_with_min_isr_2(
    kafka_cluster_stack: LocalStack, cluster_pipeline: Pipeline
) -> None:
    stack = kafka_cluster_stack
    assert stack.kafka_cluster is not None and len(stack.bootstrap_servers.split(",")) == 3
    admin = _admin(stack)
    assert len(admin.list_topics(timeout=10).brokers) == 3
    assert cluster_pipeline.settings.replication_factor == 3
    specs = pipeline_topics(cluster_pipeline.settings)
    wait_for(
        lambda: all(t.name in admin.list_topics(timeout=10).topics for t in specs),
        timeout=30,
        what="the pipeline topics in the metadata",
    )
    for spec in specs:
        for partition, (replicas, isr) in _replicas(admin, spec.name).items():
            assert replicas == [1, 2, 3], (spec.name, partition, replicas)
            assert isr == [1, 2, 3], (spec.name, partition, isr)
    resources = [ConfigResource(ResourceType.TOPIC, t.name) for t in specs]

    def min_insync() -> dict[str, str] | None:
        # The broker answering may not have the new topics' metadata yet
        # (UNKNOWN_TOPIC_OR_PART right after creation on 3 brokers): asked again.
        try:
            return {
                resource.name: future.result(timeout=10)["min.insync.replicas"].value
                for resource, future in admin.describe_configs(resources).items()
            }
        except KafkaException:
            return None

    found = wait_for(min_insync, timeout=30, what="the pipeline topics' configs")
    assert found == {t.name: "2" for t in specs}, found
    # The broker defaults: topics nobody configured (Faust's changelog, the consumer
    # offsets) are replicated the same way.
    broker = ConfigResource(ResourceType.BROKER, "1")
    config = next(iter(admin.describe_configs([broker]).values())).result(timeout=10)
    assert config["default.replication.factor"].value == "3"
    assert config["min.insync.replicas"].value == "2"
    assert config["offsets.topic.replication.factor"].value == "3"
    assert config["transaction.state.log.replication.factor"].value == "3"
    assert config["transaction.state.log.min.isr"].value == "2"


def _publish(publisher: OppositionPublisher, first: int, count: int) -> list[str]:
    """Publish ``count`` oppositions; the numbers Kafka acknowledged (acks=all)."""
    acked: list[str] = []
    failed: list[object] = []
    events = [
        OppositionEvent.record(tenant="acme", phone=f"+336{first + i:08d}", kind=Kind.OPPOSITION)
        for i in range(count)
    ]

    def done(event: OppositionEvent, outcome: object) -> None:
        if isinstance(outcome, PublishError):
            failed.append(outcome)
        elif event.phone_e164:
            acked.append(event.phone_e164)

    publisher.publish_many(events, on_done=done)
    assert not failed, failed[:3]
    return acked


@pytest.mark.timeout(240)
def test_an_acks_all_publisher_keeps_being_acknowledged_with_a_broker_sigkilled(
    kafka_cluster_stack: LocalStack, cluster_pipeline: Pipeline
) -> None:
    stack, topic = kafka_cluster_stack, cluster_pipeline.settings.oppositions_topic
    admin = _admin(stack)
    assert len(_publish(cluster_pipeline.publisher, 10_000_000, 50)) == 50
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    stack.kill_broker(leader)
    killed_at = time.monotonic()
    try:
        # Every partition of the log is acknowledged with two replicas in sync.
        acked = _publish(cluster_pipeline.publisher, 20_000_000, 200)
        print(f"200 events acknowledged {time.monotonic() - killed_at:.1f}s after the kill")
        assert len(acked) == 200
        wait_for(
            lambda: all(len(isr) == 2 for _r, isr in _replicas(admin, topic).values()),
            timeout=30,
            what=f"broker {leader} out of every ISR",
        )
        assert all(leader not in isr for _r, isr in _replicas(admin, topic).values())
        assert len(_publish(cluster_pipeline.publisher, 30_000_000, 50)) == 50
    finally:
        started = time.monotonic()
        stack.restart_broker(leader)
        print(f"broker {leader} back in {time.monotonic() - started:.1f}s")
    wait_for(
        lambda: all(isr == [1, 2, 3] for _r, isr in _replicas(admin, topic).values()),
        timeout=60,
        what=f"broker {leader} back in every ISR",
    )
    # Nothing acknowledged was lost: 300 events in the log.
    got = cluster_pipeline.consume(topic, 300, timeout=60)
    assert len(got) == 300


def test_the_redis_cluster_has_three_masters_with_a_replica_each(
    redis_cluster: RedisCluster,
) -> None:
    nodes = redis_cluster.nodes()
    masters = [n for n in nodes if n.role == "master"]
    assert len(masters) == 3 and len(nodes) == 6
    assert sum(hi - lo + 1 for m in masters for lo, hi in m.slots) == SLOTS
    for master in masters:
        replicas = redis_cluster.replicas_of(master)
        assert len(replicas) == 1 and replicas[0].pid is not None, (master, replicas)
    assert all(n.pid is not None for n in nodes)
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.seed_port}"


@pytest.mark.timeout(120)
def test_a_killed_redis_master_is_replaced_by_its_replica_with_its_data(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        key = "dnc:v1:{acme}:7"
        client.sadd(key, 42)
        master = redis_cluster.master_for_key(key)
        replica = redis_cluster.replicas_of(master)[0]
        # The replica has the write before its master dies (replication is asynchronous).
        master_client = redis.Redis(port=master.port)
        assert master_client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        master_client.close()
        killed_at = time.monotonic()
        redis_cluster.kill(master.port)
        promoted = redis_cluster.wait_failover(master, timeout=30)
        print(f"failover in {time.monotonic() - killed_at:.1f}s")
        assert promoted.node_id == replica.node_id and promoted.role == "master"
        assert redis_cluster.master_for_key(key).port == replica.port
        for proc in redis_cluster.running():
            info = redis.Redis(port=proc.port).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            text = info.decode() if isinstance(info, bytes) else str(info)
            assert "cluster_state:ok" in text, (proc.port, text)
        assert wait_for(lambda: client.sismember(key, 42), timeout=10, what="the key served")
    finally:
        client.close()
    # The old master comes back empty and rejoins as the replica of the promoted one.
    redis_cluster.restart(master.port)
    redis_cluster.wait_ready()
    back = {n.port: n for n in redis_cluster.nodes()}[master.port]
    assert back.role == "replica" and back.master_id == replica.node_id


def test_dnc_up_gives_each_of_n_workers_its_id_port_and_the_cluster_settings(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, view_key="k" * 32, worker_metrics_port=9310)
    local = LocalPipeline(
        settings, "3.9.1", False, Console(file=None), brokers=3, workers=3, redis_cluster=True
    )
    # What start_services() gives every process once the clusters are up.
    local.settings = local.settings.model_copy(
        update={
            "kafka_bootstrap": "127.0.0.1:9092,127.0.0.1:40001,127.0.0.1:40002",
            "replication_factor": 3,
            "redis_cluster": True,
            "redis_url": SecretStr("redis://127.0.0.1:6379"),
        }
    )
    workers = local.worker_children()
    assert [w.name for w in workers] == ["worker-1", "worker-2", "worker-3"]
    assert [w.ports for w in workers] == [(9310,), (9320,), (9321,)]
    assert [w.env["DNC_WORKER_INSTANCE_ID"] for w in workers] == [
        "local-worker-1", "local-worker-2", "local-worker-3",
    ]  # fmt: skip
    assert [w.env["DNC_WORKER_METRICS_PORT"] for w in workers] == ["9310", "9320", "9321"]
    assert len({w.log_path for w in workers}) == 3
    for worker in workers:
        assert worker.env["DNC_KAFKA_BOOTSTRAP"] == local.settings.kafka_bootstrap
        assert worker.env["DNC_REPLICATION_FACTOR"] == "3"
        assert worker.env["DNC_REDIS_CLUSTER"] == "true"
        assert worker.env["DNC_REDIS_URL"] == "redis://127.0.0.1:6379"
        assert worker.env["DNC_KAFKA_SASL_USERNAME"] == "dnc-worker"
    targets = _scrape_targets(local.settings, demo=False, workers=3)
    assert targets["dnc-worker"] == ["127.0.0.1:9310", "127.0.0.1:9320", "127.0.0.1:9321"]
    # One worker: exactly as before (name, port, instance id from the environment).
    single = LocalPipeline(settings, "3.9.1", False, Console(file=None)).worker_children()
    assert [(w.name, w.ports, w.args) for w in single] == [("worker", (9310,), ["worker"])]


def test_other_commands_read_the_redis_cluster_dnc_up_runs_with_no_configuration(
    tmp_path: Path,
) -> None:
    (tmp_path / REDIS_CLUSTER_FILE).write_text('{"seed": "127.0.0.1:16379"}\n')
    here = "redis://127.0.0.1:16379"
    assert Settings(data_dir=tmp_path, redis_url=here).redis_cluster
    assert Settings(data_dir=tmp_path, redis_url=here + "/0").redis_cluster
    assert not Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:6379/0").redis_cluster
    assert not Settings(data_dir=tmp_path, redis_url=here, redis_cluster=False).redis_cluster
    (tmp_path / REDIS_CLUSTER_FILE).unlink()
    assert not Settings(data_dir=tmp_path, redis_url=here).redis_cluster
