"""A KRaft Kafka cluster of several broker+controller nodes on loopback.

The same Maven jars as the single broker (:func:`infra.launch.kafka_broker.start_kafka`); every node
is a combined broker and controller (``process.roles=broker,controller``), all of them in
``controller.quorum.voters``, all formatted with one cluster id. Topics default to
replication factor 3 with ``min.insync.replicas=2`` (the internal ones too), so the
cluster keeps accepting ``acks=all`` writes with one node down.

Typical use::

    cluster = KafkaCluster(tmp_path / "kafka", brokers=3)
    cluster.start()
    cluster.bootstrap_servers      # "127.0.0.1:40001,127.0.0.1:40003,127.0.0.1:40005"
    cluster.kill(2)                # SIGKILL node 2 (a crash)
    cluster.restart(2)             # same ports and data; back once it has rejoined
    cluster.stop()

Node directories are ``base_dir/node-<id>``. Every node is registered for termination at
interpreter exit, like the other services of :mod:`infra.launch`.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

from infra.launch.kafka_broker import (
    StartingKafka,
    find_java,
    not_ready_error,
    poll_node,
    random_cluster_id,
    spawn_node,
)
from infra.launch.kafka_config import KafkaNodeSpec, KafkaSecurity
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION, ensure_kafka_jars, kafka_major
from infra.launch.process import (
    PORT_RETRIES,
    RunningService,
    ServiceError,
    pick_port,
    service_error,
    terminate_quietly,
    unregister,
)

__all__ = ["KafkaCluster"]

log = logging.getLogger("dnc.infra")

_CLUSTER_START_TIMEOUT = 150.0  # three JVMs starting at once on two cores
_NODE_HEAP = "384m"


class KafkaCluster:
    """``brokers`` combined KRaft nodes (ids 1..N) on ``host``, files in ``base_dir``.

    ``ports``: the client port of each node (None, or a None entry: picked free); the
    controller ports are always picked free. ``security`` as for the single broker:
    SASL/SCRAM on the client listeners (inter-broker traffic included) and the
    StandardAuthorizer.
    """

    def __init__(
        self,
        base_dir: Path,
        brokers: int = 3,
        host: str = "127.0.0.1",
        version: str = KAFKA_DEFAULT_VERSION,
        partitions: int = 3,
        security: KafkaSecurity | None = None,
        ports: list[int | None] | None = None,
    ) -> None:
        if brokers < 2:
            raise ValueError("a cluster has 2 brokers or more; use start_kafka() for one")
        if ports is not None and len(ports) != brokers:
            raise ValueError(f"ports must name {brokers} client ports (None: pick a free one)")
        self.base_dir = Path(base_dir).resolve()
        self.brokers = brokers
        self.host = host
        self.version = version
        self.partitions = partitions
        self.security = security
        self.replication = min(3, brokers)
        self._ports: list[int | None] = list(ports) if ports is not None else [None] * brokers
        self.specs: dict[int, KafkaNodeSpec] = {}
        self.nodes: dict[int, RunningService] = {}

    # -- addresses ------------------------------------------------------------------------
    def node_dir(self, node_id: int) -> Path:
        """Data directory of node ``node_id`` (1..N)."""
        return self.base_dir / f"node-{node_id}"

    @property
    def node_ids(self) -> list[int]:
        """1..N."""
        return list(range(1, self.brokers + 1))

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated (what clients bootstrap from)."""
        if not self.specs:
            raise ServiceError("the Kafka cluster is not started; call start() first.")
        return ",".join(_address(self.host, self.specs[n].port) for n in self.node_ids)

    def node(self, node_id: int) -> RunningService:
        """The running process of node ``node_id``."""
        if node_id not in self.nodes:
            raise ServiceError(f"Kafka node {node_id} is not running (nodes: {self.node_ids}).")
        return self.nodes[node_id]

    def running(self) -> list[RunningService]:
        """The nodes whose process runs, by id."""
        return [self.nodes[n] for n in sorted(self.nodes) if self.nodes[n].running]

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start every node at once and return when each lists all N brokers.

        The storage of each node is formatted on first use with the cluster's id (read
        from a node formatted before, else new), so starting again keeps topics and offsets.
        Ports picked free are picked again if one was taken meanwhile.
        """
        libs = ensure_kafka_jars(self.version)
        java = find_java()
        major = kafka_major(self.version)
        cluster_id = self._cluster_id()
        auto = any(p is None for p in self._ports)
        bind_error = ""
        for _ in range(PORT_RETRIES if auto else 1):
            self.specs = self._specs(major, cluster_id)
            started = time.monotonic()
            result = self._start_all(java, libs, list(self.specs.values()))
            if result is None:
                log.info(
                    "kafka cluster %s (%d nodes) started in %.1f s (logs in %s)",
                    self.bootstrap_servers,
                    self.brokers,
                    time.monotonic() - started,
                    self.base_dir,
                )
                return
            bind_error = result
            log.info("a Kafka cluster node could not bind its ports (%s)", bind_error)
        raise service_error(
            f"the Kafka cluster could not bind its ports on {self.host}: address already in "
            f"use.\n  Broker said: {bind_error}",
            "stop whatever listens on those ports, or leave the ports to be picked free.",
        )

    def _cluster_id(self) -> str:
        for node_id in self.node_ids:
            meta = self.node_dir(node_id) / "logs" / "meta.properties"
            if meta.is_file():
                for line in meta.read_text().splitlines():
                    if line.startswith("cluster.id="):
                        return line.split("=", 1)[1].strip()
        return random_cluster_id()

    def _specs(self, major: int, cluster_id: str) -> dict[int, KafkaNodeSpec]:
        taken = {p for p in self._ports if p is not None}
        clients = {n: pick_port(self.host, self._ports[n - 1], taken) for n in self.node_ids}
        controllers = {n: pick_port(self.host, None, taken) for n in self.node_ids}
        h = f"[{self.host}]" if ":" in self.host else self.host
        voters = ",".join(f"{n}@{h}:{controllers[n]}" for n in self.node_ids)
        specs = {}
        for n in self.node_ids:
            data_dir = self.node_dir(n)
            data_dir.mkdir(parents=True, exist_ok=True)
            specs[n] = KafkaNodeSpec(
                data_dir,
                self.host,
                clients[n],
                controllers[n],
                self.partitions,
                major,
                security=self.security,
                node_id=n,
                voters=voters,
                cluster_id=cluster_id,
                replication=self.replication,
                heap=_NODE_HEAP,
            )
        return specs

    def _start_all(self, java: str, libs: Path, specs: list[KafkaNodeSpec]) -> str | None:
        """Spawn ``specs`` at once, wait until each is ready; the bind error line if any."""
        starting = [spawn_node(java, libs, spec) for spec in specs]
        pending = {s.spec.node_id: s for s in starting}
        deadline = time.monotonic() + _CLUSTER_START_TIMEOUT
        try:
            while pending and time.monotonic() < deadline:
                for node_id, node in list(pending.items()):
                    result = poll_node(node, expected_brokers=self.brokers)
                    if isinstance(result, str):
                        self._abort(starting)
                        return result
                    if result is not None:
                        self.nodes[node_id] = result
                        del pending[node_id]
                if pending:
                    time.sleep(0.2)
        except BaseException:
            self._abort(starting)
            raise
        if pending:
            first = next(iter(pending.values()))
            self._abort(starting)
            raise not_ready_error(first, _CLUSTER_START_TIMEOUT)
        return None

    def _abort(self, starting: list[StartingKafka]) -> None:
        for node in starting:
            terminate_quietly(node.process)
            service = self.nodes.pop(node.spec.node_id, None)
            if service is not None:
                unregister(service)

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` (a crash: no controlled shutdown, nothing flushed)."""
        self.node(node_id).kill()

    def restart(self, node_id: int) -> RunningService:
        """Start node ``node_id`` again (after :meth:`kill` or a crash) on its ports and data;
        returns once it is back in the cluster (it lists every broker)."""
        spec = self.specs.get(node_id)
        if spec is None:
            raise ServiceError(f"restart({node_id}): the cluster was never started.")
        old = self.nodes.get(node_id)
        if old is not None:
            old.stop()
        libs = ensure_kafka_jars(self.version)
        result = self._start_all(find_java(), libs, [spec])
        if result is not None:
            raise service_error(
                f"Kafka node {node_id} could not bind its ports again: {result}",
                "something else took them while it was down; stop it and retry.",
            )
        return self.nodes[node_id]

    def stop(self, timeout: float = 30) -> None:
        """Stop every node: SIGTERM to all at once (one by one, the last ones would wait for
        a quorum that is gone), then SIGKILL whatever still runs after ``timeout``."""
        alive = [n for n in self.nodes.values() if n.running]
        for node in alive:
            log.info("stopping %s (pid %d) at %s", node.name, node.process.pid, node.address)
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in alive:
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", node.name, timeout)
        for node in self.nodes.values():
            node.kill()  # reaps, unregisters; a no-op for those already gone


def _address(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{h}:{port}"
