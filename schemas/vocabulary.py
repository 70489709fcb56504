"""The words of the events and of the view: kinds, scopes, sources, list names.

Plain enums, no pydantic: the read path (the checker, the dial rules, the view's layout)
speaks them without building the event models of :mod:`schemas.events`, which re-exports
them for everyone else.
"""

from __future__ import annotations

from enum import StrEnum

GLOBAL_TARGET = "_global"


class Kind(StrEnum):
    """What the person asked for; decides how long the number stays suppressed."""

    REFUSAL = "refusal"  # refused during a call: suppressed for the tenant's cooldown
    OPPOSITION = "opposition"  # GDPR Art. 21 objection to prospecting: until lifted
    CONSENT_WITHDRAWN = "consent_withdrawn"  # until lifted
    ERASURE = "erasure"  # until lifted, and the reference list erases the contact's data
    LIFT = "lift"  # admin only, with a justification: ends a suppression of that scope
    # Not suppressions: a consent to prospecting calls (consent recorders only, with its
    # proof reference), and a call attempt reserved at dial time (counted against the cap).
    CONSENT = "consent"
    ATTEMPT = "attempt"


# The kinds that suppress (the rest: lift, consent, attempt).
SUPPRESSING_KINDS = frozenset({"refusal", "opposition", "consent_withdrawn", "erasure"})


class ConsentSource(StrEnum):
    """How a consent was captured (the proof reference says where its proof is archived)."""

    WEB_FORM = "web_form"
    INBOUND_CALL = "inbound_call"
    OUTBOUND_CALL = "outbound_call"
    PAPER = "paper"
    EMAIL = "email"
    SMS = "sms"
    IMPORT = "import"
    OTHER = "other"


class Scope(StrEnum):
    """Who the suppression protects the person from."""

    GLOBAL = "global"  # the operator's whole platform, every tenant
    TENANT = "tenant"  # one client (default)
    CAMPAIGN = "campaign"  # one campaign of one client


class Source(StrEnum):
    """What emitted the event."""

    AGENT_DESKTOP = "agent_desktop"
    HTTP_GATEWAY = "http_gateway"
    CLI = "cli"
    BULK_IMPORT = "bulk_import"
    ADMIN = "admin"


def scope_target(scope: Scope, tenant: str, campaign_id: str | None) -> str:
    """The name of the suppression list a scope writes to: ``_global``, ``T`` or ``T/C``."""
    if scope is Scope.GLOBAL:
        return GLOBAL_TARGET
    if scope is Scope.CAMPAIGN:
        return f"{tenant}/{campaign_id}"
    return tenant
