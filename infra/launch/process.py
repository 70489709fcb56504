"""The one interface every launcher shares: a server process and what is said when it fails.

:class:`RunningService` is the handle each ``start_*`` returns; :class:`ServiceError` the
one error, saying what failed, what to do, and ending with the tail of the server's log.
Every service started is registered here and stopped at interpreter exit, so an aborted
test run does not leave brokers behind (a ``SIGKILL`` of the Python process itself still
can).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "RunningService",
    "ServiceError",
    "bind_error_or_raise",
    "file_size",
    "first_line_with",
    "free_port",
    "pick_port",
    "read_from",
    "register",
    "service_error",
    "spawn",
    "start_with_port_retries",
    "terminate_quietly",
    "unregister",
    "wait_until_ready",
]

log = logging.getLogger("dnc.infra")

PORT_RETRIES = 3
"""Starts on a port picked free are tried this many times (another process may take it)."""
_LOG_TAIL_LINES = 40


class ServiceError(Exception):
    """A local service could not be provisioned, started or reached.

    The message says what failed, what to do about it, and (when there is one) ends with
    the tail of the service's log file.
    """


# --------------------------------------------------------------------------- logs


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES, start: int = 0) -> str:
    """Return the last ``lines`` lines of ``path`` (from byte offset ``start`` on)."""
    text = read_from(path, start) if path.exists() else None
    if text is None:
        return "(no log file)"
    text = text.rstrip("\n")
    if not text:
        return "(log is empty)"
    return "\n".join(text.splitlines()[-lines:])


def read_from(path: Path, start: int) -> str:
    """Return the content of ``path`` from byte offset ``start`` (empty if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def first_line_with(text: str, *markers: str) -> str:
    """First line of ``text`` containing any of ``markers`` (stripped), or ``""``."""
    for line in text.splitlines():
        if any(marker in line for marker in markers):
            return line.strip()
    return ""


def service_error(
    what: str, hint: str, log_path: Path | None = None, start: int = 0
) -> ServiceError:
    """Build a :class:`ServiceError` with a remedy and the log tail."""
    msg = f"{what}\n  What to do: {hint}"
    if log_path is not None:
        msg += f"\n  Log file: {log_path}\n  --- last lines of the log ---\n"
        msg += log_tail(log_path, start=start)
    return ServiceError(msg)


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 if it does not exist: where a new start's log begins."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------- ports


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


def pick_port(host: str, given: int | None, taken: set[int]) -> int:
    """``given``, or a free port on ``host`` that is not in ``taken``; added to ``taken``."""
    chosen = given if given is not None else free_port(host)
    while given is None and chosen in taken:
        chosen = free_port(host)
    taken.add(chosen)
    return chosen


T = TypeVar("T")


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
    text = read_from(log_path, offset)
    if any(marker in text for marker in markers):
        return first_line_with(text, *markers)
    raise service_error(
        f"{what} exited with code {proc.returncode} while starting.", hint, log_path, offset
    )


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    log_path: Path,
    offset: int,
    timeout: float,
    bind_errors: tuple[str, ...],
    exit_hint: str,
    not_ready: str,
    slow_hint: str,
    interval: float = 0.1,
    kill: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> str | None:
    """Wait for a server just spawned to be ``ready()``: None once it is; the bind error
    line if it exited because its port was taken (the caller retries on another); a
    :class:`ServiceError` with the log since ``offset`` if it exited otherwise, or was not
    ready within ``timeout`` (then ``kill`` ends it: SIGKILL and reap by default).

    ``what`` names it ("redis-server on 127.0.0.1:6379"), ``not_ready`` says what it did
    not do in time ("did not answer PING"), the hints what to do about either failure.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return bind_error_or_raise(proc, log_path, offset, bind_errors, what, exit_hint)
        if ready() and proc.poll() is None:
            return None
        time.sleep(interval)
    (kill or terminate_quietly)(proc)
    raise service_error(f"{what} {not_ready} within {timeout:.0f} s.", slow_hint, log_path, offset)


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
    attempts = 1 if port is not None else PORT_RETRIES
    bind_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port(host)
        result = start_once(chosen)
        if not isinstance(result, str):
            return result, chosen
        bind_error = result
        log.info("%s could not bind %s:%d (%s)", name, host, chosen, bind_error)
    raise service_error(
        f"{name} could not listen on {host}:{port if port is not None else '(free port)'}: "
        f"address already in use.\n  Server said: {bind_error}",
        "stop whatever listens on that port, or pass port=None to pick a free one.",
        log_path,
    )


# --------------------------------------------------------------------------- processes

_live_lock = threading.Lock()
_live: dict[int, RunningService] = {}
_atexit_registered = False


def register(service: RunningService) -> None:
    """Remember ``service`` so that it is stopped at interpreter exit."""
    global _atexit_registered
    with _live_lock:
        _live[id(service)] = service
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True


def unregister(service: RunningService) -> None:
    """Forget ``service`` (it was stopped, or it is being given up)."""
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
    """A server process started by a launcher of :mod:`infra.launch`.

    ``data_dir`` and ``controller_port`` (Kafka only) are extras beyond the address; they
    let a caller restart a service on the same directory and ports.  ``proxied_port`` and
    ``advertised_proxy_port`` (Kafka only) are set when the broker has the extra
    ``PROXIED`` listener (see :func:`infra.launch.kafka_broker.start_kafka`).
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
                unregister(self)

    def kill(self) -> None:
        """Kill the process with SIGKILL at once (simulates a crash) and reap it."""
        if self.process.poll() is None:
            log.info("killing %s (pid %d) with SIGKILL", self.name, self.process.pid)
        terminate_quietly(self.process)
        unregister(self)


def spawn(
    cmd: list[str],
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: list[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout+stderr appended to ``log_path``, in a session of its own
    (so its whole process group can be signalled), as ``user`` if given."""
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
            user=user,
            group=group,
            extra_groups=extra_groups,
        )


def terminate_quietly(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
