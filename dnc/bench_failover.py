"""`dnc bench --only failover`: one of two workers SIGKILLed, until the survivor vouches.

On the bench's private stack, a group of two workers of its own (topics, group, view), as
in the scale-out stage. A burst of distinct oppositions gives each partition states to
recover. Then the worker owning more partitions is killed (SIGKILL: no goodbye to the
group) and the bench reads the view's metadata until every partition is vouched for past
the kill again. Meanwhile checks of the dead worker's partitions keep their last answers
until the staleness bound, then say "unavailable" (never "callable" on a guess).

The survivor's log says when each step ended, from the kill: the new assignment (the
coordinator expired the dead member's session and the group rebalanced), Faust's recovery
of the moved table partitions, the view rebuilt; then the vouch. The floor is the group's
session timeout: the coordinator moves nothing before it has expired the dead member's
session.
"""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime
from pathlib import Path

from dnc.bench import Bench, Figures, _stop_worker, perf
from dnc.bench_scale import burst, scaled

FAILOVER_RUN = 9  # a run number of its own for the burst's numbers (scale uses 1..3)


def bench_failover(b: Bench, states: int, log_dir: Path) -> Figures:
    """Kill one of two workers; figures ``failover_*`` (seconds from the kill)."""
    b.flush()
    group, workers = scaled(b, 2, log_dir, name="failover")
    try:
        b.status.update("[failover] two workers: waiting for the view to be ready")
        group.wait_serving()
        b.status.update(f"[failover] {states:,} oppositions for the partitions to recover")
        burst(group, FAILOVER_RUN, states, workers)
        checker = group.checker()
        owners = _owners(group)
        ids = [f"bench-failover-{i}" for i in range(len(workers))]
        held = {worker_id: [p for p, o in owners.items() if o == worker_id] for worker_id in ids}
        victim_index = max(range(len(ids)), key=lambda i: (len(held[ids[i]]), -i))
        victim, moved = ids[victim_index], held[ids[victim_index]]
        survivor = ids[1 - victim_index]
        if not moved:
            raise RuntimeError(f"no worker of the pair owns a partition yet: {owners}")
        clock = b.client(5.0)
        sec, usec = clock.time()
        killed_ms = sec * 1000 + usec // 1000
        b.status.update(f"[failover] SIGKILL {victim} (partitions {moved}); waiting for "
                        f"{survivor}")  # fmt: skip
        begin, wall = perf(), time.time()
        workers[victim_index].send_signal(signal.SIGKILL)
        vouched = None
        deadline = time.monotonic() + 600
        while vouched is None:
            partitions = checker.readiness().partitions
            if partitions and all((p.applied_ms or 0) >= killed_ms for p in partitions):
                vouched = perf() - begin
            if time.monotonic() > deadline or b.interrupted.is_set():
                raise KeyboardInterrupt if b.interrupted.is_set() else RuntimeError(
                    "the survivor did not vouch for the moved partitions in 10 minutes"
                )  # fmt: skip
            time.sleep(0.02)
        steps = _steps(log_dir / f"failover-worker{1 - victim_index}.log", wall)
        return {"failover_states": float(states), "failover_moved": float(len(moved)),
                "failover_vouched_s": vouched, **steps,
                "failover_session_timeout_s": b.settings.session_timeout_seconds}  # fmt: skip
    finally:
        for worker in workers:
            _stop_worker(worker, timeout=30)


# The survivor's log lines that end each step (Faust's, then the worker's own).
STEPS = {
    "failover_assigned_s": re.compile(r"generation id \d+"),
    "failover_recovered_s": re.compile(r"Recovery\]: Recovery complete"),
    "failover_rebuilt_s": re.compile(r"view ready: "),
}
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _steps(log: Path, since: float) -> dict[str, float]:
    """Seconds from ``since`` (epoch) to the first line of each step logged after it."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - since
        if at < 0:
            continue
        for name, pattern in STEPS.items():
            if name not in found and pattern.search(line):
                found[name] = at
    return {name: found.get(name, float("nan")) for name in STEPS}


def _owners(b: Bench) -> dict[int, str | None]:
    """Each partition's owner in the view, once every partition has one (two workers)."""
    checker, deadline = b.checker(), time.monotonic() + 120
    while True:
        partitions = checker.readiness().partitions
        owners = {p.partition: p.owner for p in partitions}
        if len(set(owners.values()) - {None}) == 2 and None not in owners.values():
            return owners
        if time.monotonic() > deadline:
            raise RuntimeError(f"the two workers did not share the partitions: {owners}")
        time.sleep(0.1)


def report_row(f: Figures) -> tuple[str, str, str, str]:
    """The bench table's row: seconds until vouched again, next to the session timeout."""
    timeout = f["failover_session_timeout_s"]
    return ("failover: 1 of 2 workers SIGKILLed, until the survivor vouches",
            f"{f['failover_vouched_s']:.1f} s", f"{timeout:.0f} s (the group's session timeout)",
            f"{f['failover_vouched_s'] / timeout:.2f}x")  # fmt: skip


def report_note(f: Figures) -> str:
    return (f"failover: {f['failover_states']:,.0f} states over 3 partitions, "
            f"{f['failover_moved']:.0f} moved; from the kill, the survivor's new assignment "
            f"{f['failover_assigned_s']:.1f} s (session expired, group rebalanced), Faust's "
            f"recovery done {f['failover_recovered_s']:.1f} s, the view rebuilt "
            f"{f['failover_rebuilt_s']:.1f} s, vouched for "
            f"{f['failover_vouched_s']:.1f} s")  # fmt: skip
