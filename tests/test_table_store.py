"""The table's RocksDB store (streams/table_store.py) on a real RocksDB, without Kafka: it
holds only acknowledged states with their changelog offset, and a database it cannot open
is replaced by an empty one (recovered from the whole changelog)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from schemas.events import Scope
from schemas.state import SuppressionState
from streams.faust_bridge import FaustStateTable
from streams.processor import encode_state, load_state
from streams.table_store import STORE_SCHEME, DurableRocksDBStore


def _table(tabledir: Path) -> Any:
    app = faust.App("store-test", store=f"{STORE_SCHEME}://", tabledir=str(tabledir),
                    broker="kafka://127.0.0.1:1")  # fmt: skip
    schema = faust.Schema(key_serializer="json", value_serializer="raw")
    return app.Table("states", default=None, partitions=3, value_type=bytes, schema=schema)


def _close(table: Any) -> None:
    """Close the table's databases, as the end of the process would."""
    for db in table.data._dbs.values():
        db.close()
    table.data._dbs.clear()


def _state(phone: str, partition: int) -> bytes:
    state = SuppressionState(target="acme", tenant="acme", scope=Scope.TENANT, campaign_id=None,
                             phone_e164=phone, partition=partition, position=(partition, 12),
                             updated_at=datetime.now(UTC))  # fmt: skip
    return encode_state(state)


def test_states_are_kept_by_partition_with_their_changelog_offset(tmp_path: Path) -> None:
    table = _table(tmp_path)
    assert isinstance(table.data, DurableRocksDBStore)
    states = FaustStateTable(table)
    batch = {f"acme|+3361234567{i}": (i % 2, _state(f"+3361234567{i}", i % 2)) for i in range(4)}
    states.persist(batch, {0: 41, 1: 17})
    for key, (partition, value) in batch.items():
        assert states.get(key, partition) == value
        assert states.get(key, 1 - partition) is None  # (each partition its own database)
    topic = table.changelog_topic.get_topic_name()
    assert table.data.persisted_offset(TP(topic, 0)) == 41
    assert table.data.persisted_offset(TP(topic, 1)) == 17
    assert table.data.persisted_offset(TP(topic, 2)) is None
    # Faust's own reads (recovery's store, the view rebuild) see the same bytes and keys.
    _close(table)
    reopened = FaustStateTable(_table(tmp_path))
    key = "acme|+33612345671"
    assert load_state(reopened.get(key, 1)) is not None
    assert load_state(reopened.get(key, 1)).phone_e164 == "+33612345671"  # type: ignore[union-attr]


def test_a_batch_without_an_acknowledged_offset_is_refused(tmp_path: Path) -> None:
    states = FaustStateTable(_table(tmp_path))
    with pytest.raises(ValueError, match="no acknowledged changelog offset"):
        states.persist({"acme|+33612345670": (2, _state("+33612345670", 2))}, {})
    assert states.get("acme|+33612345670", 2) is None


@pytest.mark.parametrize("mark_too", [False, True])
def test_a_database_that_cannot_be_opened_is_replaced_by_an_empty_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mark_too: bool
) -> None:
    table = _table(tmp_path)
    table.data.changelog_id = "topic-id-1"
    FaustStateTable(table).persist({"acme|+33612345670": (0, _state("+33612345670", 0))}, {0: 5})
    path = table.data.partition_path(0)
    _close(table)
    # Every file overwritten (MANIFEST, CURRENT, tables, log, the changelog id beside them).
    mark = path.with_name(path.name + ".changelog-id")
    for file in [*path.iterdir(), *([mark] if mark_too else [])]:
        if file.is_file() and file.name != "LOCK":
            file.write_bytes(b"\x00garbage\xff" * 64)
    caplog.set_level(logging.ERROR, "dnc.streams")
    fresh = _table(tmp_path)
    fresh.data.changelog_id = "topic-id-1"
    topic = fresh.changelog_topic.get_topic_name()
    assert fresh.data.persisted_offset(TP(topic, 0)) is None  # recovery replays it all
    assert FaustStateTable(fresh).get("acme|+33612345670", 0) is None
    assert ("another changelog" if mark_too else "cannot be opened") in caplog.text


def test_a_partition_is_read_a_page_at_a_time_in_key_order(tmp_path: Path) -> None:
    states = FaustStateTable(_table(tmp_path))
    keys = [f"acme|+336123456{i:02d}" for i in range(25)]
    states.persist({key: (1, _state(key[5:], 1)) for key in reversed(keys)}, {1: 99})
    pages, after = [], None
    while page := states.scan(1, after, 10):
        pages.append([key for key, _value in page])
        after = page[-1][0]
    assert pages == [keys[:10], keys[10:20], keys[20:]]  # (the offset record is not a state)
    assert load_state(states.scan(1, keys[3], 1)[0][1]).phone_e164 == keys[4][5:]  # type: ignore[union-attr]
    assert states.scan(0, None, 10) == []  # (never opened here: none)


