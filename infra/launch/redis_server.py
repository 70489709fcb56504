"""Redis: Debian's ``redis-server`` in the foreground, options on the command line.

No config file, no persistence unless asked for; ready once it answers ``PING``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from infra.launch.process import (
    RunningService,
    file_size,
    register,
    service_error,
    spawn,
    start_with_port_retries,
    wait_until_ready,
)

__all__ = ["start_redis"]

log = logging.getLogger("dnc.infra")

_REDIS_START_TIMEOUT = 20.0
_BIND_ERRORS = ("Address already in use", "Could not create server TCP listening socket")


def _find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    raise service_error(
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
    offset = file_size(log_path)
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
    proc = spawn(cmd, log_path, data_dir)
    bind_error = wait_until_ready(
        proc,
        lambda: _redis_ping(host, port),
        what=f"redis-server on {host}:{port}",
        log_path=log_path,
        offset=offset,
        timeout=_REDIS_START_TIMEOUT,
        bind_errors=_BIND_ERRORS,
        exit_hint="read the log below; check that the directory is writable.",
        not_ready="did not answer PING",
        slow_hint="read the log below; the machine may be overloaded.",
        interval=0.05,
    )
    if bind_error is not None:
        return bind_error
    service = RunningService(name, host, port, proc, log_path, data_dir=data_dir)
    register(service)
    return service


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
    options (a Redis Cluster node's, see :mod:`infra.launch.redis_cluster`).

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
