"""Redis suppression view layout: keyed-hash members in bucketed integer sets.

* member = first 8 bytes of BLAKE2b(view key, target + E.164) as a positive int64, so
  Redis stores each number as an intset entry (8 bytes) and never in clear;
* a bucket of a list, ``dnc:v1:{target}:{bucket}`` (bucket from the next 4 bytes of the
  same hash, so each key stays small and keeps its compact encoding), is a family of keys,
  one letter after the bucket: a set per suppression kind (``r`` refusal, ``o``
  opposition, ``w`` consent withdrawn, ``e`` erasure: a suppressed number is a member of
  the set of the kind in force, so a check tells which kind forbids the call at no cost in
  memory) and ``c``, a hash of the consents (member -> :func:`consent_value`);
* a tenant's attempts on a number, ``dnc:v1:{tenant}:a{member}``: a sorted set of attempt
  ids scored by their time (ms), for the per-number caps;
* ``dnc:v1:_meta`` (hash) is the view's contract with its readers (below).

**Sharded layout** (``DNC_VIEW_SHARDS`` > 0, the default on a Redis Cluster): a number's
shard is a keyed hash of its E.164 alone, and every key of the shard carries the same hash
tag, ``dnc:v1:{sN}:{target}:{bucket}`` and ``dnc:v1:{sN}:_meta``, so they live in one slot
of one node: a check is one round trip to one node, clock included. Each shard has its own
copy of the metadata (the worker writes them all), and a copy is only trusted on the node
that wrote it: ``node:P`` records the node's identity (``CLUSTER MYID``, or the server's
run id outside a cluster) when the worker rebuilt and vouched for P there. A replica promoted
after a failover has another identity: its copy (which may miss the last writes, replication
being asynchronous) fails closed until the worker has rebuilt and vouched again.

The metadata:

  - ``partitions``: how many partitions the oppositions topic has;
  - ``layout``: the fingerprint of the layout the worker writes with (a keyed hash of the
    view key and the bucket counts: equal layouts, equal fingerprints; it reveals nothing
    of the key);
  - ``ready:P``: partition P is fully materialised (set after a rebuild);
  - ``applied:P``: **applied-through** time of partition P, in milliseconds on the Redis
    server's clock: every message the log held for P when Redis's clock read that time is
    applied to the view. A reader compares it with Redis's clock (``TIME``), so no host's
    clock but Redis's is involved, and the promise holds whatever the other clocks say;
  - ``owner:P``: the worker that last vouched for P (for `dnc status`);
  - ``epoch:P``: a fencing token the worker changes at every vouch: a view restored from an
    older snapshot (or flushed) carries an older one, and the worker rebuilds before it
    vouches again;
  - ``fence:P``: the **owner's claim** on P, ``era:sequence:worker`` (see
    :func:`claim_token`). The sequence is the offset of a fence record the owner appended
    to Kafka through P's transactional producer, after fencing the previous owner's
    (``streams/ownership.py``): later owners have larger sequences, and a fenced owner can
    never get a new one. Every write for P (members, expiry removals, readiness, vouches) is
    a script that checks it, so a worker that lost P cannot write after the new owner has
    claimed it; a claim with a smaller sequence is refused. The claim also proves that the
    view was not lost since a rebuild began: a flush or an empty restart deletes it, and the
    rebuild is not marked ready;
  - ``instance:P``: the Redis instance (its run id: a restart, a restore or a promoted
    replica has another) P was rebuilt and marked ready on; a vouch on another instance is
    refused, and so is a mark if the instance changed since the claim;
  - ``writes:P``: how many write scripts the owner ran for P since its claim: a mark or a
    vouch is refused when it is not the count the owner last saw (a copy restored or
    swapped in since lacks writes, whatever its claims and run id say);
  - ``next:P``: the first offset of P the owner has not applied yet, as of its last vouch
    (another partition's owner waits for it to pass an event it forwarded to P).

  The hash vanishes with the data when Redis is flushed or restarts empty, and an older
  snapshot brings back older applied-through times: either way checks fail closed until
  the worker has rebuilt the view and caught up.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.vocabulary import GLOBAL_TARGET

if TYPE_CHECKING:
    from schemas.settings import Settings
    from schemas.tenants import TenantDirectory

# Lua: the identity of the node running a script (sharded view): its cluster node id, or
# its run id outside a cluster. A replica promoted by a failover has another one.
LUA_NODE_ID = """
local ok, node = pcall(redis.call, 'CLUSTER', 'MYID')
if not ok then node = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') end
"""

# Lua: the run id of the Redis instance running a script (a restart, a restore from a
# snapshot or a promoted replica has another).
LUA_RUN_ID = """
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
"""

VIEW_PREFIX = "dnc:v1"
META_KEY = f"{VIEW_PREFIX}:_meta"
META_PARTITIONS = "partitions"
META_LAYOUT = "layout"
_INT63 = (1 << 63) - 1


def ready_field(partition: int) -> str:
    """Field of :data:`META_KEY` set once ``partition`` is fully materialised."""
    return f"ready:{partition}"


def applied_field(partition: int) -> str:
    """Field of :data:`META_KEY`: applied-through time of ``partition`` (ms, Redis clock)."""
    return f"applied:{partition}"


def epoch_field(partition: int) -> str:
    """Field of :data:`META_KEY`: the fencing token of the worker's last write of ``partition``."""
    return f"epoch:{partition}"


