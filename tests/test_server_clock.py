"""The worker's clock follows Redis's (issue #20, hole 8): never ahead of it."""

from __future__ import annotations

import time

from streams.server_clock import ServerClock


def test_the_clock_follows_redis_and_is_never_ahead_of_it() -> None:
    clock = ServerClock()
    received = time.time()
    server_ms = int((received - 3600) * 1000)  # Redis an hour behind this host
    clock.observe(server_ms, received)
    before = time.time()
    now = clock.now().timestamp()
    # An hour behind the host's clock, and not ahead of where Redis's clock is now (it read
    # server_ms no later than the reply arrived).
    assert abs(now - (before - 3600)) < 1.0
    assert now <= server_ms / 1000 + (time.time() - received) + 1e-3


def test_before_any_reply_the_hosts_clock() -> None:
    assert abs(ServerClock().now().timestamp() - time.time()) < 1.0
