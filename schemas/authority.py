"""Who may end a suppression, and which suppressions: only an admin, and only those before.

Admin actions (lifts) are produced to the admin topic, which only the admin principal may
write (Kafka ACLs). A number's history must still have one log order, so the worker
forwards each admin action to the oppositions topic, on the partition of the number's
canonical key, with two headers: its **cutoff** (``dnc.appended-at``: when the broker
appended the action to the admin topic, ms, LogAppendTime) and a **signature**
(``dnc.authority``: ``v2:`` and the hex HMAC-SHA256, under the authority key, of the
cutoff and the event's bytes). A lift ends only the suppressions appended before its
cutoff. A lift on the oppositions topic whose signature does not verify (an agent desktop,
or anything holding its credentials, writing a lift; a forwarded lift whose cutoff was
stripped or changed) is dead-lettered as ``lift_not_authorised``, whatever its body
claims. Signatures of the first version covered the bytes only: a lift forwarded with one
(in flight during the upgrade) is refused the same way, and an admin issues it again (the
suppression stays meanwhile: when in doubt, suppressed). A signed lift copied back to the
oppositions topic changes nothing either: the state remembers the lifts it applied.

A dead-lettered admin action keeps its cutoff: the worker records it in the dead letter
(``dnc.cutoff`` and ``dnc.cutoff.authority``, signed for that purpose only) and
`dnc dead-letters replay` carries both into the record it re-publishes to the admin topic.
The worker forwards a replay with the cutoff it carries, never its own later append time;
a replayed lift without a valid carried cutoff is dead-lettered as ``lift_without_cutoff``.

The authority key (``DNC_AUTHORITY_KEY``) is the workers' secret alone: gateways and dialers
hold the view key, and must not be able to sign. The worker refuses to start without it,
unless ``DNC_ALLOW_DEVELOPMENT_AUTHORITY_KEY=true`` lets it derive one from the view key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from schemas.errors import ConfigError
from schemas.settings import Settings

Headers = Sequence[tuple[str, bytes | None]] | None

AUTHORITY_HEADER = "dnc.authority"  # "v2:" + hex HMAC of the cutoff and the value
FORWARDED_FROM_HEADER = "dnc.forwarded-from"  # topic/partition/offset the worker read it at
# When the broker appended the admin action to the admin topic (ms, LogAppendTime): a lift
# ends only the suppressions appended to the log before that, not those appended while it
# was being forwarded.
APPENDED_AT_HEADER = "dnc.appended-at"
# The cutoff of a dead-lettered admin action, and its signature: in the dead letter, then
# in the record `dnc dead-letters replay` re-publishes.
CARRIED_CUTOFF_HEADER = "dnc.cutoff"
CARRIED_AUTHORITY_HEADER = "dnc.cutoff.authority"

_VERSION = b"v2:"
_FORWARD = b"forward"  # what a signature is for: a forwarded record, or a carried cutoff
_CARRIED = b"carried"


def authority_key(settings: Settings) -> bytes:
    """The worker's signing key: DNC_AUTHORITY_KEY; refused when unset, unless development
    keys are allowed (then derived from the view key, labelled)."""
    key = verifying_key(settings)
    if key is None:
        raise ConfigError(
            "DNC_AUTHORITY_KEY is not set: the worker signs the lifts it forwards with it, "
            "and a key derived from the view key would let every gateway and dialer sign "
            "lifts. Set DNC_AUTHORITY_KEY to a secret of its own for the workers only (e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`), the same for every "
            "worker; `dnc up` generates one in DATA_DIR/authority.key. For a throwaway setup, "
            "DNC_ALLOW_DEVELOPMENT_AUTHORITY_KEY=true."
        )
    if key == settings.view_key.get_secret_value().encode():
        raise ConfigError(
            "DNC_AUTHORITY_KEY equals DNC_VIEW_KEY: every holder of the view key (gateways, "
            "dialers) could sign lifts. Give the workers an authority key of their own."
        )
    return key


def verifying_key(settings: Settings) -> bytes | None:
    """The key signatures verify under: DNC_AUTHORITY_KEY, the development key when allowed,
    else None (a reader without it cannot tell an admin's lift from a forged one)."""
    if settings.authority_key is not None:
        return settings.authority_key.get_secret_value().encode()
    if not settings.allow_development_authority_key:
        return None
    view_key = settings.view_key.get_secret_value().encode()
    return hashlib.blake2b(b"dnc-authority-key", key=view_key[:64], digest_size=32).digest()


def _signature(key: bytes, purpose: bytes, cutoff_ms: int, value: bytes) -> bytes:
    # The value comes last: the fields before it hold no separator, so the text is unambiguous.
    signed = b"\x1f".join((b"dnc-authority", _VERSION, purpose, str(cutoff_ms).encode(), value))
    return _VERSION + hmac.new(key, signed, hashlib.sha256).hexdigest().encode()


def forward_headers(key: bytes, value: bytes, cutoff_ms: int) -> list[tuple[str, bytes]]:
    """The cutoff and signature headers of an admin action forwarded to the oppositions topic."""
    return [
        (APPENDED_AT_HEADER, str(cutoff_ms).encode()),
        (AUTHORITY_HEADER, _signature(key, _FORWARD, cutoff_ms, value)),
    ]


def carried_headers(key: bytes, value: bytes, cutoff_ms: int) -> list[tuple[str, bytes]]:
    """The cutoff a dead letter records for its replay, and its signature."""
    return [
        (CARRIED_CUTOFF_HEADER, str(cutoff_ms).encode()),
        (CARRIED_AUTHORITY_HEADER, _signature(key, _CARRIED, cutoff_ms, value)),
    ]


def forwarded_cutoff(key: bytes | None, value: bytes, headers: Headers) -> int | None:
    """The cutoff of a forwarded record whose signature verifies; None if it does not (or
    there is no key to verify with)."""
    return _verified(key, _FORWARD, value, headers, APPENDED_AT_HEADER, AUTHORITY_HEADER)


def carried_cutoff(key: bytes | None, value: bytes, headers: Headers) -> int | None:
    """The original cutoff a replayed admin action carries, if its signature verifies."""
    return _verified(key, _CARRIED, value, headers, CARRIED_CUTOFF_HEADER, CARRIED_AUTHORITY_HEADER)


def signed_before_cutoffs(headers: Headers) -> bool:
    """True when a signature of the first version (bytes only, no cutoff) is attached."""
    found = header(headers, AUTHORITY_HEADER)
    return found is not None and not found.startswith(_VERSION)


def _verified(
    key: bytes | None, purpose: bytes, value: bytes, headers: Headers, cutoff: str, mac: str
) -> int | None:
    raw, signature = header(headers, cutoff), header(headers, mac)
    if key is None or raw is None or signature is None or not raw.isdigit():
        return None
    cutoff_ms = int(raw)
    if not hmac.compare_digest(signature, _signature(key, purpose, cutoff_ms, value)):
        return None
    return cutoff_ms


def header(headers: Headers, name: str) -> bytes | None:
    """The first header called ``name``."""
    for key, value in headers or ():
        if key == name:
            return value
    return None
