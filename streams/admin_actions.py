"""Admin actions on their way to the number's log: the cutoff each one carries, signed.

The cutoff of a lift is when the admin recorded it: the broker's append time on the admin
topic, or, for a replay of a dead letter, the cutoff that letter recorded (never the replay's
own, later time). It travels signed with the event (:mod:`schemas.authority`), so that
nobody but a worker can move it, and a dead letter of an admin action records it for its
replay. When the cutoff is unknown the lift is refused: the suppression stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.authority import (
    authority_key,
    carried_cutoff,
    carried_headers,
    forward_headers,
    forwarded_cutoff,
    header,
    signed_before_cutoffs,
)
from schemas.settings import Settings
from schemas.topics import REPLAY_OF

if TYPE_CHECKING:
    from streams.processor import SourceMessage

Headers = list[tuple[str, bytes]]


class AdminActions:
    """Cutoffs and signatures of admin actions, under the workers' authority key."""

    def __init__(self, settings: Settings) -> None:
        self._key = authority_key(settings)
        self._admin_topic = settings.admin_topic

    def cutoff(self, message: SourceMessage) -> int | None:
        """The signed cutoff of an admin action (None for anything else, or when unknown).

        On the admin topic: the cutoff a replay carries (its dead letter's, signed), never a
        later one; else the broker's append time, unless the message is a replay that lost
        its cutoff. On the oppositions topic: the forwarded cutoff, if its signature verifies.
        """
        if message.topic != self._admin_topic:
            return forwarded_cutoff(self._key, message.value, message.headers)
        carried = carried_cutoff(self._key, message.value, message.headers)
        appended = message.appended_ms
        if carried is not None:
            return carried if appended is None else min(carried, appended)
        if header(message.headers, REPLAY_OF) is not None:
            return None
        return appended

    def forward_headers(self, message: SourceMessage, cutoff: int) -> Headers:
        """The cutoff and signature headers of ``message`` forwarded to the oppositions topic."""
        return forward_headers(self._key, message.value, cutoff)

    def dead_letter_headers(self, message: SourceMessage) -> Headers:
        """What a dead letter of ``message`` records for its replay: an admin action's
        cutoff, signed (nothing for anything else)."""
        cutoff = self.cutoff(message)
        return [] if cutoff is None else carried_headers(self._key, message.value, cutoff)

    def refusal(self, message: SourceMessage) -> tuple[str, str]:
        """Why a lift without a known, signed cutoff is refused: (reason, detail)."""
        if message.topic == self._admin_topic:
            return (
                "lift_without_cutoff",
                "a lift whose cutoff (when the admin recorded it) is unknown: a replay without "
                "the signed cutoff its dead letter recorded, or an admin topic without "
                "message.timestamp.type=LogAppendTime. Issue the lift again (`dnc lift`) if it "
                "still stands",
            )
        if signed_before_cutoffs(message.headers):
            return (
                "lift_not_authorised",
                "a lift signed by a worker that did not sign its cutoff (forwarded during an "
                "upgrade): issue it again (`dnc lift`) if it still stands",
            )
        return (
            "lift_not_authorised",
            "a lift on the oppositions topic without the worker's signature of it and its "
            "cutoff: lifts are admin actions and go to the admin topic (`dnc lift`, the "
            "gateway's DELETE)",
        )
