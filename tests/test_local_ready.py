"""`dnc up` in the cluster profile says "pipeline ready" only once the worker group has
settled: a dialer starting on that line gets at most 1% "unavailable" in the next 10 s,
while agents record 150 events/s (issue 22: 35% in the first 5 s when "ready" was said as
the first worker vouched, before the second joined and the group rebalanced).

Until the staleness bound has passed since "ready", an "unavailable" cannot come from
workers falling behind (every partition was vouched for just before), only from a group
still settling: at most 1% there, whatever the machine. Over the whole 10 s a backlog can
add its own (on a 2-core machine shared with other test runs the workers may not keep up
with 150 events/s at all): the share is compared with the same run's steady state,
20-30 s after "ready", and must be at most 1% or no worse than it.

Heavy: 3 brokers, a Redis Cluster of 6 nodes, 2 workers, PostgreSQL and Prometheus.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from consumers.checker import Answer, SuppressionChecker
from producers.publisher import OppositionPublisher
from schemas.events import Kind, OppositionEvent
from schemas.settings import Settings
from schemas.tenants import TenantDirectory
from tests.harness import REPO, wait_for
from tests.test_local_ports import stack_env

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.postgres, pytest.mark.prometheus]

RATE = 150  # events per second the agents record
WINDOW = 10.0  # seconds after "pipeline ready" the dialer is watched
MAX_UNAVAILABLE = 0.01


class Agents(threading.Thread):
    """Agents recording ``RATE`` oppositions per second (acknowledged by Kafka) until stopped."""

    def __init__(self, publisher: OppositionPublisher) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.stop = threading.Event()
        self.acknowledged = 0
        self.failed = 0

    def run(self) -> None:
        tick = 0.1
        started = time.monotonic()
        sent = 0
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * RATE) - sent
            events = [
                OppositionEvent.record(tenant="demo", phone=f"+3361{random.randrange(10**7):07d}",
                                       kind=Kind.OPPOSITION)
                for _ in range(max(0, due))
            ]  # fmt: skip
            for outcome in self.publisher.publish_many(events):
                if isinstance(outcome, Exception):
                    self.failed += 1
                else:
                    self.acknowledged += 1
            sent += len(events)
            time.sleep(tick)


@pytest.mark.timeout(900)
def test_the_cluster_profile_is_ready_when_it_says_so(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "dnc", "up", "--brokers", "3", "--workers", "2",
             "--redis-cluster"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    agents: Agents | None = None
    try:
        wait_for(lambda: "pipeline ready" in log_path.read_text() or up.poll() is not None,
                 timeout=420, interval=0.1, what="dnc up to say the pipeline is ready")  # fmt: skip
        ready_at = time.monotonic()
        assert "pipeline ready" in log_path.read_text(), log_path.read_text()[-3000:]
        # What another shell of the operator's reads: the stack's view key, its Kafka
        # superuser and its Redis Cluster, found in the data directory.
        settings = Settings.model_validate(
            {k[4:].lower(): v for k, v in env.items() if k.startswith("DNC_")}
        )
        assert settings.redis_cluster and settings.kafka_security_protocol == "SASL_PLAINTEXT"
        tenants = TenantDirectory.load(settings.tenants_file)
        agents = Agents(OppositionPublisher.from_settings(settings, tenants))
        agents.start()
        checker = SuppressionChecker.from_settings(settings, tenants)
        # A dialer checking as fast as it can, watched for WINDOW seconds, then again from
        # 2 * WINDOW to 3 * WINDOW: the steady state of the same run, its floor.
        first, later, early = Counter[str](), Counter[str](), Counter[str]()
        within_bound = settings.max_staleness_seconds - 1  # "ready" said this long ago at most
        why: Counter[str] = Counter()
        per_second: Counter[int] = Counter()  # unavailable answers in each second
        while (elapsed := time.monotonic() - ready_at) < 3 * WINDOW:
            if WINDOW <= elapsed < 2 * WINDOW:
                time.sleep(0.05)
                continue
            result = checker.check(f"+3361{random.randrange(10**7):07d}", "demo")
            (first if elapsed < WINDOW else later)[result.answer.value] += 1
            if elapsed < within_bound:
                early[result.answer.value] += 1
            if result.answer is Answer.UNAVAILABLE:
                per_second[int(elapsed)] += 1
                why[(result.why or "")[:100]] += int(elapsed < WINDOW)
        agents.stop.set()
        agents.join(timeout=30)
        unavailable = Answer.UNAVAILABLE.value
        share = first[unavailable] / max(1, first.total())
        floor = later[unavailable] / max(1, later.total())
        settling = early[unavailable] / max(1, early.total())
        print(
            f"\n0-{within_bound:g} s after 'pipeline ready': {early.total()} answers, "
            f"{settling:.2%} unavailable; "
            f"0-{WINDOW:g} s: {first.total()} answers {dict(first)}, "
            f"{share:.2%} unavailable; floor, {2 * WINDOW:g}-{3 * WINDOW:g} s: {later.total()} "
            f"answers, {floor:.2%} unavailable (a 2-core machine shared with other test runs: "
            f"load average {os.getloadavg()[0]:.1f}); agents: {agents.acknowledged} events "
            f"acknowledged ({agents.acknowledged / (3 * WINDOW):.0f}/s), {agents.failed} not; "
            f"unavailable per second: {sorted(per_second.items())}; why, first: "
            f"{why.most_common(3)}"
        )
        assert agents.failed == 0
        assert early.total() >= 200 and first.total() >= 500, (early, first)
        assert settling <= MAX_UNAVAILABLE, (settling, why.most_common(5))
        assert share <= max(MAX_UNAVAILABLE, floor), (share, floor, why.most_common(5))
        assert not [line for line in log_path.read_text().splitlines() if line.startswith("%")]
    finally:
        if agents is not None:
            agents.stop.set()
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()
            code = up.wait()
    assert code == 0, log_path.read_text()[-3000:]
