"""The promise on a Redis Cluster, under a real fault: a master SIGKILLed under load.

One private stack for the module: Kafka and a Redis Cluster of 3 masters with a replica each
(the view sharded, DNC_REDIS_CLUSTER=true). Agents publish 100 events/s while a dialer
checks every acknowledged number (the traffic of the fault drills), then the master holding
a shard of the view is SIGKILLed. Its replica is promoted; replication being asynchronous,
it may miss the last writes, so its copies of the view's metadata are not trusted there
(``node:P``): checks of its shards fail closed, the worker's next vouch there is refused, it
rebuilds, and checks are answered again. Never "callable" for an opposition acknowledged
longer ago than the staleness bound; nothing acknowledged lost.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from dnc.fault_drill import TENANT, Traffic
from infra.launch.stack import LocalStack
from tests.harness import Pipeline
from tests.test_scale_faults import RATE, TENANTS_TOML, _assert_promise, _finish

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


@pytest.mark.timeout(300)
def test_a_redis_master_sigkilled_under_load_fails_closed_until_the_worker_rebuilt(
    redis_cluster_stack: LocalStack, tmp_path: Path
) -> None:
    stack = redis_cluster_stack
    cluster = stack.redis_cluster
    assert cluster is not None
    p = Pipeline(stack, tmp_path, prefix=f"r{uuid.uuid4().hex[:10]}", tenants_toml=TENANTS_TOML)
    victim = None
    try:
        assert p.settings.redis_cluster and p.settings.shards > 0
        p.start_worker()
        bound = p.settings.max_staleness_seconds
        traffic = Traffic(p, first_number=3_000_000, rate=RATE, bound=bound)
        traffic.result.fault = "Redis master SIGKILL (1 of 3)"
        traffic.start()
        time.sleep(3.0)  # steady state first
        layout = p.checker._layout
        shard_key = layout.meta_key("+33612345678")
        victim = cluster.master_for_key(shard_key)
        log_before = len(p.worker_log(tail=None))
        killed_at = time.monotonic()
        cluster.kill(victim.port)
        promoted = cluster.wait_failover(victim, timeout=60)
        promoted_after = time.monotonic() - killed_at
        result = _finish(p, traffic, killed_at)
        after = p.worker_log(tail=None)[log_before:]
        print(f"master :{victim.port} killed, replica :{promoted.port} promoted "
              f"{promoted_after:.1f}s later; {result.summary()}")  # fmt: skip
        try:
            _assert_promise(result, bound)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log since the kill:\n{after[-6000:]}") from None
        # The worker noticed the failover and rebuilt before vouching there again.
        assert "rebuilding the Redis view" in after, after[-3000:]
        assert "view ready" in after, after[-3000:]
        # Checks failed closed meanwhile (the cluster was down, then the promoted copies
        # were not trusted until the rebuild).
        assert result.unavailable > 0, result.summary()
        assert p.worker is not None and p.worker.poll() is None, p.worker_log()
        assert p.checker.check("+33612345678", TENANT).answer.value != "unavailable"
    finally:
        p.close()
        if victim is not None:  # back as a replica of the promoted one
            cluster.restart(victim.port)
