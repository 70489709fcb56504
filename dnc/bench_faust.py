"""The Faust floors of ``dnc bench``: a Faust agent that does nothing but read.

It reads the way the worker's agent does (raw values, ``noack().events()``, each event
acked), in a fresh consumer group of its own, so its figures are the most any worker built
on faust-streaming's per-message stream can do on this machine. Run by the bench as

* ``python -m dnc.bench_faust burst BOOTSTRAP TOPIC START_OFFSETS COUNT RESULT``: reads
  ``TOPIC`` from the given offsets (``p:o,p:o``); writes to ``RESULT`` the seconds between
  the first and the ``COUNT``-th message (throughput);
* ``python -m dnc.bench_faust latency BOOTSTRAP TOPIC COUNT RESULT``: for messages whose
  value carries the producer's wall clock (``{"sent": seconds}``), writes to ``RESULT`` one
  latency per line (seconds from the produce call to the agent) once ``COUNT`` are in;
  ``RESULT.ready`` appears when the first message of any kind arrived.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import faust


def _run(bootstrap: str, topic: str, workdir: Path, on_event: Callable[[Any], bool]) -> None:
    """Run a bare agent on ``topic`` until ``on_event`` says it is done, then exit."""
    app = faust.App(
        f"dnc-bench-faust-{time.monotonic_ns()}",
        broker=[f"kafka://{b}" for b in bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        datadir=str(workdir / "faust-floor"),
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw", acks=False)

    @app.agent(source, name="floor", concurrency=1)
    async def floor(stream: Any) -> None:
        events: AsyncIterator[Any] = stream.noack().events()
        async for event in events:
            await stream.ack(event)
            if on_event(event):
                os._exit(0)

    faust.Worker(app, loglevel="WARNING").execute_from_commandline()


def burst(bootstrap: str, topic: str, starts_arg: str, count: int, result: Path) -> None:
    starts = {int(p): int(o) for p, o in (item.split(":") for item in starts_arg.split(","))}
    seen, first = 0, 0.0

    def on_event(event: Any) -> bool:
        nonlocal seen, first
        if event.message.offset < starts[event.message.partition]:
            return False  # before the burst (earlier measurements)
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        if seen < count:
            return False
        result.write_text(f"{time.perf_counter() - first:.6f}\n")
        return True

    _run(bootstrap, topic, result.parent, on_event)


def latency(bootstrap: str, topic: str, count: int, result: Path) -> None:
    latencies: list[float] = []
    ready = result.with_suffix(".ready")

    def on_event(event: Any) -> bool:
        arrived = time.time()
        if not latencies and not ready.exists():
            ready.touch()
        try:
            sent = json.loads(event.value)["sent"]
        except (ValueError, KeyError, TypeError):
            return False  # a warm-up message
        latencies.append(arrived - sent)
        if len(latencies) < count:
            return False
        result.write_text("".join(f"{x:.6f}\n" for x in latencies))
        return True

    _run(bootstrap, topic, result.parent, on_event)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "burst":
        burst(args[0], args[1], args[2], int(args[3]), Path(args[4]))
    elif mode == "latency":
        latency(args[0], args[1], int(args[2]), Path(args[3]))
    else:
        sys.exit(f"unknown mode {mode!r}: burst or latency")
