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


def test_staged_states_are_what_a_rebuild_reads_until_persisted(tmp_path: Path) -> None:
    """Between the view write and the changelog's acknowledgement, a rebuild reading the
    table must see the states the view already shows, never the older ones on disk."""
    table = _table(tmp_path)
    states = FaustStateTable(table)
    key = "acme|+33612345670"
    old = _state("+33612345670", 0)
    states.persist({key: (0, old)}, {0: 3})
    new = old.replace(b'"position":[0,12]', b'"position":[0,13]')
    assert new != old
    states.stage({key: (0, new), "acme|+33612345679": (0, new)})
    assert states.get(key) == new and states.get(key, 0) == new
    assert dict(states.items()) == {key: new, "acme|+33612345679": new}
    assert sorted(states.keys()) == [key, "acme|+33612345679"]
    states.persist({key: (0, new)}, {0: 4})
    states.unstage({key: (0, new)})
    assert states.get(key, 0) == new
    assert states.get("acme|+33612345679") == new  # (still staged: not acknowledged yet)
    states.unstage({"acme|+33612345679": (0, new)})  # (its batch failed: it replays)
    assert states.get("acme|+33612345679") is None


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
