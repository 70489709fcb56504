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
from consumers.readiness import ViewRead, meta_hash, oldest_applied_ms
from schemas.view import FAMILY_OF_KIND, ViewLayout, parse_consent_value
from schemas.vocabulary import Kind, Scope, scope_target

KINDS = [Kind(name) for name in FAMILY_OF_KIND]  # READ_VIEW's 'k' bits, in this order
# A 'k' reply's bit mask -> the kinds it names (masks are small: every one precomputed).
KINDS_OF_MASK = [
    tuple(kind for bit, kind in enumerate(KINDS) if mask >> bit & 1)
    for mask in range(1 << len(KINDS))
]

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
    oldest_ms: int | None = None  # the view's oldest applied-through time then (trusted)

    def facts(self) -> ViewFacts:
        """The facts of the dial decision."""
        return ViewFacts(self.opposed, self.consents, self.withdrawn_ms, self.attempts)


# One key asked in a read: (key, operation, the list's position in ``targets`` (-1: the
# tenant's attempts), [(number's slot, argument)]).
_Ask = tuple[str, str, int, list[tuple[int, Any]]]


class ViewQuestions:
    """The reads that answer numbers of ``tenant`` (and ``campaign``).

    ``consents``: read the consents hashes; ``attempts_since_ms``: read the tenant's
    attempts on each number since then (None: not at all). At most ``per_script`` members
    per script (a script holds its Redis node meanwhile). ``trust``: the reader's layout
    fingerprint and staleness bound, for the script to judge the view by (a view it finds
    trusted sends no metadata back); None: the metadata always comes back.
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
        trust: tuple[str, float] | None = None,
    ) -> None:
        self._layout = layout
        self._consents = consents
        self._since = attempts_since_ms
        self._head: list[Any] = [with_node, *(trust or ("", 0))]
        self._per_script = per_script
        self.targets = list(_targets(tenant, campaign))
        self._tenant_at = 1  # the tenant's list: its slot gives the attempts key
        # metadata copy -> bucket -> [(slot, member)]; a bucket's list position;
        # metadata copy -> attempts asks
        self._buckets: dict[str, dict[str, list[tuple[int, Any]]]] = {}
        self._position: dict[str, int] = {}
        self._attempts: dict[str, list[_Ask]] = {}
        self._calls: list[list[_Ask]] = []
        self.indices: list[int] = []  # slot -> the index a number was added under

    @property
    def numbers(self) -> int:
        """How many numbers were asked about."""
        return len(self.indices)

    def add(self, index: int, e164: str) -> None:
        """Ask about ``e164`` (answered under ``index``)."""
        self.add_many([(index, e164)])

    def add_many(self, numbers: Sequence[tuple[int, str]]) -> None:
        """Ask about each ``(index, e164)`` of ``numbers``, a list at a time."""
        first = len(self.indices)
        self.indices += [index for index, _e164 in numbers]
        meta_key = self._layout.meta_key
        metas = [meta_key(e164) for _index, e164 in numbers]
        for position, (_scope, target) in enumerate(self.targets):
            locate = self._layout.locator(target)
            attempts = position == self._tenant_at and self._since is not None
            for slot, (_index, e164), meta in zip(
                range(first, first + len(numbers)), numbers, metas, strict=True
            ):
                base, member = locate(e164)
                buckets = self._buckets.get(meta)
                if buckets is None:
                    buckets = self._buckets[meta] = {}
                entries = buckets.get(base)
                if entries is None:
                    entries = buckets[base] = []
                    self._position[base] = position
                entries.append((slot, member))
                if attempts:
                    key = self._layout.attempts_key_at(base, member)
                    self._attempts.setdefault(meta, []).append(
                        (key, "a", -1, [(slot, self._since)])
                    )

    def reads(self) -> list[ViewRead]:
        """The scripts to send (pipelined), in order; :meth:`answers` reads their replies."""
        reads: list[ViewRead] = []
        self._calls = []
        for meta, buckets in self._buckets.items():
            asks: list[_Ask] = []
            for base, entries in buckets.items():
                position = self._position[base]
                for start in range(0, len(entries), self._per_script):
                    piece = entries[start : start + self._per_script]
                    asks.append((base, "k", position, piece))
                    if self._consents:
                        asks.append((base, "c", position, piece))
            asks += self._attempts.get(meta, [])
            for call in _scripts_of(asks, self._per_script):
                args: list[Any] = list(self._head)
                for _key, op, _position, entries in call:
                    args += (op, len(entries))
                    args += [arg for _slot, arg in entries]
                reads.append(([meta, *(ask[0] for ask in call)], args))
                self._calls.append(call)
        return reads

    def answers(self, replies: Sequence[Any], judge: Judge) -> ViewAnswers:
        """What the view said of each number, from the replies to :meth:`reads`."""
        found = ViewAnswers(self.indices, [scope for scope, _target in self.targets])
        masks, whys, nows, olds = found.masks, found.why, found.now, found.oldest_ms
        for call, (server_time, node, flat, *replied) in zip(self._calls, replies, strict=True):
            # An integer: the script judged the view trusted by the reader's rules (READ_VIEW)
            meta = flat if isinstance(flat, int) else meta_hash(flat)
            why = None if isinstance(flat, int) else judge(server_time, meta, node)
            oldest = oldest_applied_ms(meta, server_time) if why is None else None
            now = _clock(server_time)
            for (_key, op, position, entries), reply in zip(call, replied, strict=True):
                for slot, _arg in entries:
                    seen = nows[slot]
                    if seen is None or now < seen:
                        nows[slot] = now
                    if why is not None and whys[slot] is None:
                        whys[slot] = why
                    held = olds[slot]
                    if oldest is not None and (held is None or oldest < held):
                        olds[slot] = oldest
                if why is not None:
                    continue
                if op == "k":
                    row = masks[position]
                    for (slot, _arg), mask in zip(entries, reply, strict=True):
                        if mask:
                            row[slot] = mask
                elif op == "c":
                    for (slot, _arg), raw in zip(entries, reply, strict=True):
                        if raw is not None:
                            found.consents.setdefault(slot, []).append((position, raw))
                else:
                    found.attempts[entries[0][0]] = reply
        return found


class ViewAnswers:
    """What the view said of the numbers of :class:`ViewQuestions`, by slot (the order they
    were added in; ``indices[slot]``: the index each was added under)."""

    def __init__(self, indices: list[int], scopes: list[Scope]) -> None:
        self.indices = indices
        self.scopes = scopes  # the lists asked, broadest first
        self.masks = [[0] * len(indices) for _ in scopes]  # per list: the kinds' bits
        self.why: list[str | None] = [None] * len(indices)
        self.now: list[datetime | None] = [None] * len(indices)
        self.oldest_ms: list[int | None] = [None] * len(indices)
        self.consents: dict[int, list[tuple[int, Any]]] = {}  # slot -> [(list, raw field)]
        self.attempts: dict[int, Any] = {}

    def found(self, slot: int) -> Found:
        """Everything known of the number in ``slot``."""
        seen = Found(why=self.why[slot], now=self.now[slot], oldest_ms=self.oldest_ms[slot])
        if seen.why is not None:
            return seen
        for scope, row in zip(self.scopes, self.masks, strict=True):
            if row[slot]:
                _take(seen, "k", scope, row, slot)
        for position, raw in sorted(self.consents.get(slot, ()), key=lambda c: c[0]):
            _take(seen, "c", self.scopes[position], [raw], 0)
        if slot in self.attempts:
            _take(seen, "a", Scope.TENANT, self.attempts[slot], 0)
        return seen


class NumberRead:
    """The one :data:`READ_VIEW` call that answers a single number of ``tenant`` (and
    ``campaign``): :class:`ViewQuestions` for one number, without the grouping by bucket and
    script that many numbers need (a check's hot path). Built once per tenant and campaign;
    the options are :class:`ViewQuestions`'s (``attempts``: read the tenant's attempts)."""

    def __init__(
        self,
        layout: ViewLayout,
        tenant: str,
        campaign: str | None,
        *,
        consents: bool,
        attempts: bool,
        with_node: int,
        trust: tuple[str, float],
    ) -> None:
        self._layout = layout
        self._targets = [
            (scope, layout.locator(target)) for scope, target in _targets(tenant, campaign)
        ]
        self._head: list[Any] = [with_node, *trust]
        self._consents = consents
        self._attempts = attempts
        self._ops: list[tuple[str, Scope]] = []  # the replies after the metadata, in order
        for scope, _locate in self._targets:
            self._ops.append(("k", scope))
            if consents:
                self._ops.append(("c", scope))
        if attempts:
            self._ops.append(("a", Scope.TENANT))

    def call(self, e164: str, attempts_since_ms: int | None) -> ViewRead:
        """The script's keys and arguments for ``e164``."""
        keys = [self._layout.meta_key(e164)]
        args = list(self._head)
        attempts = ""
        for scope, locate in self._targets:
            base, member = locate(e164)
            keys.append(base)
            args += ("k", 1, member)
            if self._consents:
                keys.append(base)
                args += ("c", 1, member)
            if scope is Scope.TENANT and self._attempts:
                attempts = self._layout.attempts_key_at(base, member)
        if self._attempts:
            keys.append(attempts)
            args += ("a", 1, attempts_since_ms)
        return keys, args

    def found(self, reply: Sequence[Any], judge: Judge) -> Found:
        """What the view said of the number, from the script's reply."""
        server_time, node, flat, *replied = reply
        seen = Found(now=_clock(server_time))
        if isinstance(flat, int):  # the script judged the view trusted by the reader's rules
            seen.oldest_ms = flat
        else:
            meta = meta_hash(flat)
            seen.why = judge(server_time, meta, node)
            if seen.why is not None:
                return seen
            seen.oldest_ms = oldest_applied_ms(meta, server_time)
        for (op, scope), answer in zip(self._ops, replied, strict=True):
            _take(seen, op, scope, answer, 0)
        return seen


def _targets(tenant: str, campaign: str | None) -> Iterator[tuple[Scope, str]]:
    """The lists a number of ``tenant`` (and ``campaign``) is checked on, broadest first."""
    yield Scope.GLOBAL, scope_target(Scope.GLOBAL, tenant, None)
    yield Scope.TENANT, tenant
    if campaign:
        yield Scope.CAMPAIGN, scope_target(Scope.CAMPAIGN, tenant, campaign)


def _take(seen: Found, op: str, scope: Scope, reply: Any, j: int) -> None:
    """One key's reply about one number into what was found."""
    if op == "k":
        mask = reply[j]
        if mask:
            seen.opposed += [(scope, kind) for kind in KINDS_OF_MASK[mask]]
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
        if call and size + len(ask[3]) > per_script:
            yield call
            call, size = [], 0
        call.append(ask)
        size += len(ask[3])
    if call:
        yield call
