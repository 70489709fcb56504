"""The local stack: Kafka and Redis on loopback in a directory it owns.

Typical use::

    from infra.launch.stack import LocalStack

    with LocalStack(tmp_path / "stack") as stack:
        stack.bootstrap_servers   # "127.0.0.1:40123"
        stack.redis_url           # "redis://127.0.0.1:40124/0"
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from infra.launch.kafka_broker import start_kafka
from infra.launch.kafka_cluster import KafkaCluster
from infra.launch.kafka_config import KafkaSecurity
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION, ensure_kafka_jars
from infra.launch.process import RunningService, ServiceError
from infra.launch.redis_cluster import RedisCluster
from infra.launch.redis_server import start_redis

__all__ = ["LocalStack"]

log = logging.getLogger("dnc.infra")


class LocalStack:
    """Kafka + Redis on loopback in a directory it owns; a context manager.

    ``base_dir/redis`` and ``base_dir/kafka`` hold each service's files and logs.
    ``kafka_proxied_port`` / ``kafka_advertised_proxy_port`` give Kafka the extra
    ``PROXIED`` listener for clients that go through a proxy (see
    :func:`~infra.launch.kafka_broker.start_kafka`).

    ``brokers`` > 1 runs a KRaft cluster instead (:class:`~.kafka_cluster.KafkaCluster`,
    files in ``base_dir/kafka-cluster``; ``kafka_port`` is then the first node's port),
    ``redis_cluster`` a Redis Cluster of 3 masters with a replica each
    (:class:`~infra.launch.redis_cluster.RedisCluster`, files in ``base_dir/redis-cluster``;
    ``redis_port`` is then the seed node's port, the others follow it).
    """

    def __init__(
        self,
        base_dir: Path,
        kafka_version: str = KAFKA_DEFAULT_VERSION,
        kafka_port: int | None = None,
        redis_port: int | None = None,
        partitions: int = 3,
        kafka_proxied_port: int | None = None,
        kafka_advertised_proxy_port: int | None = None,
        kafka_security: KafkaSecurity | None = None,
        brokers: int = 1,
        redis_cluster: bool = False,
    ) -> None:
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        if brokers > 1 and kafka_advertised_proxy_port is not None:
            raise ValueError("the proxied Kafka listener is for a single broker only")
        self.base_dir = Path(base_dir)
        self.kafka_security = kafka_security
        self.kafka_version = kafka_version
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.partitions = partitions
        self.kafka_proxied_port = kafka_proxied_port
        self.kafka_advertised_proxy_port = kafka_advertised_proxy_port
        self.brokers = brokers
        self.use_redis_cluster = redis_cluster
        self.host = "127.0.0.1"
        self.kafka: RunningService | None = None  # the single broker (brokers == 1)
        self.redis: RunningService | None = None  # the plain Redis (no redis_cluster)
        self.kafka_cluster: KafkaCluster | None = None
        self.redis_cluster: RedisCluster | None = None

    @property
    def redis_dir(self) -> Path:
        """Working directory of Redis."""
        return self.base_dir / "redis"

    @property
    def kafka_dir(self) -> Path:
        """Data directory of Kafka."""
        return self.base_dir / "kafka"

    @property
    def kafka_cluster_dir(self) -> Path:
        """Data directory of the Kafka cluster (``node-<id>`` per node)."""
        return self.base_dir / "kafka-cluster"

    @property
    def redis_cluster_dir(self) -> Path:
        """Working directory of the Redis Cluster (``node-<n>`` per node)."""
        return self.base_dir / "redis-cluster"

    def start(self) -> None:
        """Fetch the Kafka jars if needed, then start Redis and Kafka.

        If Kafka fails to start, Redis is stopped again before the error propagates.
        """
        ensure_kafka_jars(self.kafka_version)
        try:
            self._start_redis()
            self._start_kafka()
        except BaseException:
            self.stop()
            raise
        log.info(
            "local stack up: kafka %s, redis %s (files in %s)",
            self.bootstrap_servers,
            self.redis_url,
            self.base_dir,
        )

    def _start_redis(self) -> None:
        if self.use_redis_cluster:
            if self.redis_cluster is None or not self.redis_cluster.running():
                ports = None
                if self.redis_port is not None:
                    ports = [self.redis_port + i for i in range(6)]
                self.redis_cluster = RedisCluster(self.redis_cluster_dir, host=self.host,
                                                  ports=ports)  # fmt: skip
                self.redis_cluster.start()
        elif self.redis is None or not self.redis.running:
            self.redis = start_redis(self.redis_dir, port=self.redis_port, host=self.host)

    def _start_kafka(self) -> None:
        if self.brokers > 1:
            if self.kafka_cluster is None or not self.kafka_cluster.running():
                self.kafka_cluster = KafkaCluster(
                    self.kafka_cluster_dir,
                    brokers=self.brokers,
                    host=self.host,
                    version=self.kafka_version,
                    partitions=self.partitions,
                    security=self.kafka_security,
                    ports=[self.kafka_port] + [None] * (self.brokers - 1),
                )
                self.kafka_cluster.start()
        elif self.kafka is None or not self.kafka.running:
            self.kafka = start_kafka(
                self.kafka_dir,
                port=self.kafka_port,
                host=self.host,
                version=self.kafka_version,
                partitions=self.partitions,
                proxied_port=self.kafka_proxied_port,
                advertised_proxy_port=self.kafka_advertised_proxy_port,
                security=self.kafka_security,
            )

    def services(self) -> list[RunningService]:
        """Every running process of the stack: Redis node(s) first, then Kafka node(s)."""
        found = [self.redis] if self.redis is not None else []
        if self.redis_cluster is not None:
            found += self.redis_cluster.running()
        found += [self.kafka] if self.kafka is not None else []
        if self.kafka_cluster is not None:
            found += self.kafka_cluster.running()
        return [s for s in found if s.running]

    def stop(self) -> None:
        """Stop Kafka, then Redis.  Idempotent."""
        if self.kafka is not None:
            self.kafka.stop()
        if self.kafka_cluster is not None:
            self.kafka_cluster.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port (its data is gone)."""
        if self.redis is None:
            raise ServiceError(
                "restart_redis(): no plain Redis was started (call start() first; a Redis "
                "Cluster's nodes restart one by one: redis_cluster.restart(port))."
            )
        port = self.redis.port
        self.redis.stop()
        self.redis = start_redis(self.redis_dir, port=port, host=self.host)

    def restart_kafka(self) -> None:
        """Stop Kafka (if running) and start it on the same ports and data (topics kept).

        The proxied listener, if any, keeps its ports too (a proxy in front stays valid).
        A cluster's nodes are killed and restarted one by one instead
        (:meth:`kill_broker`, :meth:`restart_broker`).
        """
        if self.kafka is None:
            raise ServiceError(
                "restart_kafka(): no single broker was started (call start() first; with "
                "brokers > 1 use restart_broker(node_id))."
            )
        old = self.kafka
        old.stop()
        self.kafka = start_kafka(
            self.kafka_dir,
            port=old.port,
            controller_port=old.controller_port,
            host=self.host,
            version=self.kafka_version,
            partitions=self.partitions,
            proxied_port=old.proxied_port,
            advertised_proxy_port=old.advertised_proxy_port,
            security=self.kafka_security,
        )

    def _cluster(self) -> KafkaCluster:
        if self.kafka_cluster is None:
            raise ServiceError("no Kafka cluster was started: LocalStack(brokers=3), start().")
        return self.kafka_cluster

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL broker ``node_id`` (1..brokers) of the cluster: a crash."""
        self._cluster().kill(node_id)

    def restart_broker(self, node_id: int) -> None:
        """Start broker ``node_id`` of the cluster again (same ports and data); returns once
        it is back in the cluster."""
        self._cluster().restart(node_id)

    @property
    def bootstrap_servers(self) -> str:
        """Kafka bootstrap address, ``host:port`` (every node, comma-separated, for a cluster)."""
        if self.kafka_cluster is not None:
            return self.kafka_cluster.bootstrap_servers
        if self.kafka is None:
            raise ServiceError("LocalStack is not started; call start() or use it in `with`.")
        return self.kafka.address

    @property
    def redis_url(self) -> str:
        """Redis URL for database 0, ``redis://host:port/0``; for a Redis Cluster, the seed
        node's ``redis://host:port`` (clients discover the other nodes)."""
        if self.redis_cluster is not None:
            return self.redis_cluster.url
        if self.redis is None:
            raise ServiceError("LocalStack is not started; call start() or use it in `with`.")
        return f"redis://{self.redis.address}/0"

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