def node_field(partition: int) -> str:
    """Field of a shard's metadata: the node that holds the copy the worker vouched for."""
    return f"node:{partition}"


# The key families of a bucket (see the module): a suppression set per kind, the consents.
FAMILY_OF_KIND = {"refusal": "r", "opposition": "o", "consent_withdrawn": "w", "erasure": "e"}
KIND_OF_FAMILY = {letter: kind for kind, letter in FAMILY_OF_KIND.items()}
CONSENTS_FAMILY = "c"


def suppression_keys(base: str) -> list[str]:
    """The suppression sets of a bucket (one per kind), in :data:`FAMILY_OF_KIND`'s order."""
    return [base + letter for letter in FAMILY_OF_KIND.values()]


def consent_value(
    withdrawn_ms: int | None,
    granted_ms: int | None = None,
    expires_ms: int | None = None,
    event_id: str = "",
    proof_ref: str = "",
) -> str:
    """A number's field in a consents hash: the append time of the scope's latest consent
    withdrawal, and its latest consent (when appended, when it ends, its id and proof)."""

    def text(value: int | None) -> str:
        return "" if value is None else str(value)

    return "|".join((text(withdrawn_ms), text(granted_ms), text(expires_ms), event_id,
                     proof_ref))  # fmt: skip


def parse_consent_value(
    raw: str | bytes,
) -> tuple[int | None, int | None, int | None, str, str]:
    """:func:`consent_value`'s fields back: (withdrawn_ms, granted_ms, expires_ms, event id,
    proof reference)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    withdrawn, granted, expires, event_id, proof = (text.split("|", 4) + [""] * 5)[:5]

    def number(value: str) -> int | None:
        return int(value) if value else None

    return number(withdrawn), number(granted), number(expires), event_id, proof


def fence_field(partition: int) -> str:
    """Field of the metadata: the current owner's claim on ``partition`` (see the module)."""
    return f"fence:{partition}"


def instance_field(partition: int) -> str:
    """Field of the metadata: the Redis instance ``partition`` was marked ready on."""
    return f"instance:{partition}"


def writes_field(partition: int) -> str:
    """Field of the metadata: how many write scripts the owner ran for ``partition`` since
    its claim (a view that lost some since has a smaller count than its owner's)."""
    return f"writes:{partition}"


def covered_field(partition: int) -> str:
    """Field of the metadata: the offset of the last record of ``partition``'s table
    changelog whose state the view held at the owner's last vouch (a restarted owner adopts
    the view instead of rebuilding it when its table holds nothing past it)."""
    return f"covered:{partition}"


def frontier_field(partition: int) -> str:
    """Field of the metadata: the first offset of ``partition`` not applied at the last vouch."""
    return f"next:{partition}"


def claim_token(era: str, sequence: int, worker_id: str) -> str:
    """An owner's claim on a partition, as the view's scripts compare them.

    ``era``: the identity of the fence topic the sequence counts in (its topic id: a
    recreated topic counts from 0 again, and a claim of another era is not compared);
    ``sequence``: the offset of the owner's fence record.
    """
    if ":" in era:
        raise ValueError("the era must not contain ':'")
    return f"{era}:{sequence}:{worker_id}"


