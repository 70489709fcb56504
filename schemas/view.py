"""Redis suppression view layout: keyed-hash members in bucketed integer sets.

* member = first 8 bytes of BLAKE2b(view key, target + E.164) as a positive int64, so
  Redis stores each number as an intset entry (8 bytes) and never in clear;
* key = ``dnc:v1:{target}:{bucket}``, bucket from the next 4 bytes of the same hash,
  so each set stays under ``set-max-intset-entries`` and keeps the compact encoding;
* ``dnc:v1:_meta`` (hash) says which partitions are materialised (``ready:P``) and how
  many partitions there are; ``dnc:v1:_hb:P`` (string with a TTL) is the heartbeat of the
  worker that owns partition P. Both vanish with the data when Redis is flushed, which
  is what makes a check fail closed until the view is rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.events import GLOBAL_TARGET

VIEW_PREFIX = "dnc:v1"
META_KEY = f"{VIEW_PREFIX}:_meta"
META_PARTITIONS = "partitions"
_INT63 = (1 << 63) - 1


def heartbeat_key(partition: int) -> str:
    """Key of the heartbeat of the worker owning ``partition`` (expires on its own)."""
    return f"{VIEW_PREFIX}:_hb:{partition}"


def ready_field(partition: int) -> str:
    """Field of :data:`META_KEY` set once ``partition`` is fully materialised."""
    return f"ready:{partition}"


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

    def buckets_for(self, target: str) -> int:
        """Bucket count of a target (a tenant's campaigns share the tenant's count)."""
        if target == GLOBAL_TARGET:
            return self._default_buckets
        tenant = target.split("/", 1)[0]
        return self._tenant_buckets.get(tenant, self._default_buckets)

    def slot(self, target: str, phone_e164: str) -> ViewSlot:
        """The Redis key and integer member for ``phone_e164`` in ``target``."""
        digest = hashlib.blake2b(
            f"{target}\x1f{phone_e164}".encode(), key=self._key, digest_size=16
        ).digest()
        member = int.from_bytes(digest[:8], "big") & _INT63
        bucket = int.from_bytes(digest[8:12], "big") % self.buckets_for(target)
        return ViewSlot(key=f"{VIEW_PREFIX}:{target}:{bucket}", member=member)

    def pattern(self) -> str:
        """SCAN pattern matching every suppression set (not the meta keys)."""
        return f"{VIEW_PREFIX}:*"
