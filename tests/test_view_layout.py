"""View layout: keyed hashing, buckets, no clear numbers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.view import VIEW_PREFIX, ViewLayout

LAYOUT = ViewLayout(b"secret", 64)


def test_members_are_positive_int64_and_keys_are_bucketed() -> None:
    slot = LAYOUT.slot("acme", "+33612345678")
    assert 0 <= slot.member < 2**63
    prefix, bucket = slot.key.rsplit(":", 1)
    assert prefix == f"{VIEW_PREFIX}:acme" and 0 <= int(bucket) < 64


def test_key_and_scope_change_the_member() -> None:
    a = LAYOUT.slot("acme", "+33612345678")
    assert ViewLayout(b"other", 64).slot("acme", "+33612345678") != a
    assert LAYOUT.slot("globex", "+33612345678").member != a.member
    assert LAYOUT.slot("acme", "+33612345678") == a


def test_tenant_bucket_override_applies_to_its_campaigns() -> None:
    layout = ViewLayout(b"k", 1024, {"acme": 8})
    assert layout.buckets_for("acme") == 8
    assert layout.buckets_for("acme/spring") == 8
    assert layout.buckets_for("_global") == 1024


@given(st.integers(10**8, 10**9 - 1))
def test_buckets_spread_numbers(n: int) -> None:
    slot = LAYOUT.slot("acme", f"+336{n:08d}"[:12])
    assert int(slot.key.rsplit(":", 1)[1]) < 64


# Computed once by the first implementation: a change here would silently empty every
# deployed view (readers would look in other places), so it needs a rebuild and a
# layout version of its own, never a refactoring.
KNOWN_SLOTS = [
    ("_global", "+33612345678", "dnc:v1:_global:209", 7001532550467467404),
    ("_global", "+14155550100", "dnc:v1:_global:30", 2405673990531793734),
    ("acme", "+33612345678", "dnc:v1:acme:32", 7062369576710082571),
    ("acme", "+14155550100", "dnc:v1:acme:44", 5829970482236777693),
    ("acme/c1", "+33612345678", "dnc:v1:acme/c1:22", 4848739321510337974),
    ("acme/c1", "+14155550100", "dnc:v1:acme/c1:31", 1086786241169390544),
    ("other", "+33612345678", "dnc:v1:other:608", 7583168329638926649),
    ("other", "+14155550100", "dnc:v1:other:736", 1411125287677236075),
]


def test_slots_are_the_deployed_layout() -> None:
    layout = ViewLayout(b"k" * 32, 1024, {"acme": 64})
    for target, phone, key, member in KNOWN_SLOTS:
        slot = layout.slot(target, phone)
        assert (slot.key, slot.member) == (key, member), (target, phone)


@given(phones=st.lists(st.from_regex(r"\+33[67][0-9]{8}", fullmatch=True), max_size=20))
def test_a_locator_locates_as_locate_does(phones: list[str]) -> None:
    sharded = ViewLayout(b"secret", 64, {"acme": 8}, shards=16)
    for layout in (LAYOUT, sharded):
        for target in ("_global", "acme", "acme/spring"):
            locate = layout.locator(target)
            assert [locate(p) for p in phones] == [layout.locate(target, p) for p in phones]
