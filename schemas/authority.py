"""Who may end a suppression: only an admin, by construction.

Admin actions (lifts) are produced to the admin topic, which only the admin principal may
write (Kafka ACLs). A number's history must still have one log order, so the worker
forwards each admin action to the oppositions topic, on the partition of the number's
canonical key, with a signature header: an HMAC of the event's bytes under a key only the
workers hold. A lift on the oppositions topic without a valid signature (an agent desktop,
or anything holding its credentials, writing a lift) is dead-lettered as
``lift_not_authorised``, whatever its body claims.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from schemas.settings import Settings

AUTHORITY_HEADER = "dnc.authority"  # hex HMAC-SHA256 of the value, under the authority key
FORWARDED_FROM_HEADER = "dnc.forwarded-from"  # topic/partition/offset the worker read it at
# When the broker appended the admin action to the admin topic (ms, LogAppendTime): a lift
# ends only the suppressions appended to the log before that, not those appended while it
# was being forwarded.
APPENDED_AT_HEADER = "dnc.appended-at"
_LABEL = b"dnc-authority-v1\x1f"


def authority_key(settings: Settings) -> bytes:
    """The signing key: DNC_AUTHORITY_KEY, else one derived from the view key (labelled)."""
    if settings.authority_key is not None:
        return settings.authority_key.get_secret_value().encode()
    view_key = settings.view_key.get_secret_value().encode()
    return hashlib.blake2b(b"dnc-authority-key", key=view_key[:64], digest_size=32).digest()


def sign(key: bytes, value: bytes) -> bytes:
    """The authority header's value for an event's bytes."""
    return hmac.new(key, _LABEL + value, hashlib.sha256).hexdigest().encode()


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    """The first header called ``name``."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def is_signed(key: bytes, value: bytes, headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
    """True when ``headers`` carry a valid authority signature of ``value``."""
    found = header(headers, AUTHORITY_HEADER)
    return found is not None and hmac.compare_digest(found, sign(key, value))


def lift_cutoff_ms(headers: Sequence[tuple[str, bytes | None]] | None) -> int | None:
    """When the admin topic received a forwarded lift (ms, the broker's clock), if known."""
    raw = header(headers, APPENDED_AT_HEADER)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
