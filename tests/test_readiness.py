"""The fast readiness predicate every check asks gives the full judgement's verdict."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.readiness import judge, meta_hash, oldest_applied_ms, read_view, trusted
from schemas.view import (
    META_KEY,
    META_LAYOUT,
    META_PARTITIONS,
    applied_field,
    node_field,
    owner_field,
    ready_field,
)

NOW_S, NOW_US = 1_800_000_000, 123_456
NOW_MS = NOW_S * 1000 + NOW_US // 1000


@st.composite
def metas(draw: Any) -> dict[Any, Any]:
    meta: dict[str, str] = {}
    total = draw(st.integers(1, 6))
    if draw(st.booleans()) or draw(st.booleans()):
        meta[META_PARTITIONS] = str(total)
    layout = draw(st.sampled_from(["fp-ok", "fp-other", None]))
    if layout is not None:
        meta[META_LAYOUT] = layout
    for p in range(total + draw(st.integers(0, 1))):
        if draw(st.integers(0, 9)) > 0:
            meta[ready_field(p)] = "1"
        if draw(st.integers(0, 9)) > 0:
            age_ms = draw(st.sampled_from([0, 4_999, 5_000, 5_001, 60_000, -3_000]))
            meta[applied_field(p)] = str(NOW_MS - age_ms)
        meta[owner_field(p)] = "w"
    if draw(st.booleans()):
        return {k.encode(): v.encode() for k, v in meta.items()}  # as redis-py returns it
    return dict(meta)


@settings(max_examples=2000)
@given(meta=metas(), bound=st.sampled_from([0.5, 5.0, 5.001]))
def test_trusted_is_exactly_the_judgements_verdict(meta: dict[Any, Any], bound: float) -> None:
    verdict = judge((NOW_S, NOW_US), meta, "fp-ok", bound)
    assert trusted((NOW_S, NOW_US), meta, "fp-ok", bound) is verdict.ready, verdict.why


@st.composite
def stored_metas(draw: Any, now_ms: int, run_id: str) -> dict[str, str]:
    """Metadata as the worker writes it (relative to Redis's clock ``now_ms``), and odd
    values Lua reads otherwise than Python (which the script must leave to the reader)."""
    meta: dict[str, str] = {}
    total = draw(st.integers(0, 4))
    if draw(st.integers(0, 5)) > 0:
        meta[META_PARTITIONS] = draw(st.sampled_from([str(total), f" {total}", f"{total}.0"]))
    layout = draw(st.sampled_from(["fp-ok", "fp-other", None]))
    if layout is not None:
        meta[META_LAYOUT] = layout
    for p in range(total + draw(st.integers(0, 1))):
        if draw(st.integers(0, 9)) > 0:
            meta[ready_field(p)] = "1"
        if draw(st.integers(0, 9)) > 0:
            age_ms = draw(st.sampled_from([0, 4_999, 5_000, 5_001, 60_000, -3_000]))
            at = str(now_ms - age_ms)
            meta[applied_field(p)] = draw(st.sampled_from([at, at, at, f"{at}.5", f"0x{at}"]))
        node = draw(st.sampled_from([run_id, run_id, "another-node", None]))
        if node is not None:
            meta[node_field(p)] = node
        meta[owner_field(p)] = "w"
    return meta


@pytest.mark.redis
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data(), bound=st.sampled_from([0.5, 5.0, 5.001]), with_node=st.booleans())
def test_the_script_trusts_a_view_exactly_when_the_reader_would(
    redis_client: redis.Redis, data: st.DataObject, bound: float, with_node: bool
) -> None:
    """READ_VIEW judges the metadata itself when the reader gives its fingerprint and bound
    (and then sends no metadata back): its verdict is :func:`trusted`'s, on the same clock."""
    seconds, micros = redis_client.time()
    run_id = redis_client.info("server")["run_id"]
    meta = data.draw(stored_metas(seconds * 1000 + micros // 1000, run_id))
    redis_client.delete(META_KEY)
    if meta:
        redis_client.hset(META_KEY, mapping=meta)
    node_flag = int(with_node)
    [(server_time, node, flat)] = read_view(
        redis_client, [([META_KEY], [node_flag, "fp-ok", bound])]
    )
    [(_t, _n, full)] = read_view(redis_client, [([META_KEY], [node_flag, "", 0])])
    assert not isinstance(full, int) and meta_hash(full) == {
        k.encode(): v.encode() for k, v in meta.items()
    }
    try:
        expected = trusted(server_time, meta_hash(full), "fp-ok", bound, node)
        why = judge(server_time, meta_hash(full), "fp-ok", bound, node).why
    except ValueError:  # a value Python cannot read either: the reader fails on it, as before
        expected, why = False, "unreadable"
    odd = any(not re.fullmatch(r"-?[0-9]+", v) for k, v in meta.items()
              if k == META_PARTITIONS or k.startswith("applied:"))  # fmt: skip
    if isinstance(flat, int):
        assert expected, (meta, why)  # never trusted where the reader would not trust it
        # and its verdict carries the oldest applied-through time, as the reader reads it
        if int(meta[META_PARTITIONS]):
            assert flat == oldest_applied_ms(meta_hash(full), server_time), (flat, meta)
    else:
        assert flat == full  # the reader judges (and explains) it itself: same verdict
        assert not expected or odd, meta  # and only odd values are left to it


@pytest.mark.redis
def test_an_applied_time_ahead_of_redis_s_clock_counts_as_now_on_both_paths(
    redis_client: redis.Redis,
) -> None:
    """A vouch stamped ahead of Redis's clock (it should not be) leaves a check no more of
    the bound than one stamped now, whether the script judges the view or the reader does
    (a draw of the property test above found the reader's path taking it as it was)."""
    seconds, micros = redis_client.time()
    ahead = str(seconds * 1000 + micros // 1000 + 3_000)
    meta = {"partitions": "1", "layout": "fp-ok", ready_field(0): "1", applied_field(0): ahead}
    redis_client.delete(META_KEY)
    redis_client.hset(META_KEY, mapping=meta)
    [(_now, _node, flat)] = read_view(redis_client, [([META_KEY], [0, "fp-ok", 5.0])])
    [(later, _n, full)] = read_view(redis_client, [([META_KEY], [0, "", 0])])
    assert isinstance(flat, int) and flat < int(ahead)
    assert oldest_applied_ms(meta_hash(full), later) < int(ahead)
    assert oldest_applied_ms(meta_hash(full)) == int(ahead)  # (no clock: as recorded)
