"""The offsets a rebalance reads on clients of the worker's own (not Faust's consumer, whose
requests queue behind its fetches): where a changelog partition's last data record is, where
its log starts (Faust's recovery), and where a never-committed source partition's delivery
starts (the frontier's seed), on the real Kafka."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.types import TP

from schemas.settings import Settings
from streams.faust_bridge import last_data_offsets, log_start_offsets
from streams.log_end import LogEndReader


def _topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"t-recovery-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    return name


def _produce_in_transactions(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    """Each partition's records in a transaction of their own (each ends with a marker)."""
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})  # fmt: skip
    producer.init_transactions(30)
    for partition, count in per_partition.items():
        producer.begin_transaction()
        for i in range(count):
            producer.produce(topic, value=b"v%d" % i, key=b"k%d" % i, partition=partition)
        producer.commit_transaction(30)


@pytest.mark.kafka
def test_the_last_data_record_skips_the_transaction_markers(bootstrap: str) -> None:
    topic = _topic(bootstrap)
    _produce_in_transactions(bootstrap, topic, {0: 5, 1: 1})
    _produce_in_transactions(bootstrap, topic, {0: 2})
    tps = [TP(topic, p) for p in range(3)]
    last = last_data_offsets({"bootstrap.servers": bootstrap}, tps)
    # partition 0: 5 records, a marker (5), 2 records (6, 7), a marker (8)
    assert last == {TP(topic, 0): 7, TP(topic, 1): 0, TP(topic, 2): -1}


@pytest.mark.kafka
def test_the_log_start_moves_when_records_are_deleted(bootstrap: str) -> None:
    topic = _topic(bootstrap, partitions=2)
    _produce_in_transactions(bootstrap, topic, {0: 10})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deleted = admin.delete_records([TopicPartition(topic, 0, 4)])
    for future in deleted.values():
        future.result(30)
    tps = [TP(topic, 0), TP(topic, 1)]
    assert log_start_offsets({"bootstrap.servers": bootstrap}, tps) == {
        TP(topic, 0): 4, TP(topic, 1): 0
    }  # fmt: skip
    settings = Settings(kafka_bootstrap=bootstrap)
    reader = LogEndReader(settings)
    starts = asyncio.run(reader.start_offsets(tps, wait=10))
    ends = asyncio.run(reader.end_offsets(tps, wait=10))
    assert starts == {TP(topic, 0): 4, TP(topic, 1): 0}
    assert ends == {TP(topic, 0): 11, TP(topic, 1): 0}  # (10 records and a marker)