def owner_field(partition: int) -> str:
    """Field of :data:`META_KEY`: the worker that last vouched for ``partition``."""
    return f"owner:{partition}"


@dataclass(frozen=True, slots=True)
class ViewSlot:
    """Where one (target, number) lives in Redis."""

    key: str
    member: int


class ViewLayout:
    """Computes view slots; view key and bucket counts are settings (changing = rebuild)."""

    def __init__(
        self,
        view_key: bytes,
        default_buckets: int,
        tenant_buckets: Mapping[str, int] | None = None,
        shards: int = 0,
    ) -> None:
        if not view_key:
            raise ValueError("the view key must not be empty")
        # BLAKE2b keys are at most 64 bytes; longer secrets are hashed down first.
        self._key = view_key if len(view_key) <= 64 else hashlib.blake2b(view_key).digest()
        self._default_buckets = default_buckets
        self._tenant_buckets = dict(tenant_buckets or {})
        self.shards = shards
        self._shard_hash = hashlib.blake2b(b"shard\x1f", key=self._key, digest_size=4)
        # Per target: the keyed hash already fed with "target\x1f", the key prefix and the
        # bucket count. Copying a started hash skips the key block and the string work:
        # a bulk check hashes every number once per scope.
        self._targets: dict[str, tuple[Any, str, int]] = {}

    def buckets_for(self, target: str) -> int:
        """Bucket count of a target (a tenant's campaigns share the tenant's count)."""
        if target == GLOBAL_TARGET:
            return self._default_buckets
        tenant = target.split("/", 1)[0]
        return self._tenant_buckets.get(tenant, self._default_buckets)

    def slot(self, target: str, phone_e164: str) -> ViewSlot:
        """The Redis key and integer member for ``phone_e164`` in ``target``.

        BLAKE2b keyed with the view key over ``target \x1f E.164``, 16 bytes: the first 8
        (as a positive int64) are the member, the next 4 pick the bucket.
        """
        key, member = self.locate(target, phone_e164)
        return ViewSlot(key=key, member=member)

    def locate(self, target: str, phone_e164: str) -> tuple[str, int]:
        """:meth:`slot` as a plain ``(key, member)`` pair (bulk checks make millions)."""
        prepared = self._targets.get(target)
        if prepared is None:
            prepared = self._prepare(target)
        started, prefix, buckets = prepared
        hasher = started.copy()
        hasher.update(phone_e164.encode())
        digest = hasher.digest()
        member = int.from_bytes(digest[:8], "big") & _INT63
        bucket = int.from_bytes(digest[8:12], "big") % buckets
        if self.shards:
            return f"{self.shard_prefix(self.shard_of(phone_e164))}{prefix}{bucket}", member
        return f"{VIEW_PREFIX}:{prefix}{bucket}", member

    def locator(self, target: str) -> Callable[[str], tuple[str, int]]:
        """:meth:`locate` for one ``target``, as a function of the number: a bulk check
        locates thousands of numbers per list, without the lookups of each call."""
        if self.shards:
            return functools.partial(self.locate, target)
        started, prefix, buckets = self._targets.get(target) or self._prepare(target)
        copy, from_bytes, head = started.copy, int.from_bytes, f"{VIEW_PREFIX}:{prefix}"

        def locate(phone_e164: str) -> tuple[str, int]:
            hasher = copy()
            hasher.update(phone_e164.encode())
            digest = hasher.digest()
            bucket = from_bytes(digest[8:12], "big") % buckets
            return f"{head}{bucket}", from_bytes(digest[:8], "big") & _INT63

        return locate

    def shard_of(self, phone_e164: str) -> int:
        """The number's shard (sharded layout): the same for all its lists."""
        hasher = self._shard_hash.copy()
        hasher.update(phone_e164.encode())
        return int.from_bytes(hasher.digest(), "big") % self.shards

    @staticmethod
    def shard_prefix(shard: int) -> str:
        """``dnc:v1:{sN}:``: the hash tag keeps a shard's keys in one Redis Cluster slot."""
        return f"{VIEW_PREFIX}:{{s{shard}}}:"

    def meta_key(self, phone_e164: str) -> str:
        """The metadata copy a check of ``phone_e164`` reads (with the number's members)."""
        if not self.shards:
            return META_KEY
        return f"{self.shard_prefix(self.shard_of(phone_e164))}_meta"

    def attempts_key(self, tenant: str, phone_e164: str) -> str:
        """The sorted set of ``tenant``'s attempts on ``phone_e164`` (ids scored by ms)."""
        return self.attempts_key_at(*self.locate(tenant, phone_e164))

    @staticmethod
    def attempts_key_at(tenant_key: str, member: int) -> str:
        """:meth:`attempts_key` from the number's slot on the tenant's list (key, member)."""
        return f"{tenant_key.rsplit(':', 1)[0]}:a{member}"

    def meta_key_of(self, key: str) -> str:
        """The metadata copy in the slot of the set ``key`` (its writes are fenced there)."""
        if not self.shards:
            return META_KEY
        return key[: key.index("}:") + 2] + "_meta"

    def meta_keys(self) -> list[str]:
        """Every copy of the metadata: one per shard, or the one hash when not sharded."""
        if not self.shards:
            return [META_KEY]
        return [f"{self.shard_prefix(shard)}_meta" for shard in range(self.shards)]

    def _prepare(self, target: str) -> tuple[Any, str, int]:
        if len(self._targets) >= 4096:  # campaigns come and go: keep the cache bounded
            self._targets.clear()
        started = hashlib.blake2b(f"{target}\x1f".encode(), key=self._key, digest_size=16)
        prepared = (started, f"{target}:", self.buckets_for(target))
        self._targets[target] = prepared
        return prepared

    @property
    def fingerprint(self) -> str:
        """Identifies the layout (key and bucket counts) without revealing the key."""
        buckets = ",".join(f"{t}={n}" for t, n in sorted(self._tenant_buckets.items()))
        text = f"dnc-view-layout\x1f{VIEW_PREFIX}\x1f{self._default_buckets}\x1f{buckets}"
        if self.shards:  # (unsharded: the fingerprint of the layout before shards existed)
            text += f"\x1fshards={self.shards}"
        text += "\x1ffamilies=2"  # sets per kind and consents (a view without them: rebuilt)
        return hashlib.blake2b(text.encode(), key=self._key, digest_size=8).hexdigest()

    def target_of(self, key: str) -> str | None:
        """The target of a suppression set's key; None for a metadata hash."""
        rest = key[len(VIEW_PREFIX) + 1 :]
        if self.shards and rest.startswith("{"):
            rest = rest.split("}:", 1)[-1]
        if rest == "_meta":
            return None
        return rest.rsplit(":", 1)[0]

    def pattern(self) -> str:
        """SCAN pattern matching every suppression set (not the meta keys)."""
        return f"{VIEW_PREFIX}:*"


