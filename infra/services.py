"""Run a real Kafka broker and a real Redis server as local child processes.

There is no Docker on the development and CI machines, so the test suite and local
development use plain processes bound to loopback:

* **Redis** is the Debian ``redis-server`` binary, started with explicit command-line
  options (no config file, no persistence unless asked for).
* **Kafka** is a single-node KRaft broker+controller.  Its jars come from Maven Central
  through ``infra/kafka/pom.xml`` (``mvn dependency:copy-dependencies``) and are cached
  per version under ``~/.cache/dnc/kafka/<version>/libs``; the broker is launched with
  ``java -cp '<libs>/*' kafka.Kafka server.properties``.  Kafka 3.9.x and 4.x are both
  supported (the logging backend differs: reload4j for 3.x, Log4j 2 for 4.x).

Typical use::

    from infra.services import LocalStack

    with LocalStack(tmp_path / "stack") as stack:
        stack.bootstrap_servers   # "127.0.0.1:40123"
        stack.redis_url           # "redis://127.0.0.1:40124/0"

Importing this module has no side effects.  Every service that is started is also
registered for termination at interpreter exit, so an aborted test run does not leave
brokers behind (a ``SIGKILL`` of the Python process itself still can).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from infra.kafka_cluster import KafkaCluster
    from infra.redis_cluster import RedisCluster

__all__ = [
    "KAFKA_DEFAULT_VERSION",
    "KafkaSecurity",
    "LocalStack",
    "RunningService",
    "ServiceError",
    "cache_root",
    "ensure_kafka_jars",
    "free_port",
    "kafka_cache_dir",
    "start_kafka",
    "start_redis",
]

KAFKA_DEFAULT_VERSION = "3.9.1"
"""Kafka release used when none is given (override per call or with ``DNC_KAFKA_VERSION``
in the callers that read it)."""

log = logging.getLogger("dnc.infra")

_POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
_REDIS_START_TIMEOUT = 20.0
_KAFKA_START_TIMEOUT = 90.0
_MVN_TIMEOUT = 900.0
_PORT_RETRIES = 3
_LOG_TAIL_LINES = 40
_BIND_ERRORS = ("Address already in use", "Could not create server TCP listening socket")
_KAFKA_STARTED_MARKER = "Kafka Server started"


class ServiceError(Exception):
    """A local service could not be provisioned, started or reached.

    The message says what failed, what to do about it, and (when there is one) ends with
    the tail of the service's log file.
    """


# --------------------------------------------------------------------------- helpers


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES, start: int = 0) -> str:
    """Return the last ``lines`` lines of ``path`` (from byte offset ``start`` on)."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return "(no log file)"
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    if not text:
        return "(log is empty)"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, start: int) -> str:
    """Return the content of ``path`` from byte offset ``start`` (empty if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _first_line_with(text: str, *markers: str) -> str:
    """First line of ``text`` containing any of ``markers`` (stripped), or ``""``."""
    for line in text.splitlines():
        if any(marker in line for marker in markers):
            return line.strip()
    return ""


def _error(what: str, hint: str, log_path: Path | None = None, start: int = 0) -> ServiceError:
    """Build a :class:`ServiceError` with a remedy and the log tail."""
    msg = f"{what}\n  What to do: {hint}"
    if log_path is not None:
        msg += f"\n  Log file: {log_path}\n  --- last lines of the log ---\n"
        msg += _log_tail(log_path, start=start)
    return ServiceError(msg)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Binds port 0, reads back the port the kernel chose and closes the socket.  Another
    process may grab the port before the caller binds it, which is why the ``start_*``
    functions retry with a fresh port when they chose it themselves.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes

T = TypeVar("T")
_live_lock = threading.Lock()
_live: dict[int, RunningService] = {}
_atexit_registered = False


def bind_error_or_raise(
    proc: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    markers: tuple[str, ...],
    what: str,
    hint: str,
) -> str:
    """A server exited while starting: the log line saying its port was taken, or else a
    :class:`ServiceError` with ``hint`` and the log written since ``offset``."""
    text = _read_from(log_path, offset)
    if any(marker in text for marker in markers):
        return _first_line_with(text, *markers)
    raise _error(
        f"{what} exited with code {proc.returncode} while starting.", hint, log_path, offset
    )


def start_with_port_retries(
    name: str,
    host: str,
    port: int | None,
    start_once: Callable[[int], T | str],
    log_path: Path | None = None,
) -> tuple[T, int]:
    """Start a server with ``start_once(port)``; it returns the server, or the bind error
    line when the port was taken. ``port`` None picks a free port and retries with another
    if it was taken meanwhile. Returns the server and the port it listens on.
    """
    attempts = 1 if port is not None else _PORT_RETRIES
    bind_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port(host)
        result = start_once(chosen)
        if not isinstance(result, str):
            return result, chosen
        bind_error = result
        log.info("%s could not bind %s:%d (%s)", name, host, chosen, bind_error)
    raise _error(
        f"{name} could not listen on {host}:{port if port is not None else '(free port)'}: "
        f"address already in use.\n  Server said: {bind_error}",
        "stop whatever listens on that port, or pass port=None to pick a free one.",
        log_path,
    )


def _register(service: RunningService) -> None:
    """Remember ``service`` so that it is stopped at interpreter exit."""
    global _atexit_registered
    with _live_lock:
        _live[id(service)] = service
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True


def _unregister(service: RunningService) -> None:
    with _live_lock:
        _live.pop(id(service), None)


def _stop_all_at_exit() -> None:
    with _live_lock:
        services = list(_live.values())
    for service in services:
        try:
            service.stop(timeout=10)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("could not stop %s at exit", service.name)


@dataclass(eq=False)
class RunningService:
    """A service process started by this module.

    ``data_dir`` and ``controller_port`` (Kafka only) are extras beyond the address; they
    let a caller restart a service on the same directory and ports.  ``proxied_port`` and
    ``advertised_proxy_port`` (Kafka only) are set when the broker has the extra
    ``PROXIED`` listener (see :func:`start_kafka`).
    """

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None = None
    controller_port: int | None = None
    proxied_port: int | None = None
    advertised_proxy_port: int | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the client listener."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def proxied_address(self) -> str:
        """``host:port`` of Kafka's ``PROXIED`` listener: the upstream of the proxy."""
        if self.proxied_port is None:
            raise ServiceError(
                f"{self.name} at {self.address} has no proxied listener; start it with "
                "advertised_proxy_port=<the proxy's listen port>."
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.proxied_port}"

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """Stop gracefully: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Safe to call any number of times, also after :meth:`kill` or a crash.
        """
        try:
            if self.process.poll() is not None:
                return
            log.info("stopping %s (pid %d) at %s", self.name, self.process.pid, self.address)
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) did not stop within %.0f s; killing it",
                    self.name,
                    self.process.pid,
                    timeout,
                )
                self.kill()
        finally:
            if self.process.poll() is not None:
                _unregister(self)

    def kill(self) -> None:
        """Kill the process with SIGKILL at once (simulates a crash) and reap it."""
        if self.process.poll() is None:
            log.info("killing %s (pid %d) with SIGKILL", self.name, self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
        _unregister(self)


def _spawn(
    cmd: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout+stderr appended to ``log_path``."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
            close_fds=True,
            # Own session: a Ctrl-C in the terminal reaches `dnc up` only, which then
            # stops the worker before Kafka and Redis, in that order.
            start_new_session=True,
        )


def _terminate_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- redis


def _find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    raise _error(
        "redis-server was not found on PATH or at /usr/bin/redis-server.",
        "install it with `make setup` (infra/setup.sh) or `apt-get install redis-server`.",
    )


def _redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a RESP ``PING`` and return True on ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


def _start_redis_once(
    data_dir: Path,
    port: int,
    host: str,
    persistence: bool,
    name: str = "redis",
    extra_args: tuple[str, ...] = (),
) -> RunningService | str:
    """Start Redis on ``port``; if the port is taken, return the server's error line."""
    binary = _find_redis_server()
    log_path = data_dir / "redis.log"
    offset = _file_size(log_path)
    cmd = [
        binary,
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--logfile",
        str(log_path),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    if persistence:
        cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        cmd += ["--save", "", "--appendonly", "no"]
    cmd += extra_args
    proc = _spawn(cmd, log_path, data_dir)
    deadline = time.monotonic() + _REDIS_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return bind_error_or_raise(
                proc, log_path, offset, _BIND_ERRORS, f"redis-server on {host}:{port}",
                "read the log below; check that the directory is writable.",
            )  # fmt: skip
        if _redis_ping(host, port):
            service = RunningService(name, host, port, proc, log_path, data_dir=data_dir)
            _register(service)
            return service
        time.sleep(0.05)
    _terminate_quietly(proc)
    raise _error(
        f"redis-server did not answer PING on {host}:{port} within {_REDIS_START_TIMEOUT:.0f} s.",
        "read the log below; the machine may be overloaded.",
        log_path,
        offset,
    )


def start_redis(
    data_dir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    persistence: bool = False,
    name: str = "redis",
    extra_args: tuple[str, ...] = (),
) -> RunningService:
    """Start ``redis-server`` on ``host:port`` with its files in ``data_dir``.

    ``name`` names the service (logs, pid files); ``extra_args`` are more command-line
    options (a Redis Cluster node's, see :mod:`infra.redis_cluster`).

    Without ``persistence`` nothing is written to disk (``--save ""``, no AOF), so a
    restart starts empty.  With it, the append-only file is enabled.  ``port=None`` picks
    a free port (retrying with another one if it was taken meanwhile).  Returns once the
    server answers ``PING``; raises :class:`ServiceError` after 20 s.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    service, _port = start_with_port_retries(
        "redis-server",
        host,
        port,
        lambda chosen: _start_redis_once(data_dir, chosen, host, persistence, name, extra_args),
    )
    log.info(
        "%s started at %s in %.2f s (pid %d, log %s)",
        name,
        service.address,
        time.monotonic() - started,
        service.process.pid,
        service.log_path,
    )
    return service


def cache_root() -> Path:
    """The project's download/build cache (Kafka jars, the Toxiproxy binary).

    ``$DNC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dnc``, else ``~/.cache/dnc``
    (infra/setup.sh uses the same rule).
    """
    explicit = os.environ.get("DNC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dnc"


def kafka_cache_dir(version: str) -> Path:
    """Directory holding the broker jars of Kafka ``version``.

    ``$DNC_CACHE_DIR/kafka/<version>/libs`` if ``DNC_CACHE_DIR`` is set, else
    ``$XDG_CACHE_HOME/dnc/kafka/<version>/libs``, else ``~/.cache/dnc/kafka/<version>/libs``.
    """
    return cache_root() / "kafka" / version / "libs"


def _kafka_major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        raise _error(
            f"{version!r} is not a Kafka version.",
            "pass a release number such as 3.9.1 or 4.1.1.",
        ) from None


def _kafka_jar(libs: Path, version: str) -> Path:
    return libs / f"kafka_2.13-{version}.jar"


def ensure_kafka_jars(version: str = KAFKA_DEFAULT_VERSION) -> Path:
    """Return the directory with every jar the Kafka ``version`` broker needs.

    Idempotent and cheap when the cache is populated.  Otherwise runs Maven on
    ``infra/kafka/pom.xml`` into a temporary sibling directory and renames it into place,
    so a concurrent or interrupted run never leaves a half-filled cache.
    """
    libs = kafka_cache_dir(version)
    if _kafka_jar(libs, version).is_file():
        return libs
    major = _kafka_major(version)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise _error(
            "Maven (mvn) is needed to download the Kafka broker jars but is not installed.",
            "run `make setup` (infra/setup.sh) or `apt-get install maven`.",
        )
    if not _POM_PATH.is_file():
        raise _error(
            f"the Kafka POM is missing at {_POM_PATH}.",
            "restore infra/kafka/pom.xml from the repository.",
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".libs-", dir=libs.parent))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(_POM_PATH),
        f"-Dkafka.version={version}",
        f"-Dkafka.logging={'log4j2' if major >= 4 else 'reload4j'}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]
    log.info("downloading Kafka %s jars with Maven into %s", version, libs)
    started = time.monotonic()
    try:
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_MVN_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _error(
                f"Maven did not finish downloading Kafka {version} within {_MVN_TIMEOUT:.0f} s.",
                "check access to Maven Central and run `make setup` again.",
            ) from None
        if result.returncode != 0 or not _kafka_jar(tmp, version).is_file():
            output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
            tail = "\n".join(output.strip().splitlines()[-_LOG_TAIL_LINES:])
            raise ServiceError(
                f"Maven could not fetch Kafka {version} (exit code {result.returncode}).\n"
                "  What to do: check that the version exists on Maven Central and that "
                "Maven Central is reachable, then retry.\n"
                f"  Command: {' '.join(cmd)}\n  --- last lines of Maven's output ---\n{tail}"
            )
        try:
            tmp.rename(libs)
        except OSError:
            # Someone else finished first; theirs is as good as ours.
            if not _kafka_jar(libs, version).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            libs.parent.rmdir()  # only succeeds if a failed download left it empty
    log.info("Kafka %s jars ready in %s (%.1f s)", version, libs, time.monotonic() - started)
    return libs


# --------------------------------------------------------------------------- kafka broker


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found:
        return found
    raise _error(
        "no Java runtime found ($JAVA_HOME/bin/java or java on PATH); Kafka needs Java 17+.",
        "run `make setup` (infra/setup.sh) or `apt-get install openjdk-17-jre-headless`.",
    )


def _random_cluster_id() -> str:
    """A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cid


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


def _kafka_properties(
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
    lines = [f"# Written by infra/services.py: {kind} KRaft broker+controller."]
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


def _write_log_config(data_dir: Path, major: int) -> list[str]:
    """Write the broker's logging config; return the JVM flags that select it."""
    if major >= 4:
        path = data_dir / "log4j2.properties"
        path.write_text(_LOG4J2_PROPERTIES)
        return [f"-Dlog4j2.configurationFile={path}"]
    path = data_dir / "log4j.properties"
    path.write_text(_LOG4J1_PROPERTIES)
    return [f"-Dlog4j.configuration={path.as_uri()}"]


def _kafka_metadata_ready(host: str, port: int, node_id: int = 1, expected: int = 1) -> bool:
    """True if the broker answers a Metadata request and lists itself as a live broker
    (and at least ``expected`` brokers in all: a cluster's node waits for its peers).

    Uses Metadata v4 (supported by Kafka 1.0 through 4.x, non-flexible encoding) with an
    empty topic list; only the broker list at the start of the response is parsed.
    """
    client_id = b"dnc-infra"
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation=false
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            if size <= 0 or size > 16 * 1024 * 1024:
                return False
            payload = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    try:
        correlation_id, _throttle, n_brokers = struct.unpack_from(">iii", payload, 0)
        if correlation_id != 7:
            return False
        offset = 12
        if n_brokers < expected:
            return False
        for _ in range(n_brokers):
            (broker_id,) = struct.unpack_from(">i", payload, offset)
            offset += 4
            (host_len,) = struct.unpack_from(">h", payload, offset)
            offset += 2 + max(host_len, 0) + 4  # host, port
            (rack_len,) = struct.unpack_from(">h", payload, offset)
            offset += 2 + max(rack_len, 0)
            if broker_id == node_id:
                return True
    except struct.error:
        return False
    return False


def _secured_kafka_ready(host: str, port: int, security: KafkaSecurity, expected: int = 1) -> bool:
    """The SASL listener authenticates the superuser and lists ``expected`` brokers or more."""
    from confluent_kafka.admin import AdminClient

    from schemas.settings import KAFKA_LOGGER

    h = f"[{host}]" if ":" in host else host
    quiet: dict[str, Any] = {"logger": logging.getLogger(KAFKA_LOGGER)}  # never raw to stderr
    admin = AdminClient({"bootstrap.servers": f"{h}:{port}", **security.client_config(), **quiet})
    try:
        return len(admin.list_topics(timeout=2).brokers) >= expected
    except Exception:
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


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
    cluster_id = cluster_id or _random_cluster_id()
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
        raise _error(
            f"formatting the Kafka storage in {data_dir / 'logs'} failed "
            f"(exit code {result.returncode}).",
            "delete the directory if it holds a broken or foreign Kafka log dir, then retry.",
            log_path,
        )


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


@dataclass
class _StartingKafka:
    """A broker process spawned, not yet known to be ready."""

    spec: KafkaNodeSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    offset: int
    started_line_seen: bool = False


def _spawn_kafka(java: str, libs: Path, spec: KafkaNodeSpec) -> _StartingKafka:
    """Write the node's config, format its storage if new, and start its JVM."""
    data_dir = spec.data_dir
    props = data_dir / "server.properties"
    text = _kafka_properties(
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
    jvm_log = _write_log_config(data_dir, spec.major)
    _format_storage(java, libs, data_dir, props, jvm_log, spec.security, spec.cluster_id)

    log_path = data_dir / "kafka.log"
    offset = _file_size(log_path)
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
    proc = _spawn(cmd, log_path, data_dir, env=env)
    return _StartingKafka(spec, proc, log_path, offset)


def _poll_kafka(starting: _StartingKafka, expected_brokers: int = 1) -> RunningService | str | None:
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
        starting.started_line_seen = _KAFKA_STARTED_MARKER in _read_from(
            starting.log_path, starting.offset
        )
    if not starting.started_line_seen:
        return None
    ready = (
        _kafka_metadata_ready(spec.host, spec.port, spec.node_id, expected_brokers)
        if spec.security is None
        else _secured_kafka_ready(spec.host, spec.port, spec.security, expected_brokers)
    )
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
    _register(service)
    return service


def _not_ready_error(starting: _StartingKafka, timeout: float) -> ServiceError:
    spec = starting.spec
    return _error(
        f"the Kafka broker {spec.name} on {spec.host}:{spec.port} was not ready within "
        f"{timeout:.0f} s.",
        "read the log below; the machine may be overloaded or out of memory.",
        starting.log_path,
        starting.offset,
    )


def _start_kafka_once(java: str, libs: Path, spec: KafkaNodeSpec) -> RunningService | str:
    """Start the broker; if one of its ports is taken, return the broker's error line."""
    starting = _spawn_kafka(java, libs, spec)
    deadline = time.monotonic() + _KAFKA_START_TIMEOUT
    while time.monotonic() < deadline:
        result = _poll_kafka(starting)
        if result is not None:
            return result
        time.sleep(0.1)
    _terminate_quietly(starting.process)
    raise _not_ready_error(starting, _KAFKA_START_TIMEOUT)


def _pick_port(host: str, given: int | None, taken: set[int]) -> int:
    """``given``, or a free port on ``host`` that is not in ``taken``; added to ``taken``."""
    chosen = given if given is not None else free_port(host)
    while given is None and chosen in taken:
        chosen = free_port(host)
    taken.add(chosen)
    return chosen


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

    Returns once the broker has logged that it started and answers a Metadata request
    listing itself; raises :class:`ServiceError` (with the log tail) after 90 s.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    if proxied_port is not None and advertised_proxy_port is None:
        raise ValueError("proxied_port needs advertised_proxy_port (the proxy's listen port)")
    major = _kafka_major(version)
    libs = ensure_kafka_jars(version)
    java = _find_java()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    proxied = advertised_proxy_port is not None
    auto_ports = port is None or controller_port is None or (proxied and proxied_port is None)
    attempts = _PORT_RETRIES if auto_ports else 1
    bind_error = ""
    for _ in range(attempts):
        given = (port, controller_port, proxied_port, advertised_proxy_port)
        taken = {q for q in given if q is not None}
        p = _pick_port(host, port, taken)
        cp = _pick_port(host, controller_port, taken)
        pp = _pick_port(host, proxied_port, taken) if proxied else None
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
    raise _error(
        f"the Kafka broker could not bind its ports on {host} (client {port}, controller "
        f"{controller_port}"
        + (f", proxied {proxied_port}" if proxied else "")
        + f"): address already in use.\n  Broker said: {bind_error}",
        "stop whatever listens on those ports, or pass port=None to pick free ones.",
        data_dir / "kafka.log",
    )


# --------------------------------------------------------------------------- stack


class LocalStack:
    """Kafka + Redis on loopback in a directory it owns; a context manager.

    ``base_dir/redis`` and ``base_dir/kafka`` hold each service's files and logs.
    ``kafka_proxied_port`` / ``kafka_advertised_proxy_port`` give Kafka the extra
    ``PROXIED`` listener for clients that go through a proxy (see :func:`start_kafka`).

    ``brokers`` > 1 runs a KRaft cluster instead (:class:`infra.kafka_cluster.KafkaCluster`,
    files in ``base_dir/kafka-cluster``; ``kafka_port`` is then the first node's port),
    ``redis_cluster`` a Redis Cluster of 3 masters with a replica each
    (:class:`infra.redis_cluster.RedisCluster`, files in ``base_dir/redis-cluster``;
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
            from infra.redis_cluster import RedisCluster  # (it builds on this module)

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
            from infra.kafka_cluster import KafkaCluster  # (it builds on this module)

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
