"""What the view knows of numbers, read in atomic scripts: the facts of the dial decision.

:class:`ViewQuestions` turns numbers of one tenant (and campaign) into
:data:`consumers.readiness.READ_VIEW` calls: per bucket, the number's membership of each
suppression set (kind) of the global, tenant and campaign lists; the consents hash fields
(when the campaign's legal basis is consent); the tenant's attempts on the number (when the
campaign caps them). Each call reads the view's metadata too and is judged by it: a number
is answered only if every call that asked about it found the view trusted. The replies
become :class:`Found`, the facts :func:`consumers.dial_rules.decide` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.dial_rules import ConsentFact, ViewFacts
from consumers.readiness import ViewRead, meta_hash
from schemas.events import Kind, Scope, scope_target
from schemas.view import FAMILY_OF_KIND, ViewLayout, parse_consent_value

KINDS = [Kind(name) for name in FAMILY_OF_KIND]  # READ_VIEW's 's' replies, in this order

# Why the view cannot be trusted, from a read's clock, metadata and node (None: trusted).
Judge = Callable[[Any, Any, Any], "str | None"]


@dataclass
class Found:
    """What the view said of one number (``why``: it could not be trusted)."""

    opposed: list[tuple[Scope, Kind]] = field(default_factory=list)
    consents: list[ConsentFact] = field(default_factory=list)
    withdrawn_ms: dict[Scope, int] = field(default_factory=dict)
    attempts: list[datetime] = field(default_factory=list)
    why: str | None = None
    now: datetime | None = None  # Redis's clock when read

    def facts(self) -> ViewFacts:
        """The facts of the dial decision."""
        return ViewFacts(self.opposed, self.consents, self.withdrawn_ms, self.attempts)


# One key asked in a read: (key, operation, [(number's index, argument, scope)]).
_Ask = tuple[str, str, list[tuple[int, Any, Scope]]]


class ViewQuestions:
    """The reads that answer numbers of ``tenant`` (and ``campaign``).

    ``consents``: read the consents hashes; ``attempts_since_ms``: read the tenant's
    attempts on each number since then (None: not at all). At most ``per_script`` members
    per script (a script holds its Redis node meanwhile).
    """

    def __init__(
        self,
        layout: ViewLayout,
        tenant: str,
        campaign: str | None,
        *,
        consents: bool,
        attempts_since_ms: int | None,
        with_node: int,
        per_script: int,
    ) -> None:
        self._layout = layout
        self._tenant = tenant
        self._consents = consents
        self._since = attempts_since_ms
        self._with_node = with_node
        self._per_script = per_script
        self.targets = [(Scope.GLOBAL, scope_target(Scope.GLOBAL, tenant, None)),
                        (Scope.TENANT, tenant)]  # fmt: skip
        if campaign:
            self.targets.append((Scope.CAMPAIGN, scope_target(Scope.CAMPAIGN, tenant, campaign)))
        # metadata copy -> bucket -> [(index, member, scope)]; metadata copy -> attempts asks
        self._buckets: dict[str, dict[str, list[tuple[int, Any, Scope]]]] = {}
        self._attempts: dict[str, list[_Ask]] = {}
        self._calls: list[list[_Ask]] = []
        self.numbers = 0

    def add(self, index: int, e164: str) -> None:
        """Ask about ``e164`` (answered under ``index``)."""
        self.numbers += 1
        meta = self._layout.meta_key(e164)
        buckets = self._buckets.setdefault(meta, {})
        for scope, target in self.targets:
            base, member = self._layout.locate(target, e164)
            buckets.setdefault(base, []).append((index, member, scope))
        if self._since is not None:
            key = self._layout.attempts_key(self._tenant, e164)
            self._attempts.setdefault(meta, []).append(
                (key, "a", [(index, self._since, Scope.TENANT)])
            )

    def reads(self) -> list[ViewRead]:
        """The scripts to send (pipelined), in order; :meth:`answers` reads their replies."""
        reads: list[ViewRead] = []
        self._calls = []
        for meta, buckets in self._buckets.items():
            asks: list[_Ask] = []
            for base, entries in buckets.items():
                for start in range(0, len(entries), self._per_script):
                    piece = entries[start : start + self._per_script]
                    asks.append((base, "s", piece))
                    if self._consents:
                        asks.append((base, "c", piece))
            asks += self._attempts.get(meta, [])
            for call in _scripts_of(asks, self._per_script):
                args: list[Any] = [self._with_node]
                for _key, op, entries in call:
                    args += [op, len(entries), *(arg for _i, arg, _s in entries)]
                reads.append(([meta, *(key for key, _op, _e in call)], args))
                self._calls.append(call)
        return reads

    def answers(self, replies: Sequence[Any], judge: Judge) -> dict[int, Found]:
        """What the view said of each number, from the replies to :meth:`reads`."""
        found: dict[int, Found] = {}
        for call, (server_time, node, flat, *replied) in zip(self._calls, replies, strict=True):
            why = judge(server_time, meta_hash(flat), node)
            now = _clock(server_time)
            for (_key, op, entries), reply in zip(call, replied, strict=True):
                for j, (index, _arg, scope) in enumerate(entries):
                    seen = found.setdefault(index, Found())
                    seen.now = now if seen.now is None else min(seen.now, now)
                    if why is not None:
                        seen.why = seen.why or why
                        continue
                    _take(seen, op, scope, reply, j)
        return found

    def untrusted(self, replies: Sequence[Any], judge: Judge) -> dict[int, str]:
        """The numbers (their indices) answered by a reply ``judge`` does not trust: why."""
        out: dict[int, str] = {}
        for call, (server_time, node, flat, *_r) in zip(self._calls, replies, strict=True):
            why = judge(server_time, meta_hash(flat), node)
            if why is not None:
                out.update((i, why) for _key, _op, entries in call for i, _a, _s in entries)
        return out


def _take(seen: Found, op: str, scope: Scope, reply: Any, j: int) -> None:
    """One key's reply about one number into what was found."""
    if op == "s":
        seen.opposed += [(scope, kind) for kind, hits in zip(KINDS, reply, strict=True) if hits[j]]
    elif op == "c":
        raw = reply[j]
        if raw is None:
            return
        withdrawn, consent = consent_facts(raw, scope)
        if withdrawn is not None:
            seen.withdrawn_ms[scope] = max(withdrawn, seen.withdrawn_ms.get(scope, withdrawn))
        if consent is not None:
            seen.consents.append(consent)
    else:  # attempts: member, score pairs
        seen.attempts = [datetime.fromtimestamp(float(s) / 1000, UTC) for s in reply[1::2]]


def consent_facts(raw: str | bytes, scope: Scope) -> tuple[int | None, ConsentFact | None]:
    """A consents hash's value for a list of ``scope``: the append time (ms) of the scope's
    latest consent withdrawal, and its latest consent (None: none, or a global list's)."""
    withdrawn, granted, expires, event_id, proof = parse_consent_value(raw)
    if granted is None or expires is None or scope is Scope.GLOBAL:
        return withdrawn, None
    ends = datetime.fromtimestamp(expires / 1000, UTC)
    return withdrawn, ConsentFact(scope, granted, ends, event_id, proof)


def _clock(server_time: Any) -> datetime:
    seconds, micros = int(server_time[0]), int(server_time[1])
    return datetime.fromtimestamp(seconds + micros / 1_000_000, UTC)


def _scripts_of(asks: list[_Ask], per_script: int) -> Iterator[list[_Ask]]:
    """Consecutive asks grouped into scripts of at most ``per_script`` arguments."""
    call: list[_Ask] = []
    size = 0
    for ask in asks:
        if call and size + len(ask[2]) > per_script:
            yield call
            call, size = [], 0
        call.append(ask)
        size += len(ask[2])
    if call:
        yield call