def view_layout(settings: Settings, tenants: TenantDirectory) -> ViewLayout:
    """The view layout every writer and reader derives from the same settings."""
    overrides = {
        name: cfg.view_buckets
        for name in tenants.names
        if (cfg := tenants.get(name)).view_buckets is not None
    }
    return ViewLayout(
        settings.view_key.get_secret_value().encode(),
        settings.view_buckets,
        overrides,
        shards=settings.shards,
    )


def target_pattern(target_glob: str, sharded: bool) -> str:
    """SCAN pattern of the suppression sets of the targets matching ``target_glob`` (not
    their consents hashes nor attempts)."""
    sets = f"{target_glob}:*[{''.join(FAMILY_OF_KIND.values())}]"
    return f"{VIEW_PREFIX}:{{s*}}:{sets}" if sharded else f"{VIEW_PREFIX}:{sets}"


def consents_pattern(target_glob: str, sharded: bool) -> str:
    """SCAN pattern of the consents hashes (``...:{bucket}c``) of the targets matching
    ``target_glob`` (a tenant's attempts keys, ``...:a{member}``, end in a digit)."""
    hashes = f"{target_glob}:*{CONSENTS_FAMILY}"
    return f"{VIEW_PREFIX}:{{s*}}:{hashes}" if sharded else f"{VIEW_PREFIX}:{hashes}"
