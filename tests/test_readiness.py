"""The fast readiness predicate every check asks gives the full judgement's verdict."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.readiness import judge, trusted
from schemas.view import META_LAYOUT, META_PARTITIONS, applied_field, owner_field, ready_field

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
