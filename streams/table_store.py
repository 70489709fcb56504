"""The table's store: Faust's RocksDB store (rocksdict), holding only what Kafka holds.

A restarted worker finds its partitions' states on disk with the changelog offset they
reflect (Faust's *persisted offset*), and Faust's recovery replays only the changelog after
it: the tail, not every state. For that to be true, a partition's database must never hold
a state its changelog does not: the agent's batch writes its states here only once their
changelog records are acknowledged (:meth:`DurableRocksDBStore.persist`, one atomic write
per partition with the offset of its last record). A batch that dies before leaves nothing
here, so a database kept across a crash, a revocation or a fenced pause is only *behind*
its changelog, never ahead of it or beside it, and recovery brings it up to date.

Faust's own store is kept as it is (recovery, standbys, iteration over the active
partitions); this subclass, registered under the ``faust.stores`` entry point as
``dnc-rocksdb://``, adds what it lacks:

- a database that cannot be opened for any reason but another process's lock (corrupted,
  unreadable) is deleted and created empty: recovery then replays its whole changelog, and
  the partition is not vouched for meanwhile (checks fail closed);
- reads and writes addressed by partition: the agent applies batches of several
  partitions, where Faust's store would pick the database of the stream's current event;
- a read or write that fails (corruption found later) raises :class:`StateStoreBroken`,
  which ends the worker after the database is deleted, never an event dead-lettered
  as if it were bad input;
- keys encoded and decoded as the changelog's own key bytes (the JSON of a string, what
  Faust's recovery copies into the database as they are), without Faust's serializer
  registry: a few microseconds a key through it, seconds for the million keys a rebuild
  or an adopted view's indexing reads;
- reads of a partition a page at a time (:meth:`DurableRocksDBStore.scan`): the continuous
  audit walks the table without listing it first (listing a million keys held the event
  loop for five seconds, and a restarted worker's first vouch with it).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import rocksdict
from faust.stores import rocksdb

from streams.fencing import give_up
from streams.kafka_sink import changelog_key
from streams.processor import StateStoreBroken

log = logging.getLogger("dnc.streams")

STORE_SCHEME = "dnc-rocksdb"  # the entry point's name in pyproject.toml


def _locked(exc: BaseException) -> bool:
    """RocksDB's error for a database another process (or an unclosed handle) holds."""
    return "lock" in repr(exc).lower()