# A batch's states are staged from its view write until Kafka acknowledges them. The
# maintenance tick (a rebuild, the audit, the expiry) runs while a batch waits for Kafka;
# the store persists a batch's states only once their changelog records are acknowledged,
# and the view has them already. A rebuild reading the table in between must see them, or
# it writes an older state over the view's and marks the partition ready: an opposition gone
# from a view vouched for.


OLD, NEW, LATER = b'{"v":1}', b'{"v":2}', b'{"v":3}'
A, B, C = "acme|+33612345670", "acme|+33612345671", "acme|+33699999999"


def _persisted(tmp_path: Path) -> FaustStateTable:
    states = FaustStateTable(_table(tmp_path))
    states.persist({A: (0, OLD), B: (1, OLD)}, {0: 3, 1: 3})
    return states


def test_what_a_rebuild_reads_while_a_batch_waits_for_kafka_is_the_batch_s_states(
    tmp_path: Path,
) -> None:
    states = _persisted(tmp_path)
    batch = {A: (0, NEW), C: (1, NEW)}
    states.stage(batch)
    assert states.get(A) == states.get(A, 0) == NEW  # (the store itself still has OLD)
    assert states.get(B) == OLD
    # (no partition is assigned here, so the store lists none of its own: only the staged)
    assert dict(states.items()) == {A: NEW, C: NEW}
    assert dict(states.items([1])) == {C: NEW}  # (a rebuild of partition 1 alone)
    assert states.scan(0, None, 10) == [(A, NEW)]  # (a page of the store: C is only staged)

    states.persist(batch, {0: 4, 1: 4})  # acknowledged: persisted, then unstaged
    states.unstage(batch)
    assert states._staged == {}
    assert states.get(A, 0) == states.get(C, 1) == NEW


def test_a_failed_batch_is_unstaged_and_the_table_read_as_it_is(tmp_path: Path) -> None:
    states = _persisted(tmp_path)
    batch = {A: (0, NEW), C: (1, NEW)}
    states.stage(batch)
    states.unstage(batch)  # (its events replay)
    assert states.get(A) == OLD
    assert states.get(C) is None


def test_a_revoked_partition_s_staged_states_go_at_once(tmp_path: Path) -> None:
    """A rebuild after the partition comes back must not read a stale batch's states."""
    states = _persisted(tmp_path)
    states.stage({A: (0, NEW), B: (1, NEW)})
    assert states.unstage_partitions([0]) == 1
    assert states.get(A) == OLD
    assert states.get(B) == NEW


def test_a_key_staged_again_by_a_later_batch_stays_staged(tmp_path: Path) -> None:
    """Only the entry a batch staged ends with it: not a later batch's for the same key,
    even with the same bytes."""
    states = _persisted(tmp_path)
    first, later, same = {A: (0, NEW)}, {A: (0, LATER)}, {A: (0, NEW)}
    states.stage(first)
    states.stage(later)
    states.persist(first, {0: 4})
    states.unstage(first)
    assert states.get(A, 0) == LATER
    states.unstage(later)  # (failed: the store has the first batch's)
    assert states.get(A) == NEW
    states.stage(same)
    states.unstage({A: (0, NEW)})  # (an equal entry of another batch: not this one)
    assert states.get(A) == NEW and states._staged[A] is same[A]


def test_a_database_filled_from_another_changelog_is_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A volume kept while Kafka (or the changelog topic) was created anew: the database's
    offsets are another topic's, so it is deleted; one of the same topic is kept."""
    table = _table(tmp_path)
    table.data.changelog_id = "topic-id-1"
    FaustStateTable(table).persist({"acme|+33612345670": (0, _state("+33612345670", 0))}, {0: 9})
    _close(table)
    topic = table.changelog_topic.get_topic_name()
    same = _table(tmp_path)
    same.data.changelog_id = "topic-id-1"
    assert same.data.persisted_offset(TP(topic, 0)) == 9
    _close(same)
    caplog.set_level(logging.ERROR, "dnc.streams")
    other = _table(tmp_path)
    other.data.changelog_id = "topic-id-2"
    assert other.data.persisted_offset(TP(topic, 0)) is None
    assert FaustStateTable(other).get("acme|+33612345670", 0) is None
    assert "filled from another changelog" in caplog.text
