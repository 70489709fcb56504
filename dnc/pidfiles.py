"""Pid files for what `dnc up` runs, so nothing it started outlives it unnoticed.

`dnc up` writes one file per process under ``DATA_DIR/run`` (name, pid, the process's
start time, its ports) and removes it once the process is stopped. A `dnc up` that died
without stopping its processes (SIGKILL, a crash) leaves files naming live processes:
the next `dnc up` stops them before it starts (or refuses while the `dnc up` that owns
them is still running), and `dnc down` stops them on request.

A pid is trusted only together with its start time (``/proc/PID/stat``), so a pid the
kernel has since given to an unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

SUPERVISOR = "dnc-up"


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of the whole line


@dataclass(frozen=True)
class RecordedProcess:
    """One process `dnc up` started, as its pid file describes it."""

    name: str
    pid: int
    start_time: int
    ports: tuple[int, ...] = ()
    stop_signal: int = int(signal.SIGTERM)
    order: int = 0  # start order: stopped in reverse

    @property
    def alive(self) -> bool:
        """True while this very process (not a later one with the same pid) runs."""
        return process_start_time(self.pid) == self.start_time

    def describe(self) -> str:
        """``kafka (pid 123, ports 9092, 9093)`` for messages."""
        ports = f", port{'s' if len(self.ports) > 1 else ''} " if self.ports else ""
        return f"{self.name} (pid {self.pid}{ports}{', '.join(map(str, self.ports))})"


class RunDirectory:
    """The pid files of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "run"
        self._order = 0

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def record(
        self,
        name: str,
        pid: int,
        ports: Iterable[int] = (),
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        """Write (or replace) the pid file of ``name``."""
        start_time = process_start_time(pid)
        if start_time is None:
            return  # already gone: nothing to find later
        self._order += 1
        entry = RecordedProcess(name, pid, start_time, tuple(ports), int(stop_signal), self._order)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self._file(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(entry)))
        tmp.replace(self._file(name))

    def forget(self, name: str) -> None:
        """Remove the pid file of ``name`` (it was stopped)."""
        with contextlib.suppress(FileNotFoundError):
            self._file(name).unlink()

    def recorded(self) -> list[RecordedProcess]:
        """The live processes of this directory, in start order; stale files are removed."""
        found = []
        for path in sorted(self.path.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                entry = RecordedProcess(**{**raw, "ports": tuple(raw.get("ports", ()))})
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if entry.alive:
                found.append(entry)
            else:
                path.unlink(missing_ok=True)
        return sorted(found, key=lambda e: e.order)

    def stop_all(
        self,
        entries: list[RecordedProcess],
        timeout: float = 30.0,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        """Stop ``entries`` in reverse start order: their stop signal, then SIGKILL."""
        for entry in reversed(entries):
            if not entry.alive:
                self.forget(entry.name)
                continue
            say(f"stopping {entry.describe()}")
            _signal_group(entry.pid, entry.stop_signal)
            deadline = time.monotonic() + timeout
            while entry.alive and time.monotonic() < deadline:
                time.sleep(0.1)
            if entry.alive:
                say(f"{entry.name} did not stop within {timeout:.0f}s: killing it")
                _signal_group(entry.pid, signal.SIGKILL)
                while entry.alive and time.monotonic() < deadline + 10:
                    time.sleep(0.1)
            self.forget(entry.name)


def _signal_group(pid: int, sig: int) -> None:
    """Signal ``pid`` and, when it leads a process group (as every service does), the group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)  # a postmaster's backends, a shell's children
        else:
            os.kill(pid, sig)  # `dnc up` itself runs in its shell's job group
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
