"""A Redis Cluster on loopback: masters with one replica each, from Debian's redis-server.

Each node is ``redis-server --cluster-enabled yes`` in its own directory (its
``nodes.conf`` there), without persistence like the plain Redis of
:func:`infra.launch.redis_server.start_redis`, with ``maxmemory-policy noeviction`` (the view must
never lose a key to eviction) and a 2 s node timeout so that a failover takes seconds.
``redis-cli --cluster create`` assigns the slots and pairs replicas with masters.

Typical use::

    cluster = RedisCluster(tmp_path / "redis-cluster")
    cluster.start()                           # 3 masters, 3 replicas, all slots served
    cluster.url                               # "redis://127.0.0.1:40001" (the seed node)
    master = cluster.master_for_key("dnc:v1:{acme}:7")
    cluster.kill(master.port)                 # SIGKILL
    promoted = cluster.wait_failover(master)  # its replica now serves those slots
    cluster.stop()

Every node is registered for termination at interpreter exit, like the other services.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from infra.launch.process import RunningService, ServiceError, free_port, service_error
from infra.launch.redis_server import start_redis

__all__ = ["ClusterNode", "RedisCluster"]

log = logging.getLogger("dnc.infra")

SLOTS = 16384
_READY_TIMEOUT = 60.0
_CREATE_TIMEOUT = 60.0


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster describes it (``CLUSTER NODES``) and the process behind it."""

    node_id: str
    port: int
    role: str  # "master" or "replica"
    master_id: str | None  # a replica's master
    slots: tuple[tuple[int, int], ...]  # a master's slot ranges, inclusive
    failed: bool  # flagged fail / fail? by the node asked
    pid: int | None  # None: not one of this cluster's processes, or not running

    def owns(self, slot: int) -> bool:
        """True if this master serves ``slot``."""
        return any(lo <= slot <= hi for lo, hi in self.slots)


