"""Events fetched before a rebalance are never applied, even when a batch ahead of them
waited through it (issue #20: a worker paused past the session timeout applied the rest of
its fetched burst to partitions it got back, from states it had forgotten, and overwrote
the oppositions their other owner had applied meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.delivery import DeliveryHoles
from streams.faust_bridge import apply_in_batches
from streams.fencing import BatchAbandoned
from streams.freshness import AppliedFrontier
from streams.processor import BatchResult, SourceMessage
from streams.progress import ProgressWatch

TOPIC = "oppositions"


@dataclass
class _Message:
    partition: int
    offset: int
    generation_id: int
    topic: str = TOPIC
    key: bytes = b"k"
    headers: tuple[Any, ...] = ()
    timestamp: float | None = None
    timestamp_type: int = 0

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class _Event:
    message: _Message
    value: bytes = b"{}"


class _Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _Consumer:
    async def seek(self, tp: TP, offset: int) -> None:
        raise AssertionError(f"no seek expected ({tp}, {offset})")


@dataclass
class _App:
    consumer_generation_id: int = 1
    flow_control: _Flow = field(default_factory=_Flow)
    consumer: _Consumer = field(default_factory=_Consumer)


class _Queue:
    def __init__(self) -> None:
        self.waiting = 0

    def empty(self) -> bool:
        return self.waiting == 0


@dataclass
class _Channel:
    queue: _Queue


class _Stream:
    """Delivers its fetched lists at once (more waiting in the queue until the last one, so
    they pile up as one pending backlog)."""

    def __init__(self, fetched: list[list[_Event]]) -> None:
        self._fetched = fetched
        self.channel = _Channel(_Queue())
        self.acked: list[_Event] = []

    def __aiter__(self) -> AsyncIterator[list[_Event]]:
        return self._lists()

    async def _lists(self) -> AsyncIterator[list[_Event]]:
        for index, events in enumerate(self._fetched):
            self.channel.queue.waiting = len(self._fetched) - index - 1
            yield events

    async def ack(self, event: _Event) -> None:
        self.acked.append(event)


class _RebalancedDuringFirstBatch:
    """The first batch waits through a rebalance (generation 1 to 2) and is abandoned."""

    def __init__(self, app: _App) -> None:
        self._app = app
        self.batches: list[list[tuple[int, int]]] = []

    async def process(self, batch: Sequence[SourceMessage]) -> BatchResult:
        self.batches.append([(m.partition, m.offset) for m in batch])
        if len(self.batches) == 1:
            await asyncio.sleep(0)
            self._app.consumer_generation_id = 2  # revoked and assigned again meanwhile
            raise BatchAbandoned("partitions [0] were revoked while the batch was in flight")
        return BatchResult()


def _events(partition: int, offsets: range, generation: int) -> list[_Event]:
    return [_Event(_Message(partition, o, generation)) for o in offsets]


def _run(stream: _Stream, processor: Any, app: _App, max_events: int) -> None:
    asyncio.run(
        apply_in_batches(
            stream,
            processor,
            max_events,
            ProgressWatch(60.0),
            DeliveryHoles(),
            {TOPIC: AppliedFrontier()},
            app,
            "admin-log",
            _decided,
        )
    )


async def _decided() -> None:
    """The view's first tick is done (ViewMaintenance.decided): never waits here."""


def test_the_rest_of_a_backlog_fetched_before_the_rebalance_is_dropped_not_applied() -> None:
    app = _App()
    old = _events(0, range(0, 3000), generation=1)  # one burst, two batches of 2,000
    stream = _Stream([old[:1500], old[1500:]])
    processor = _RebalancedDuringFirstBatch(app)

    _run(stream, processor, app, max_events=2000)

    assert len(processor.batches) == 1, "events fetched before the rebalance were applied"
    assert {id(e) for e in stream.acked} == {id(e) for e in old}  # acked: Faust stops waiting


def test_events_fetched_after_the_rebalance_are_applied() -> None:
    app = _App()
    old = _events(0, range(0, 2500), generation=1)
    new = _events(0, range(0, 10), generation=2)  # fetched again from the committed offset
    stream = _Stream([old[:1500], old[1500:], new])
    processor = _RebalancedDuringFirstBatch(app)

    _run(stream, processor, app, max_events=2000)

    assert processor.batches[1:] == [[(0, o) for o in range(10)]]


def test_nothing_is_applied_while_the_group_rebalances() -> None:
    app = _App()
    app.flow_control.active = False  # Faust suspends the flow from the revocation on
    old = _events(1, range(5), generation=1)
    stream = _Stream([old])
    processor = _RebalancedDuringFirstBatch(app)

    _run(stream, processor, app, max_events=2000)

    assert processor.batches == []
    assert len(stream.acked) == 5
