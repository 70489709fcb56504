"""When `dnc up` may say "pipeline ready": once the worker group has settled.

The view being ready at one instant is not enough with several workers: the first to join
takes every partition and vouches for it, then the second joins, the group rebalances, and
the partitions that move are rebuilt by their new owner, unvouched meanwhile. A dialer
starting on "ready" then got "unavailable" for a third of its answers (issue 22). Settled
means all of this at once:

* the view is ready and current (the judgement every check applies), with room to spare:
  every partition vouched for within half the staleness bound, so that the workers are
  keeping up, not about to let a partition age past the bound;
* the worker group is stable (no rebalance under way) with every worker started as a
  member;
* every partition of the oppositions topic is assigned, and each worker vouches for exactly
  the partitions assigned to it (a partition that moved is vouched for by its new owner).

The caller asks again until it has held for a while (:data:`SETTLED_FOR_SECONDS`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupState, KafkaException

from consumers.readiness import Readiness
from dnc.health import view_readiness, worker_group
from schemas.settings import Settings
from schemas.tenants import TenantDirectory

# How long the group must stay settled before "ready" is said: a rebalance that a late
# join or a slow first heartbeat starts shows within it.
SETTLED_FOR_SECONDS = 3.0


@dataclass(frozen=True)
class Settled:
    """The verdict; ``why`` says what is still awaited."""

    settled: bool
    why: str = ""


def group_settled(settings: Settings, tenants: TenantDirectory, workers: int) -> Settled:
    """Whether the pipeline of ``workers`` workers has settled (see the module's doc)."""
    verdict = view_readiness(settings, tenants)
    if not verdict.ready:
        return Settled(False, f"the view: {verdict.why}")
    try:
        state, members = worker_group(settings)
    except KafkaException as exc:
        return Settled(False, f"the worker group: {exc}")
    return judge_settled(verdict, state, members, workers, settings.max_staleness_seconds)


def judge_settled(
    verdict: Readiness,
    state: ConsumerGroupState,
    members: Mapping[str, Sequence[int]],
    workers: int,
    max_staleness: float,
) -> Settled:
    """The verdict from the view's and the group's: ``members`` maps each member of the
    worker group to the oppositions partitions assigned to it."""
    if not verdict.ready:
        return Settled(False, f"the view: {verdict.why}")
    worst = verdict.worst_staleness
    if worst is None or worst > max_staleness / 2:
        return Settled(
            False,
            f"the stalest partition was vouched for {worst or 0:.1f} s ago, more than half "
            f"the {max_staleness:g} s bound: the workers are catching up",
        )
    if state is not ConsumerGroupState.STABLE:
        return Settled(False, f"the worker group is {state.name.lower()}")
    if len(members) < workers:
        return Settled(False, f"{len(members)} of {workers} workers in the group")
    total = len(verdict.partitions)
    assigned = sorted(p for parts in members.values() for p in parts)
    if assigned != list(range(total)):
        return Settled(False, f"partitions assigned {assigned} of {total}")
    vouched: dict[str, set[int]] = defaultdict(set)
    for p in verdict.partitions:
        vouched[p.owner or ""].add(p.partition)
    by_assignee = sorted(sorted(parts) for parts in members.values() if parts)
    by_voucher = sorted(sorted(parts) for parts in vouched.values())
    if by_assignee != by_voucher:
        return Settled(
            False,
            f"partitions vouched for as {by_voucher}, assigned as {by_assignee}: the new "
            "owners are rebuilding theirs",
        )
    return Settled(True)