class RedisCluster:
    """``masters`` masters with ``replicas`` replica(s) each on ``host``, files in ``base_dir``.

    ``ports``: every node's port (masters first, as ``redis-cli --cluster create`` takes
    them); None picks free ones.
    """

    def __init__(
        self,
        base_dir: Path,
        masters: int = 3,
        replicas: int = 1,
        host: str = "127.0.0.1",
        ports: list[int] | None = None,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs 3 masters or more")
        count = masters * (1 + replicas)
        if ports is not None and len(ports) != count:
            raise ValueError(f"ports must name all {count} nodes")
        self.base_dir = Path(base_dir).resolve()
        self.masters = masters
        self.replicas = replicas
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self._ports: list[int | None] = list(ports) if ports else [None] * count
        self.processes: dict[int, RunningService] = {}  # port -> process
        self._dirs: dict[int, Path] = {}  # port -> data directory
        self._bus_ports: dict[int, int] = {}  # node index -> cluster bus port

    # -- addresses ------------------------------------------------------------------------
    @property
    def seed_port(self) -> int:
        """Port of the first node: the one address clients are given."""
        if not self._dirs:
            raise ServiceError("the Redis Cluster is not started; call start() first.")
        return next(iter(self._dirs))

    @property
    def url(self) -> str:
        """``redis://host:seed_port``: clients discover the other nodes from it."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{h}:{self.seed_port}"

    @property
    def ports(self) -> list[int]:
        """Every node's port, in start order."""
        return list(self._dirs)

    def running(self) -> list[RunningService]:
        """The node processes that run, in start order."""
        return [p for p in self.processes.values() if p.running]

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start every node, create the cluster (unless its nodes already know one), and
        return once every node says ``cluster_state:ok`` with all slots assigned and every
        replica has synced with its master."""
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise service_error(
                "redis-cli was not found on PATH; it creates the Redis Cluster.",
                "install it with `make setup` (infra/setup.sh) or `apt-get install redis-tools`.",
            )
        started = time.monotonic()
        try:
            for index, port in enumerate(self._ports):
                self._start_node(index, port)
            if not self._formed():
                self._create(redis_cli)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "redis cluster %s (%d masters, %d replicas each) ready in %.1f s",
            self.url,
            self.masters,
            self.replicas,
            time.monotonic() - started,
        )

    def _start_node(self, index: int, port: int | None) -> RunningService:
        data_dir = self.base_dir / f"node-{index + 1}"
        data_dir.mkdir(parents=True, exist_ok=True)
        bus = self._bus_port(index, port, data_dir)
        service = start_redis(
            data_dir,
            port=port,
            host=self.host,
            name=f"redis-{index + 1}",
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(bus),
                "--maxmemory-policy", "noeviction",
            ),
        )  # fmt: skip
        self._ports[index] = service.port
        self._dirs[service.port] = data_dir
        self.processes[service.port] = service
        return service

    def _bus_port(self, index: int, port: int | None, data_dir: Path) -> int:
        """The node's cluster bus port: the one it had (its peers' nodes.conf name it, so a
        restarted cluster finds itself again), else port + 10000 (Redis's default), else,
        above 55535 (where free ports often are), a free port. Kept in the node's dir."""
        saved = data_dir / "bus-port"
        bus = self._bus_ports.get(index)
        if bus is None and saved.is_file():
            bus = int(saved.read_text().strip())
        if bus is None:
            bus = port + 10000 if port is not None and port <= 55535 else free_port(self.host)
        saved.write_text(f"{bus}\n")
        self._bus_ports[index] = bus
        return bus

    def _formed(self) -> bool:
        """Every node already knows the whole cluster (a restart on the same directories)."""
        try:
            return all(
                _cluster_info(self._client(p)).get("cluster_known_nodes") == str(len(self._dirs))
                for p in self._dirs
            )
        except redis.RedisError:
            return False

    def _create(self, redis_cli: str) -> None:
        h = f"[{self.host}]" if ":" in self.host else self.host
        cmd = [redis_cli, "--cluster", "create", *(f"{h}:{p}" for p in self._dirs),
               "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
        log_path = self.base_dir / "cluster-create.log"
        with log_path.open("ab") as out:
            result = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=_CREATE_TIMEOUT, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise service_error(
                f"`redis-cli --cluster create` failed (exit code {result.returncode}).",
                "read its output below; if the node directories hold another cluster's "
                "nodes.conf, delete them and retry.",
                log_path,
            )

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Until every running node says cluster_state:ok, all slots assigned and served,
        ``masters`` masters, and every other running node is a replica that has synced with
        its master."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self._not_ready_reason()
            if not last:
                return
            time.sleep(0.2)
        raise service_error(
            f"the Redis Cluster at {self.url} was not ready within {timeout:.0f} s: {last}.",
            "read the nodes' logs in " + str(self.base_dir),
        )

    def _not_ready_reason(self) -> str:
        try:
            for proc in self.running():
                info = _cluster_info(self._client(proc.port))
                if info.get("cluster_state") != "ok":
                    return f"node {proc.port}: cluster_state {info.get('cluster_state')}"
                if info.get("cluster_slots_assigned") != str(SLOTS):
                    return f"node {proc.port}: {info.get('cluster_slots_assigned')} slots assigned"
                if info.get("cluster_slots_fail", "0") != "0":
                    return f"node {proc.port}: {info['cluster_slots_fail']} slots failing"
            nodes = self.nodes()
            masters = [n for n in nodes if n.role == "master" and n.slots and not n.failed]
            if len(masters) != self.masters:
                return f"{len(masters)} masters serve slots (expected {self.masters})"
            # Every other running node is a replica of one of them (a node the cluster
            # has not paired yet is a master without slots).
            serving = {n.node_id for n in masters}
            for node in nodes:
                if (
                    node.pid is not None
                    and node.node_id not in serving
                    and (node.role != "replica" or node.master_id not in serving)
                ):
                    return f"node {node.port} is not the replica of a serving master yet"
            for node in nodes:
                if node.role != "replica" or node.pid is None:
                    continue
                repl = self._client(node.port).info("replication")
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                    return f"replica {node.port} has not synced with its master yet"
        except redis.RedisError as exc:
            return f"a node did not answer ({exc})"
        return ""

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL). Idempotent."""
        for proc in self.processes.values():
            proc.stop(timeout=10)

    # -- looking and faults ---------------------------------------------------------------
    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(self.host, port, socket_timeout=2, socket_connect_timeout=2)

    def nodes(self) -> list[ClusterNode]:
        """Every node as a running node sees the cluster (``CLUSTER NODES``), with its pid."""
        last: Exception | None = None
        for proc in self.running():
            try:
                with self._client(proc.port) as client:
                    raw = _cluster(client, "NODES")
            except redis.RedisError as exc:
                last = exc
                continue
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return [self._parse_node(line) for line in text.splitlines() if line.strip()]
        raise ServiceError(f"no node of the Redis Cluster at {self.host} answers ({last})")

    def _parse_node(self, line: str) -> ClusterNode:
        fields = line.split()
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        flags = set(fields[2].split(","))
        slots = []
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated or imported
            lo, _, hi = part.partition("-")
            slots.append((int(lo), int(hi or lo)))
        proc = self.processes.get(port)
        return ClusterNode(
            node_id=fields[0],
            port=port,
            role="master" if "master" in flags else "replica",
            master_id=None if fields[3] == "-" else fields[3],
            slots=tuple(slots),
            failed=bool(flags & {"fail", "fail?"}),
            pid=proc.process.pid if proc is not None and proc.running else None,
        )

    def key_slot(self, key: str | bytes) -> int:
        """The hash slot of ``key`` (``CLUSTER KEYSLOT``, hash tags included)."""
        with self._client(self.running()[0].port) as client:
            return int(_cluster(client, "KEYSLOT", key))

    def master_for_key(self, key: str | bytes) -> ClusterNode:
        """The master that serves ``key``'s slot."""
        slot = self.key_slot(key)
        for node in self.nodes():
            if node.role == "master" and not node.failed and node.owns(slot):
                return node
        raise ServiceError(f"no master serves slot {slot} of the Redis Cluster")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The replicas of ``master``."""
        return [n for n in self.nodes() if n.master_id == master.node_id]

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash)."""
        proc = self.processes.get(port)
        if proc is None:
            raise ServiceError(f"no node of this Redis Cluster listens on {port}")
        proc.kill()

    def wait_failover(self, old_master: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """Until a replica of ``old_master`` (killed) has been promoted and serves its slots,
        and the cluster is ok again on every running node; returns the new master."""
        deadline = time.monotonic() + timeout
        slot = old_master.slots[0][0]
        reason = ""
        while time.monotonic() < deadline:
            try:
                promoted = [
                    n for n in self.nodes()
                    if n.role == "master" and n.port != old_master.port and not n.failed
                    and n.owns(slot)
                ]  # fmt: skip
                reason = self._not_ready_reason() if promoted else "no replica promoted yet"
            except ServiceError as exc:
                reason = str(exc)
            if not reason:
                return promoted[0]
            time.sleep(0.1)
        raise ServiceError(
            f"the Redis Cluster did not fail over from {old_master.port} within "
            f"{timeout:.0f} s: {reason}"
        )

    def restart(self, port: int) -> RunningService:
        """Start the node on ``port`` again (empty, its ``nodes.conf`` kept): it rejoins the
        cluster, as a replica if it was failed over meanwhile."""
        index = self.ports.index(port)
        old = self.processes.get(port)
        if old is not None:
            old.stop()
        return self._start_node(index, port)


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """``CLUSTER INFO`` as a dict of strings."""
    raw = _cluster(client, "INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _cluster(client: redis.Redis, *args: str | bytes) -> Any:
    """``CLUSTER <args>``, its reply unparsed (redis-py types ``execute_command`` loosely)."""
    command: Any = client.execute_command
    return command("CLUSTER", *args)
