"""A KRaft Kafka node (broker and controller in one JVM), started from the cached jars.

``java -cp '<libs>/*' kafka.Kafka server.properties`` with the node's files in its data
directory; ready once it has logged that it started and the admin client sees it (and
every peer it waits for) in the cluster's metadata.  :mod:`infra.launch.kafka_cluster`
starts several nodes with the same steps.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.launch.kafka_config import (
    KafkaNodeSpec,
    KafkaSecurity,
    server_properties,
    write_log_config,
)
from infra.launch.kafka_jars import KAFKA_DEFAULT_VERSION, ensure_kafka_jars, kafka_major
from infra.launch.process import (
    PORT_RETRIES,
    RunningService,
    ServiceError,
    bind_error_or_raise,
    file_size,
    pick_port,
    read_from,
    register,
    service_error,
    spawn,
    terminate_quietly,
)

__all__ = [
    "StartingKafka",
    "broker_listed",
    "find_java",
    "not_ready_error",
    "poll_node",
    "random_cluster_id",
    "spawn_node",
    "start_kafka",
]

log = logging.getLogger("dnc.infra")

_KAFKA_START_TIMEOUT = 90.0
_KAFKA_STARTED_MARKER = "Kafka Server started"
_PROBE_TIMEOUT = 2.0


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found:
        return found
    raise service_error(
        "no Java runtime found ($JAVA_HOME/bin/java or java on PATH); Kafka needs Java 17+.",
        "run `make setup` (infra/setup.sh) or `apt-get install openjdk-17-jre-headless`.",
    )


def random_cluster_id() -> str:
    """A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cid


def _format_storage(
    java: str,
    libs: Path,
    data_dir: Path,
    props: Path,
    jvm_log: list[str],
    security: KafkaSecurity | None = None,
    cluster_id: str | None = None,
) -> None:
    """Format the KRaft log dir unless it already is (keeps data across restarts).

    ``cluster_id``: the id every node of a cluster is formatted with (default: a new one).
    """
    if (data_dir / "logs" / "meta.properties").is_file():
        return
    cluster_id = cluster_id or random_cluster_id()
    scram = (
        []
        if security is None
        else [
            "--add-scram",
            f"{security.mechanism}=[name={security.superuser},password={security.password}]",
        ]
    )
    cmd = [
        java,
        "-Xmx256m",
        *jvm_log,
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(props),
        *scram,
    ]
    log_path = data_dir / "kafka-format.log"
    with log_path.open("ab") as out:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(data_dir),
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise service_error(
            f"formatting the Kafka storage in {data_dir / 'logs'} failed "
            f"(exit code {result.returncode}).",
            "delete the directory if it holds a broken or foreign Kafka log dir, then retry.",
            log_path,
        )


@dataclass
class StartingKafka:
    """A broker process spawned, not yet known to be ready."""

    spec: KafkaNodeSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int
    started_line_seen: bool = False


