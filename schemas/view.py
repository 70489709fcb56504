"""Redis suppression view layout: keyed-hash members in bucketed integer sets.

* member = first 8 bytes of BLAKE2b(view key, target + E.164) as a positive int64, so
  Redis stores each number as an intset entry (8 bytes) and never in clear;
* key = ``dnc:v1:{target}:{bucket}``, bucket from the next 4 bytes of the same hash,
  so each set stays under ``set-max-intset-entries`` and keeps the compact encoding;
* ``dnc:v1:_meta`` (hash) is the view's contract with its readers:

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
    vouches again.

  The hash vanishes with the data when Redis is flushed or restarts empty, and an older
  snapshot brings back older applied-through times: either way checks fail closed until
  the worker has rebuilt the view and caught up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.events import GLOBAL_TARGET

if TYPE_CHECKING:
    from schemas.settings import Settings
    from schemas.tenants import TenantDirectory

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
        self, view_key: bytes, default_buckets: int, tenant_buckets: Mapping[str, int] | None = None
    ) -> None:
        if not view_key:
            raise ValueError("the view key must not be empty")
        # BLAKE2b keys are at most 64 bytes; longer secrets are hashed down first.
        self._key = view_key if len(view_key) <= 64 else hashlib.blake2b(view_key).digest()
        self._default_buckets = default_buckets
        self._tenant_buckets = dict(tenant_buckets or {})
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
        return f"{prefix}{int.from_bytes(digest[8:12], 'big') % buckets}", member

    def _prepare(self, target: str) -> tuple[Any, str, int]:
        if len(self._targets) >= 4096:  # campaigns come and go: keep the cache bounded
            self._targets.clear()
        started = hashlib.blake2b(f"{target}\x1f".encode(), key=self._key, digest_size=16)
        prepared = (started, f"{VIEW_PREFIX}:{target}:", self.buckets_for(target))
        self._targets[target] = prepared
        return prepared

    @property
    def fingerprint(self) -> str:
        """Identifies the layout (key and bucket counts) without revealing the key."""
        buckets = ",".join(f"{t}={n}" for t, n in sorted(self._tenant_buckets.items()))
        text = f"dnc-view-layout\x1f{VIEW_PREFIX}\x1f{self._default_buckets}\x1f{buckets}"
        return hashlib.blake2b(text.encode(), key=self._key, digest_size=8).hexdigest()

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
        settings.view_key.get_secret_value().encode(), settings.view_buckets, overrides
    )
