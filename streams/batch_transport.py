"""A Faust transport that hands an agent its records a partition's fetch at a time.

Stock Faust delivers every record on its own: one ``wait_first`` (four tasks) in the
consumer's drain loop, one trip through the conductor and the channel's queue, one turn of
the stream's iterator, each per record. Measured here that caps a do-nothing agent at
6,700-9,500 records/s, below what the worker's batches need. This transport is Faust's own
aiokafka transport with two changes, reached through Faust's extension point (the
``faust.transports`` entry point, ``broker="batched://host:port"``):

* :class:`BatchingConsumer` drains each ``getmany`` a partition at a time: the records of
  one partition are made messages, filtered like Faust filters them (generation, active or
  buffered partition, read offset) and handed on together, in one ``wait_first`` racing
  ``suspend_flow`` as Faust's loop does for one record;
* :class:`BatchingConductor` puts them into a :class:`BatchTopic`'s channel as one list of
  events (each event with its message, acked as Faust acks); other channels still get one
  event per record.

Everything else is Faust's: the group, rebalances (``stop_flow`` and the flow control
that drops what a stale generation fetched, the queues cleared on revocation), the
messages' reference counts and acks, the read offsets, commits, recovery, the producer.
The agent iterating a :class:`BatchTopic` receives lists of events (``value`` a list, not
an event); it must skip a list of a stale generation, as Faust's stream skips an event
(:func:`stale`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import faust
from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.transport import consumer as faust_consumer
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message

SCHEME = "batched"  # broker="batched://host:port" (pyproject's faust.transports entry point)


class BatchTopic(faust.Topic):
    """A topic whose agent receives lists of events, a partition's fetch at a time.

    ``maxsize`` of its channel counts lists: keep it small. When it is full, the consumer
    waits before it fetches more.
    """


def stale(app: Any, events: Sequence[EventT[Any]]) -> bool:
    """True if ``events`` were fetched before the current rebalance: Faust's stream skips
    such an event (its partitions are sought back to the committed offsets)."""
    return bool(events) and (
        not app.flow_control.is_active()
        or events[0].message.generation_id != app.consumer_generation_id
    )


class BatchingConductor(Conductor):
    """Faust's conductor, with a per-partition batch entry for the consumer."""

    async def on_batch(self, tp: TP, messages: Sequence[Message]) -> None:
        """Deliver ``messages`` (all of ``tp``, in offset order) to the channels of ``tp``."""
        app: Any = self.app
        await app.flow_control.acquire()
        await app.producer.buffer.wait_until_ebb()
        async with self._tp_to_callback_lock:
            channels = list(self._tp_index.get(tp, ()))
        if not channels:
            return
        for message in messages:
            message.incref(len(channels))
        for channel in channels:
            if isinstance(channel, BatchTopic):
                await self._put_batch(tp, channel, messages)
            else:
                for message in messages:
                    event = await self._decode(channel, message)
                    if event is not None:
                        await channel.put(event)

    async def _put_batch(self, tp: TP, channel: Any, messages: Sequence[Message]) -> None:
        events: list[EventT[Any]] = []
        for message in messages:
            event = await self._decode(channel, message)
            if event is not None:
                events.append(event)
        if not events:
            return
        queue = channel.queue
        if queue.full():
            # Wait for the agent (the fetch loop waits too: back-pressure, no partition
            # paused). In a task of its own, as Faust's conductor does: a rebalance
            # clearing the queue cancels it, not the fetch loop.
            await asyncio.wait([asyncio.ensure_future(channel.put(events))])
        else:
            queue.put_nowait(events)

    @staticmethod
    async def _decode(channel: Any, message: Message) -> EventT[Any] | None:
        """The event of ``message`` for ``channel``; None (acked, reported to the channel
        as Faust's conductor does) if its key or value cannot be decoded."""
        try:
            return cast(EventT[Any], await channel.decode(message, propagate=True))
        except KeyDecodeError as exc:
            message.ack(channel.app.consumer)
            await channel.on_key_decode_error(exc, message)
        except ValueDecodeError as exc:
            message.ack(channel.app.consumer)
            await channel.on_value_decode_error(exc, message)
        return None


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, refusing a commit a rebalance emptied."""

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust drops the partitions no longer assigned when the commit runs in this
        # thread; a rebalance between the caller's check and now leaves nothing, and
        # aiokafka's ValueError on an empty commit crashed the thread and the worker
        # (seen with two workers joining: a membership check's commit during the second
        # rebalance). Nothing to commit is not a commit.
        assigned = self.assignment()
        if not any(tp in assigned for tp in offsets):
            return False
        return await super()._commit(offsets)


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, draining each fetch a partition at a time."""

    chunk = 250  # most records handed on in one list (partitions take turns by lists)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks: Counter[TP] = Counter()  # seeks per partition (see _hand_on)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek(self, partition: TP, offset: int) -> None:
        """Faust's seek (its read offset set to ``offset``), counted before and after."""
        tp = TP(partition.topic, partition.partition)
        self._seeks[tp] += 1
        try:
            await super().seek(partition, offset)
        finally:
            self._seeks[tp] += 1

    async def _seek(self, partition: TP, offset: int) -> None:
        # In the consumer's thread, between two steps of its fetcher: Faust seeks from the
        # caller's thread, which crashes aiokafka's fetcher when it is reading the
        # partition's records at that moment (KeyError in ``fetched_records``).
        await self._thread.call_thread(cast(Any, self._thread.seek), partition, offset)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (Faust's loop)
        """Faust's ``Consumer._drain_messages`` with one hand-off per partition per fetch."""
        conductor = cast(BatchingConductor, self.app.topics)
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        read_offsets = self._read_offset
        try:
            while not (stopped() or fetcher_stopped()):
                set_flag(faust_consumer.CONSUMER_FETCHING)
                seeks = dict(self._seeks)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records and not self.should_stop:
                    if not self.flow_active:  # (as Faust's getmany: fetched while stopped)
                        await self._seek_back()
                    else:
                        await self._hand_on(conductor, records, active, read_offsets, seeks)
                unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _seek_back(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning("exception performing seek when flow not active %s", exc)

    async def _hand_on(
        self,
        conductor: BatchingConductor,
        records: Any,
        active: set[TP] | None,
        read_offsets: Any,
        seeks: Mapping[TP, int],
    ) -> None:
        """Hand on a fetch: each partition's records in lists of at most ``chunk``, the
        partitions in turn (Faust's scheduler takes them in turn too, a record at a time)."""
        generation = self.app.consumer_generation_id
        acks_enabled_for = self.app.topics.acks_enabled_for
        lists: dict[TP, Sequence[Message]] = {}
        for fetched_tp, fetched in records.items():
            tp = TP(fetched_tp.topic, fetched_tp.partition)  # (aiokafka's own type, else)
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            read = read_offsets[tp]
            messages = [self._to_message(tp, r) for r in fetched
                        if read is None or r.offset >= read]  # fmt: skip
            if messages:
                if acks_enabled_for(tp.topic):
                    await self._note_gaps(tp, read, (m.offset for m in messages))
                lists[tp] = messages
        start = 0
        while lists:
            for tp in list(lists):
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return  # a rebalance began: what is left is fetched again after it
                part = lists[tp][start : start + self.chunk]
                if len(lists[tp]) <= start + self.chunk:
                    del lists[tp]
                if not part:
                    continue
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(conductor.on_batch(tp, part), self.suspend_flow.wait())
                # The read offset moves unless the partition was sought since the fetch
                # began: records fetched before the seek (handed on all the same) would
                # move it past the seek's offset, and the records fetched again from there
                # would be dropped as read already.
                if self._seeks[tp] == seeks.get(tp, 0):
                    read_offsets[tp] = part[-1].offset
            start += self.chunk

    async def _note_gaps(self, tp: TP, read: int | None, offsets: Iterable[int]) -> None:
        """Faust's gap bookkeeping for acked topics (compacted or transaction offsets)."""
        for offset in offsets:
            if read and offset - read > 1:
                await self._add_gap(tp, read + 1, offset)
            read = offset


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with per-partition batch delivery."""

    Consumer = BatchingConsumer
    Conductor = BatchingConductor