def spawn_node(java: str, libs: Path, spec: KafkaNodeSpec) -> StartingKafka:
    """Write the node's config, format its storage if new, and start its JVM."""
    data_dir = spec.data_dir
    props = data_dir / "server.properties"
    text = server_properties(
        data_dir,
        spec.host,
        spec.port,
        spec.controller_port,
        spec.partitions,
        spec.major,
        spec.proxied_port,
        spec.advertised_proxy_port,
        spec.security,
        node_id=spec.node_id,
        voters=spec.voters,
        replication=spec.replication,
    )
    props.write_text(text)
    props.chmod(0o600)  # it holds the superuser's password when secured
    jvm_log = write_log_config(data_dir, spec.major)
    _format_storage(java, libs, data_dir, props, jvm_log, spec.security, spec.cluster_id)

    log_path = data_dir / "kafka.log"
    offset = file_size(log_path)
    cmd = [
        java,
        "-Xms256m",
        f"-Xmx{spec.heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data_dir}",
        *jvm_log,
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]
    env = dict(os.environ)
    for var in ("KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "JAVA_TOOL_OPTIONS"):
        env.pop(var, None)
    proc = spawn(cmd, log_path, data_dir, env=env)
    return StartingKafka(spec, proc, log_path, offset)


class _ProbeLog:
    """librdkafka's log lines while a broker is still starting ("Connection refused", "all
    brokers down") are expected: they go to ``dnc.infra`` at DEBUG, never raw to stderr."""

    def log(self, level: int, msg: str, *args: object) -> None:
        """What confluent-kafka calls for each librdkafka log line."""
        log.debug("admin probe: " + msg, *args)


def broker_listed(
    host: str,
    port: int,
    node_id: int = 1,
    expected: int = 1,
    security: KafkaSecurity | None = None,
) -> bool:
    """True once the broker at ``host:port`` answers the admin client's metadata request
    with node ``node_id`` among its live brokers, and ``expected`` brokers or more (a
    cluster's node waits for its peers).  With ``security`` it authenticates first."""
    h = f"[{host}]" if ":" in host else host
    config: dict[str, Any] = {"bootstrap.servers": f"{h}:{port}", "logger": _ProbeLog()}
    if security is not None:
        config |= security.client_config()
    admin = AdminClient(config)
    try:
        brokers = admin.list_topics(timeout=_PROBE_TIMEOUT).brokers
    except KafkaException:
        admin.poll(0)  # serves the queued log lines (to _ProbeLog)
        return False
    return node_id in brokers and len(brokers) >= expected


def poll_node(starting: StartingKafka, expected_brokers: int = 1) -> RunningService | str | None:
    """One look at a starting broker: the service once ready (registered for exit), the
    bind error line if it exited because a port was taken, None while still starting."""
    spec, proc = starting.spec, starting.process
    if proc.poll() is not None:
        return bind_error_or_raise(
            proc, starting.log_path, starting.offset, ("Address already in use", "BindException"),
            f"the Kafka broker {spec.name} on {spec.host}:{spec.port} "
            f"(controller {spec.controller_port})",
            "read the log below; if the data dir is from another Kafka version or "
            "cluster, delete it and retry.",
        )  # fmt: skip
    if not starting.started_line_seen:
        starting.started_line_seen = _KAFKA_STARTED_MARKER in read_from(
            starting.log_path, starting.offset
        )
    if not starting.started_line_seen:
        return None
    ready = broker_listed(spec.host, spec.port, spec.node_id, expected_brokers, spec.security)
    if not ready:
        return None
    service = RunningService(
        spec.name,
        spec.host,
        spec.port,
        proc,
        starting.log_path,
        data_dir=spec.data_dir,
        controller_port=spec.controller_port,
        proxied_port=spec.proxied_port,
        advertised_proxy_port=spec.advertised_proxy_port,
    )
    register(service)
    return service


def not_ready_error(starting: StartingKafka, timeout: float) -> ServiceError:
    spec = starting.spec
    return service_error(
        f"the Kafka broker {spec.name} on {spec.host}:{spec.port} was not ready within "
        f"{timeout:.0f} s.",
        "read the log below; the machine may be overloaded or out of memory.",
        starting.log_path,
        starting.offset,
    )


def _start_kafka_once(java: str, libs: Path, spec: KafkaNodeSpec) -> RunningService | str:
    """Start the broker; if one of its ports is taken, return the broker's error line."""
    starting = spawn_node(java, libs, spec)
    deadline = time.monotonic() + _KAFKA_START_TIMEOUT
    while time.monotonic() < deadline:
        result = poll_node(starting)
        if result is not None:
            return result
        time.sleep(0.1)
    terminate_quietly(starting.process)
    raise not_ready_error(starting, _KAFKA_START_TIMEOUT)


def start_kafka(
    data_dir: Path,
    port: int | None = None,
    controller_port: int | None = None,
    host: str = "127.0.0.1",
    version: str = KAFKA_DEFAULT_VERSION,
    partitions: int = 3,
    proxied_port: int | None = None,
    advertised_proxy_port: int | None = None,
    security: KafkaSecurity | None = None,
) -> RunningService:
    """Start a single-node KRaft Kafka (broker and controller in one JVM).

    Everything lives in ``data_dir``: ``server.properties``, the log4j config, the
    topic data under ``logs/`` and the broker output in ``kafka.log``.  The storage is
    formatted only on first use, so starting again on the same ``data_dir`` keeps the
    topics and offsets (pass the previous ``port``/``controller_port`` to keep the
    address too).  ``None`` ports are picked free, and the whole start is retried with
    new ports if one was taken meanwhile.

    With ``advertised_proxy_port`` the broker gets a second client listener,
    ``PROXIED`` on ``host:proxied_port`` (picked free when ``None``, like the other
    ports), which advertises ``host:advertised_proxy_port``: the listen port of a TCP
    proxy (Toxiproxy) whose upstream is ``proxied_port``.  A client bootstrapping at the
    proxy then makes every connection through it, while clients of the ``PLAINTEXT``
    listener (:attr:`RunningService.address`) are not affected.  The returned service's
    ``proxied_port`` / :attr:`~RunningService.proxied_address` say where to point the
    proxy.

    With ``security`` the client listeners require SASL/SCRAM and the StandardAuthorizer
    denies whatever no ACL allows (see :class:`KafkaSecurity`).

    Returns once the broker has logged that it started and the admin client's metadata
    lists it (:func:`broker_listed`); raises :class:`ServiceError` (with the log tail) after 90 s.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    if proxied_port is not None and advertised_proxy_port is None:
        raise ValueError("proxied_port needs advertised_proxy_port (the proxy's listen port)")
    major = kafka_major(version)
    libs = ensure_kafka_jars(version)
    java = find_java()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    proxied = advertised_proxy_port is not None
    auto_ports = port is None or controller_port is None or (proxied and proxied_port is None)
    attempts = PORT_RETRIES if auto_ports else 1
    bind_error = ""
    for _ in range(attempts):
        given = (port, controller_port, proxied_port, advertised_proxy_port)
        taken = {q for q in given if q is not None}
        p = pick_port(host, port, taken)
        cp = pick_port(host, controller_port, taken)
        pp = pick_port(host, proxied_port, taken) if proxied else None
        started = time.monotonic()
        spec = KafkaNodeSpec(
            data_dir, host, p, cp, partitions, major, pp, advertised_proxy_port, security
        )
        service = _start_kafka_once(java, libs, spec)
        if isinstance(service, RunningService):
            log.info(
                "kafka %s started at %s (controller %s:%d%s) in %.1f s (pid %d, log %s)",
                version,
                service.address,
                host,
                cp,
                f", proxied {pp} advertised as {advertised_proxy_port}" if proxied else "",
                time.monotonic() - started,
                service.process.pid,
                service.log_path,
            )
            return service
        bind_error = service
        log.info("kafka could not bind %s:%d/%d/%s (%s)", host, p, cp, pp, bind_error)
    raise service_error(
        f"the Kafka broker could not bind its ports on {host} (client {port}, controller "
        f"{controller_port}"
        + (f", proxied {proxied_port}" if proxied else "")
        + f"): address already in use.\n  Broker said: {bind_error}",
        "stop whatever listens on those ports, or pass port=None to pick free ones.",
        data_dir / "kafka.log",
    )
