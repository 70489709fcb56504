"""What a reference-list sink is given and what it answers.

A sink receives a batch of changes in offset order and answers, for each, one of:

* ``delivered``: the client's reference list acknowledged it (the offset may be committed);
* ``rejected``: the sink refused it for good (a 4xx): it goes to the dead-letter topic with
  the response, and is then committed;
* ``retry``: not acknowledged (sink down, timeout, 5xx): the sync keeps it and tries again
  with backoff; nothing after it *for the same number* may have been delivered, so each
  number's changes reach the reference list in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from schemas.state import SuppressionChange


@dataclass(frozen=True)
class Delivery:
    """One change read from the suppressions topic, on its way to a sink."""

    change: SuppressionChange
    body: bytes  # the record's value, exactly as the worker wrote it
    key: bytes | None
    partition: int
    offset: int

    @property
    def ordering_key(self) -> str:
        """Changes with the same ordering key must arrive in offset order."""
        return f"{self.change.target}|{self.change.phone_e164}"

    @property
    def idempotency_key(self) -> str:
        """Stable for one change whatever the retry or replay (no number in clear)."""
        c = self.change
        digest = hashlib.blake2b(
            f"{c.target}|{c.phone_e164}|{c.version}|{c.changed_at.isoformat()}".encode(),
            digest_size=16,
        )
        return digest.hexdigest()


class Verdict(StrEnum):
    """What became of one change at the sink."""

    DELIVERED = "delivered"
    REJECTED = "rejected"
    RETRY = "retry"


@dataclass(frozen=True)
class Result:
    """The sink's answer for one change; ``kind`` and ``detail`` explain a failure."""

    verdict: Verdict
    kind: str | None = None  # unavailable, timeout, server_error, rejected
    detail: str | None = None  # for the log and the dead-letter headers (never the number)

    @classmethod
    def delivered(cls) -> Result:
        """Acknowledged by the reference list."""
        return cls(Verdict.DELIVERED)


class Sink(Protocol):
    """A tenant's reference list."""

    name: str  # "postgres" or "webhook": the metrics' sink label

    def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        """One attempt at each change of ``batch``; one result per change, same order."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
