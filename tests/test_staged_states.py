"""A batch's states are staged from its view write until Kafka acknowledges them.

The maintenance tick (a rebuild, the audit, the expiry) runs while a batch waits for Kafka.
The table stores a batch's states only once their changelog records are acknowledged; the
view has them already. A rebuild reading the table in between must see them, or it writes
an older state over the view's and marks the partition ready: an opposition gone from a
view vouched for.
"""

from __future__ import annotations

from types import SimpleNamespace

from streams.faust_bridge import FaustStateTable

OLD, NEW, LATER = b'{"v":1}', b'{"v":2}', b'{"v":3}'


def _table() -> tuple[FaustStateTable, dict[str, bytes]]:
    data: dict[str, bytes] = {"acme|+33612345670": OLD, "acme|+33612345671": OLD}
    return FaustStateTable(SimpleNamespace(data=data)), data


def test_what_a_rebuild_reads_while_a_batch_waits_for_kafka_is_the_batch_s_states() -> None:
    states, data = _table()
    batch = {"acme|+33612345670": (0, NEW), "acme|+33699999999": (1, NEW)}
    states.stage(batch)

    assert states.get("acme|+33612345670") == NEW  # (the table itself still has OLD)
    assert data["acme|+33612345670"] == OLD
    assert dict(states.items()) == {
        "acme|+33612345670": NEW,
        "acme|+33612345671": OLD,
        "acme|+33699999999": NEW,
    }
    assert sorted(states.keys()) == sorted(dict(states.items()))

    for key, (_partition, value) in batch.items():  # acknowledged: stored
        states.store(key, value)
    assert data["acme|+33612345670"] == data["acme|+33699999999"] == NEW
    assert dict(states.items()) == data


def test_a_failed_batch_is_unstaged_and_the_table_read_as_it_is() -> None:
    states, _data = _table()
    batch = {"acme|+33612345670": (0, NEW), "acme|+33699999999": (1, NEW)}
    states.stage(batch)
    states.unstage(batch)
    assert states.get("acme|+33612345670") == OLD
    assert states.get("acme|+33699999999") is None


def test_a_revoked_partition_s_staged_states_go_at_once() -> None:
    """A rebuild after the partition comes back must not read a stale batch's states."""
    states, _data = _table()
    states.stage({"acme|+33612345670": (0, NEW), "acme|+33612345671": (1, NEW)})
    states.unstage_partitions([0])
    assert states.get("acme|+33612345670") == OLD
    assert states.get("acme|+33612345671") == NEW


def test_a_key_staged_again_by_a_later_batch_stays_staged() -> None:
    """Only the entry a batch staged ends with it: not a later batch's for the same key."""
    states, data = _table()
    first = {"acme|+33612345670": (0, NEW)}
    later = {"acme|+33612345670": (0, LATER)}
    states.stage(first)
    states.stage(later)
    states.store("acme|+33612345670", first["acme|+33612345670"][1])
    assert data["acme|+33612345670"] == NEW
    assert states.get("acme|+33612345670") == LATER
    states.unstage(first)
    assert states.get("acme|+33612345670") == LATER
    states.unstage(later)
    assert states.get("acme|+33612345670") == NEW