class DurableRocksDBStore(rocksdb.Store):
    """Faust's RocksDB store; see the module for what it adds.

    ``changelog_id``: the changelog topic's id (set before the worker starts). Each database
    is marked with it (a file beside it); one marked with another id, or not at all, was
    filled from another topic (a Kafka cluster or topic created anew under a kept volume):
    its offsets mean nothing here, so it is deleted and replayed.
    """

    changelog_id: str | None = None

    def _encode_key(self, key: Any) -> bytes:
        return changelog_key(key)

    def _decode_key(self, key: bytes | None) -> Any:
        return json.loads(key) if key is not None else None

    def _open_for_partition(self, partition: int) -> Any:
        path = self.partition_path(partition)
        mark = path.with_name(path.name + ".changelog-id")
        if self.changelog_id is not None and path.exists():
            # (unreadable or garbled like the rest of a corrupted volume: another id)
            found = mark.read_bytes().decode(errors="replace").strip() if mark.exists() else None
            if found != self.changelog_id:
                log.error("the table's database of partition %d (%s) was filled from another "
                          "changelog (topic id %s, now %s): deleted; its states are recovered "
                          "from the whole changelog", partition, path, found,
                          self.changelog_id)  # fmt: skip
                shutil.rmtree(path, ignore_errors=True)
        try:
            db = super()._open_for_partition(partition)
        except Exception as exc:
            if _locked(exc):
                raise  # (Faust retries a locked database for a while)
            log.error("the table's database of partition %d (%s) cannot be opened (%r): "
                      "deleted; its states are recovered from the whole changelog and the "
                      "partition is not vouched for until then", partition, path, exc)  # fmt: skip
            shutil.rmtree(path, ignore_errors=True)
            db = super()._open_for_partition(partition)
        if self.changelog_id is not None:
            mark.write_text(self.changelog_id)
        return db

    def read(self, key: str, partition: int) -> bytes | None:
        """The value of ``key`` in ``partition``'s database (None: no state)."""
        try:
            value = self._db_for_partition(partition).get(self._encode_key(key))
        except Exception as exc:
            raise StateStoreBroken(partition, str(self.partition_path(partition)), exc) from exc
        return None if value is None else bytes(value)

    def find(self, key: str) -> bytes | None:
        """The value of ``key`` in whichever open database holds it (states are partitioned
        by number: one at most). Without Faust's mapping path, which a continuous audit of
        thousands of keys a second would pay for."""
        encoded = self._encode_key(key)
        for partition, db in list(self._dbs.items()):
            try:
                value = db.get(encoded)
            except Exception as exc:
                raise StateStoreBroken(partition, str(self.partition_path(partition)), exc) from exc
            if value is not None:
                return bytes(value)
        return None

    def states(self, partitions: Iterable[int] | None = None) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) of the active partitions' databases (of those among
        ``partitions`` if given), lazily: Faust's iteration, without decoding each value
        through its serializer registry, and without reading a partition not asked for."""
        wanted = None if partitions is None else set(partitions)
        actives = {id(db) for db in self._dbs_for_actives()}  # (Faust's own choice of them)
        offset_key, decode = self.offset_key, self._decode_key
        for partition, db in list(self._dbs.items()):
            if id(db) not in actives or (wanted is not None and partition not in wanted):
                continue
            for key, value in db.items():
                if key != offset_key:
                    yield decode(key), value

    def scan(self, partition: int, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` (key, value) of ``partition``'s database in key order, from the
        first key past ``after`` (None: from the start): fewer at its end, none if the
        partition is not open here (revoked). Each call is one short-lived iterator: none is
        held between calls, while a rebalance may close the database."""
        db = self._dbs.get(partition)
        if db is None:
            return []
        start = None if after is None else self._encode_key(after)
        offset_key, decode = self.offset_key, self._decode_key
        found: list[tuple[str, bytes]] = []
        try:
            for key, value in db.items(from_key=start):
                if key in (start, offset_key):
                    continue
                found.append((decode(key), value))
                if len(found) >= limit:
                    break
        except Exception as exc:
            raise StateStoreBroken(partition, str(self.partition_path(partition)), exc) from exc
        return found

    def changelog_offset(self, partition: int) -> int | None:
        """The offset of the last changelog record ``partition``'s database reflects (its
        persisted offset: Faust's recovery and :meth:`persist` set it); None: none yet."""
        try:
            raw = self._db_for_partition(partition).get(self.offset_key)
        except Exception as exc:
            raise StateStoreBroken(partition, str(self.partition_path(partition)), exc) from exc
        return None if raw is None else int(raw)

    def persist(self, states: Mapping[str, tuple[int, bytes]], offsets: Mapping[int, int]) -> None:
        """Write ``states`` (key -> partition, value) whose changelog records Kafka
        acknowledged, each partition's with the offset of its last record, atomically."""
        batches: dict[int, Any] = {}
        for key, (partition, value) in states.items():
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(self._encode_key(key), value)
        for partition, batch in batches.items():
            offset = offsets.get(partition)
            if offset is None or offset < 0:
                raise ValueError(f"no acknowledged changelog offset for partition {partition}")
            batch.put(self.offset_key, str(offset).encode())
            try:
                self._db_for_partition(partition).write(batch)
            except Exception as exc:
                raise StateStoreBroken(partition, str(self.partition_path(partition)), exc) from exc


def abandon(broken: StateStoreBroken) -> None:
    """Delete the broken database and exit for a supervisor to restart the worker: its
    partition is recovered from the whole changelog (nothing uncommitted is lost)."""
    shutil.rmtree(broken.path, ignore_errors=True)
    give_up(f"{broken}; deleted it")
