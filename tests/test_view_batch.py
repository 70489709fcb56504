"""Grouping of view writes (pure logic; the writes themselves are tested on real Redis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from schemas.events import Kind, Scope, Source
from schemas.state import ActiveSuppression, Stamp, SuppressionState
from schemas.view import FAMILY_OF_KIND, META_KEY, ViewLayout
from streams.view_writer import ViewBatch

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _state(phone: str, expires_at: datetime | None) -> SuppressionState:
    entry = ActiveSuppression(
        stamp=Stamp(occurred_at=NOW - timedelta(days=1), event_id=uuid.uuid4()),
        kind=Kind.REFUSAL,
        expires_at=expires_at,
        source=Source.AGENT_DESKTOP,
    )
    return SuppressionState(target="acme", tenant="acme", scope=Scope.TENANT, campaign_id=None,
                            phone_e164=phone, active=(entry,), updated_at=NOW)  # fmt: skip


def test_members_are_grouped_by_key_added_if_suppressed_removed_if_not() -> None:
    layout = ViewLayout(b"k", default_buckets=2)
    batch = ViewBatch(layout, NOW)
    phones = [f"+336123456{i:02d}" for i in range(40)]
    expected: dict[tuple[str, str], set[int]] = {}
    for i, phone in enumerate(phones):
        suppressed = i % 3 != 0
        state = _state(phone, None if suppressed else NOW - timedelta(seconds=1))  # expired
        assert batch.put(state) is suppressed
        base, member = layout.locate("acme", phone)
        # In the refusal set if suppressed (out of the other kinds'), out of all if not.
        for kind, letter in FAMILY_OF_KIND.items():
            op = "+" if suppressed and kind == "refusal" else "-"
            expected.setdefault((base + letter, op), set()).add(member)
    # One metadata copy (unsharded), one partition (the states': 0).
    assert list(batch.ops) == [META_KEY] and list(batch.ops[META_KEY]) == [0]
    ops = batch.ops[META_KEY][0]
    assert {k: set(v) for k, v in ops.items()} == expected
    assert len(ops) <= 2 * 4 * 2  # one operation per bucket, kind and direction
    assert batch.pending == batch.written == len(phones)
    batch.clear()
    assert not batch.ops and batch.pending == 0
    assert batch.written == len(phones)
