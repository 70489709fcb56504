"""Admin actions and consents on their way to the number's log: the cutoff each carries, signed.

Lifts come only from the admin topic, consents only from the consents topic: each is written
by its own principal alone (Kafka ACLs), and each is forwarded, signed, to the log.

The cutoff of a lift is when the admin recorded it: the broker's append time on the admin
topic, or, for a replay of a dead letter, the cutoff that letter recorded (never the replay's
own, later time). It travels signed with the event (:mod:`schemas.authority`), so that
nobody but a worker can move it, and a dead letter of an admin action records it for its
replay. When the cutoff is unknown the lift is refused: the suppression stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.authority import (  # (a consent is authorised the way a lift is)
    authority_key,
    carried_cutoff,
    carried_headers,
    forward_headers,
    forwarded_cutoff,
    header,
    signed_before_cutoffs,
)
from schemas.events import Kind
from schemas.settings import Settings
from schemas.topics import REPLAY_OF

# The kinds only an authorised topic's principal may record, and the topic each comes from.
AUTHORISED_KINDS = frozenset({Kind.LIFT, Kind.CONSENT})

if TYPE_CHECKING:
    from streams.processor import SourceMessage

Headers = list[tuple[str, bytes]]


class AdminActions:
    """Cutoffs and signatures of admin actions, under the workers' authority key."""

    def __init__(self, settings: Settings) -> None:
        self._key = authority_key(settings)
        self._admin_topic = settings.admin_topic
        self._kinds = {settings.admin_topic: Kind.LIFT, settings.consents_topic: Kind.CONSENT}

    def authorised_kind(self, topic: str) -> Kind | None:
        """The kind ``topic`` authorises (lifts on the admin topic, consents on the consents
        topic); None for the log."""
        return self._kinds.get(topic)

    def misplaced(self, message: SourceMessage, kind: Kind) -> tuple[str, str] | None:
        """Why an authorised kind read on the other authorised topic is refused (an admin
        recording a consent, a consent recorder recording a lift); None when in place."""
        authorised = self._kinds.get(message.topic)
        if authorised is None or kind not in AUTHORISED_KINDS or kind is authorised:
            return None
        return (
            f"{kind.value}_not_authorised",
            f"a {kind.value} on {message.topic}, which authorises {authorised.value}s only: "
            + ("lifts are admin actions (`dnc lift`)" if kind is Kind.LIFT
               else "consents are recorded by a consent recorder (`dnc consent grant`)"),
        )  # fmt: skip

    def cutoff(self, message: SourceMessage) -> int | None:
        """The signed cutoff of an admin action (None for anything else, or when unknown).

        On the admin topic: the cutoff a replay carries (its dead letter's, signed), never a
        later one; else the broker's append time, unless the message is a replay that lost
        its cutoff. On the oppositions topic: the forwarded cutoff, if its signature verifies.
        """
        if message.topic not in self._kinds:
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

    def refusal(self, message: SourceMessage, kind: Kind = Kind.LIFT) -> tuple[str, str]:
        """Why a lift (or a consent) without a known, signed cutoff is refused."""
        if kind is Kind.CONSENT:
            if message.topic in self._kinds:
                return ("consent_without_cutoff", "a consent whose place in log order (when "
                        "the consents topic appended it) is unknown: record it again")  # fmt: skip
            return (
                "consent_not_authorised",
                "a consent on the oppositions topic without the worker's signature of it and "
                "its cutoff: consents are recorded by a consent recorder on the consents topic "
                "(`dnc consent grant`, the gateway's POST /v1/consents)",
            )
        if message.topic in self._kinds:
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
