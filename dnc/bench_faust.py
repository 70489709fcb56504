"""The Faust floor of ``dnc bench``: a Faust agent that does nothing but read the burst.

Run by the bench as ``python -m dnc.bench_faust BOOTSTRAP TOPIC START_OFFSETS COUNT RESULT``:
a fresh consumer group reads ``TOPIC`` from the given offsets (``p:o,p:o``) the way the
worker's agent does (raw values, ``noack().events()``, each event acked), and writes to
``RESULT`` the seconds between the first and the ``COUNT``-th message. It is the most any
worker built on faust-streaming's per-message stream can do on this machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import faust


def main(bootstrap: str, topic: str, starts_arg: str, count: int, result: Path) -> None:
    starts = {int(p): int(o) for p, o in (item.split(":") for item in starts_arg.split(","))}
    app = faust.App(
        f"dnc-bench-faust-{time.monotonic_ns()}",
        broker=[f"kafka://{b}" for b in bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        datadir=str(result.parent / "faust-floor"),
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw", acks=False)

    @app.agent(source, name="floor", concurrency=1)
    async def floor(stream: Any) -> None:
        seen, first = 0, 0.0
        async for event in stream.noack().events():
            if event.message.offset < starts[event.message.partition]:
                await stream.ack(event)  # before the burst (earlier measurements)
                continue
            if seen == 0:
                first = time.perf_counter()
            seen += 1
            await stream.ack(event)
            if seen >= count:
                result.write_text(f"{time.perf_counter() - first:.6f}\n")  # noqa: ASYNC240 (then exits)
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING")
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
