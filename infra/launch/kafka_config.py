"""What a KRaft broker+controller node is told: its properties, logging and security.

Pure text and data: nothing here starts a process (:mod:`infra.launch.kafka_broker` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["KafkaNodeSpec", "KafkaSecurity", "server_properties", "write_log_config"]


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL/SCRAM authentication and the KRaft StandardAuthorizer for the client listeners.

    ``superuser`` is created when the storage is formatted (SCRAM credentials live in the
    metadata log) and is the only principal allowed everything; every other principal and
    its ACLs are created with it (`dnc acl apply`). The controller listener stays
    PLAINTEXT on loopback (KRaft does not support SCRAM there); it serves controller
    requests only, never produce or fetch.
    """

    superuser: str
    password: str
    mechanism: str = "SCRAM-SHA-512"

    def client_config(self) -> dict[str, str]:
        """librdkafka options to connect as the superuser."""
        return {
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.superuser,
            "sasl.password": self.password,
        }


@dataclass(frozen=True)
class KafkaNodeSpec:
    """Where one KRaft broker+controller node listens and what it is part of.

    ``voters`` / ``cluster_id`` / ``replication`` are None / None / 1 for a single node.
    """

    data_dir: Path
    host: str
    port: int
    controller_port: int
    partitions: int
    major: int
    proxied_port: int | None = None
    advertised_proxy_port: int | None = None
    security: KafkaSecurity | None = None
    node_id: int = 1
    voters: str | None = None
    cluster_id: str | None = None
    replication: int = 1
    heap: str = "512m"

    @property
    def name(self) -> str:
        """``kafka`` for a single node, ``kafka-<id>`` for a cluster's."""
        return "kafka" if self.voters is None else f"kafka-{self.node_id}"


def server_properties(
    data_dir: Path,
    host: str,
    port: int,
    controller_port: int,
    partitions: int,
    major: int,
    proxied_port: int | None = None,
    advertised_proxy_port: int | None = None,
    security: KafkaSecurity | None = None,
    node_id: int = 1,
    voters: str | None = None,
    replication: int = 1,
) -> str:
    """``server.properties`` of a broker+controller node.

    ``voters`` is ``controller.quorum.voters`` (default: this node alone); ``replication``
    the default replication factor of every topic, the internal ones included, with
    ``min.insync.replicas`` 2 from 3 replicas on (one node may be lost), else 1.
    """
    h = f"[{host}]" if ":" in host else host
    min_isr = str(max(1, min(2, replication - 1)))
    client = "PLAINTEXT" if security is None else "SASL_PLAINTEXT"
    listeners = f"CLIENT://{h}:{port},CONTROLLER://{h}:{controller_port}"
    advertised = f"CLIENT://{h}:{port}"
    protocols = f"CLIENT:{client},CONTROLLER:PLAINTEXT"
    if proxied_port is not None and advertised_proxy_port is not None:
        # A client that bootstraps at the proxy reaches this listener, and is told to
        # connect to the proxy again for everything else: all its traffic is proxied.
        listeners += f",PROXIED://{h}:{proxied_port}"
        advertised += f",PROXIED://{h}:{advertised_proxy_port}"
        protocols += f",PROXIED:{client}"
    props: dict[str, str] = {
        "node.id": str(node_id),
        "process.roles": "broker,controller",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "inter.broker.listener.name": "CLIENT",
        "controller.listener.names": "CONTROLLER",
        "controller.quorum.voters": voters or f"{node_id}@{h}:{controller_port}",
        "listener.security.protocol.map": protocols,
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": str(partitions),
        "default.replication.factor": str(replication),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replication),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "3",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Small, quick node: fewer threads, short segments, no long shutdown waits.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.hours": "168",
        "log.retention.check.interval.ms": "300000",
        "controlled.shutdown.enable": "true",
        "controller.quorum.election.timeout.ms": "1000",
        "controller.quorum.fetch.timeout.ms": "2000",
        # After a crash (SIGKILL) the restarted broker cannot re-register until the old
        # incarnation's lease expires (default 9 s); a shorter lease makes restarts quick.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    if security is not None:
        mech = security.mechanism
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{security.superuser}" password="{security.password}";'
        )
        props |= {
            "sasl.enabled.mechanisms": mech,
            "sasl.mechanism.inter.broker.protocol": mech,
            f"listener.name.client.{mech.lower()}.sasl.jaas.config": jaas,
            f"listener.name.proxied.{mech.lower()}.sasl.jaas.config": jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # ANONYMOUS: the PLAINTEXT controller listener (controller requests only).
            "super.users": f"User:{security.superuser};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }
    if major >= 4:
        # Share groups (KIP-932) keep internal state in a topic that defaults to RF 3.
        props["share.coordinator.state.topic.replication.factor"] = str(replication)
        props["share.coordinator.state.topic.min.isr"] = min_isr
    kind = "single-node" if voters is None else f"node {node_id} of a"
    lines = [f"# Written by infra/launch/kafka_config.py: {kind} KRaft broker+controller."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


_LOG4J1_PROPERTIES = """\
# reload4j (Kafka 3.x): everything to stdout, which is redirected to kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.authorizer.logger=WARN
"""

_LOG4J2_PROPERTIES = """\
# Log4j 2 (Kafka 4.x): everything to stdout, which is redirected to kafka.log.
status = warn
name = dnc-kafka
# Kafka logs its own shutdown from a JVM hook; keep Log4j alive until the end.
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.storage.name = org.apache.kafka.storage.internals.log
logger.storage.level = warn
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = warn
"""


def write_log_config(data_dir: Path, major: int) -> list[str]:
    """Write the broker's logging config; return the JVM flags that select it."""
    if major >= 4:
        path = data_dir / "log4j2.properties"
        path.write_text(_LOG4J2_PROPERTIES)
        return [f"-Dlog4j2.configurationFile={path}"]
    path = data_dir / "log4j.properties"
    path.write_text(_LOG4J1_PROPERTIES)
    return [f"-Dlog4j.configuration={path.as_uri()}"]
