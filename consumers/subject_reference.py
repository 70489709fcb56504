"""For a subject access request: what the tenant's reference list was given about a number.

* PostgreSQL sink: the rows `dnc sync` wrote for the tenant and number, read back from the
  database: the contact's ``reference_list`` row (do_not_call, kind, scope, erased_at) and one
  ``reference_list_scope`` row per scope, ``updated_at`` being when it was delivered (the
  writing transaction's time).
* webhook sink: the number's changes still in the compacted ``dnc.suppressions.v1`` that the
  tenant's lane delivers, each ``acknowledged`` (the lane's consumer group ``PREFIX-TENANT``
  committed past it: the receiver answered 2xx), ``refused`` (the receiver answered a final
  4xx: it is in the reference-list dead letters) or ``pending``.
* no sink: ``not_configured``.

A reference list that cannot be read is ``unavailable`` with the reason: the rest of the
answer stands.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from consumers.keyed_scan import KeyedScanError, reader, scan_keys
from consumers.reference_sync import DLQ_TENANT, concerns
from consumers.sinks.postgres import describe_error
from schemas.errors import ConfigError
from schemas.events import GLOBAL_TARGET, Scope
from schemas.reference import PostgresSinkConfig, WebhookSinkConfig
from schemas.settings import Settings
from schemas.state import SuppressionChange, state_key
from schemas.tenants import TenantDirectory
from schemas.topics import DLQ_OFFSET, DLQ_PARTITION, DLQ_TOPIC

log = logging.getLogger(__name__)


class ContactRow(BaseModel):
    """The tenant's ``reference_list`` row for the number, as the sync last wrote it."""

    do_not_call: bool
    kind: str | None
    scope: str | None
    campaign_id: str | None
    delivered_at: AwareDatetime = Field(description="last written by the sync (updated_at)")
    erased_at: AwareDatetime | None = Field(description="when an erasure cleared its data")


class ScopeRow(BaseModel):
    """One ``reference_list_scope`` row: the latest change delivered for one scope."""

    target: str
    scope: Scope
    campaign_id: str | None
    do_not_call: bool
    kind: str | None
    version: int
    changed_at: AwareDatetime = Field(description="when the pipeline made the change")
    delivered_at: AwareDatetime = Field(description="when it was written (updated_at)")


class SentChange(BaseModel):
    """One change to the number that the tenant's webhook lane delivers."""

    target: str
    scope: Scope
    campaign_id: str | None
    suppressed: bool
    kind: str | None
    version: int
    changed_at: AwareDatetime
    partition: int
    offset: int
    delivery: Literal["acknowledged", "refused", "pending"] = Field(
        description="acknowledged: the receiver answered 2xx; refused: a final 4xx "
        "(dead-lettered); pending: not acknowledged yet"
    )


class ReferenceListReport(BaseModel):
    """What was delivered about the number to the tenant's reference list, and when."""

    status: Literal["not_configured", "delivered", "nothing_delivered", "unavailable"]
    sink: Literal["postgres", "webhook"] | None = None
    detail: str
    contact: ContactRow | None = Field(None, description="postgres: the contact's row")
    scopes: list[ScopeRow] = Field(default_factory=list, description="postgres: per scope")
    changes: list[SentChange] = Field(
        default_factory=list, description="webhook: the changes still in the compacted log"
    )
    truncated: bool = Field(False, description="webhook: the time or size bound stopped the scan")


NOT_CONFIGURED = ReferenceListReport(
    status="not_configured",
    detail="this tenant declares no reference list: this platform delivered nothing about the "
    "number to a client reference list",
)

_CONTACT = (
    "SELECT do_not_call, kind, scope, campaign_id, updated_at, erased_at FROM reference_list"
    " WHERE tenant = %s AND phone_e164 = %s"
)
_SCOPES = (
    "SELECT target, scope, campaign_id, suppressed, kind, version, changed_at, updated_at"
    " FROM reference_list_scope WHERE tenant = %s AND phone_e164 = %s ORDER BY target"
)


class ReferenceListReader:
    """Reads back what a tenant's reference list holds, or was sent, about one number."""

    def __init__(self, settings: Settings, tenants: TenantDirectory) -> None:
        self._settings = settings
        self._tenants = tenants

    def report(self, tenant: str, phone_e164: str, targets: set[str]) -> ReferenceListReport:
        """``targets``: the scope targets of the tenant's events about the number (campaigns
        included); the tenant's own and the platform-wide ones are always looked at."""
        config = self._tenants.get(tenant).reference_list
        if isinstance(config, PostgresSinkConfig):
            return self._postgres(tenant, phone_e164, config)
        if isinstance(config, WebhookSinkConfig):
            return self._webhook(tenant, phone_e164, targets | {tenant, GLOBAL_TARGET})
        return NOT_CONFIGURED

    # --- PostgreSQL --------------------------------------------------------------------
    def _postgres(
        self, tenant: str, phone_e164: str, config: PostgresSinkConfig
    ) -> ReferenceListReport:
        try:
            dsn = config.dsn(self._settings.postgres_dsn.get_secret_value())
            with psycopg.connect(
                dsn,
                connect_timeout=3,
                options="-c statement_timeout=5000",
                application_name="dnc-subject-access",
            ) as conn:
                contact = conn.execute(_CONTACT, (tenant, phone_e164)).fetchone()
                scopes = conn.execute(_SCOPES, (tenant, phone_e164)).fetchall()
        except psycopg.errors.UndefinedTable:
            return ReferenceListReport(
                status="nothing_delivered",
                sink="postgres",
                detail="the reference-list tables do not exist yet: nothing was delivered",
            )
        except (psycopg.Error, ConfigError) as exc:
            why = describe_error(exc) if isinstance(exc, psycopg.Error) else str(exc)
            log.warning("subject access: tenant %s: reference list unreadable: %s", tenant, why)
            return ReferenceListReport(
                status="unavailable",
                sink="postgres",
                detail=f"the reference list could not be read ({why}): ask again later",
            )
        report = ReferenceListReport(
            status="delivered" if contact or scopes else "nothing_delivered",
            sink="postgres",
            detail=(
                "the rows the sync wrote to the tenant's reference list; delivered_at is when "
                "each was written"
                if contact or scopes
                else "nothing about this number was delivered to the tenant's reference list"
            ),
            scopes=[_scope_row(row) for row in scopes],
        )
        if contact is not None:
            do_not_call, kind, scope, campaign_id, updated_at, erased_at = contact
            report.contact = ContactRow(
                do_not_call=do_not_call,
                kind=kind,
                scope=scope,
                campaign_id=campaign_id,
                delivered_at=updated_at,
                erased_at=erased_at,
            )
        return report

    # --- webhook -----------------------------------------------------------------------
    def _webhook(self, tenant: str, phone_e164: str, targets: set[str]) -> ReferenceListReport:
        s = self._settings
        keys = {state_key(target, phone_e164).encode() for target in targets}
        consumer = reader(s, "dnc-subject-access")
        try:
            scan = scan_keys(
                consumer,
                s.suppressions_topic,
                keys,
                seconds=s.gateway_subject_scan_seconds,
                max_messages=s.gateway_subject_scan_max_messages,
            )
            committed = self._committed(tenant, scan.partitions)
            refused, refused_truncated = self._refused(tenant)
        except (KeyedScanError, KafkaException) as exc:
            return ReferenceListReport(
                status="unavailable",
                sink="webhook",
                detail=f"the delivery log could not be read ({exc}): ask again later",
            )
        finally:
            consumer.close()
        changes = []
        for found in scan.found:
            try:
                change = SuppressionChange.model_validate_json(found.value)
            except ValidationError:
                continue  # the lane dead-letters it as invalid_change: nothing was sent
            if not concerns(change, tenant):
                continue
            position = (found.partition, found.offset)
            delivery: Literal["acknowledged", "refused", "pending"] = (
                "refused"
                if position in refused
                else "acknowledged"
                if committed.get(found.partition, -1) > found.offset
                else "pending"
            )
            changes.append(_sent(change, found.partition, found.offset, delivery))
        acknowledged = sum(1 for c in changes if c.delivery == "acknowledged")
        return ReferenceListReport(
            status="delivered" if acknowledged else "nothing_delivered",
            sink="webhook",
            detail=(
                f"{acknowledged} of the {len(changes)} changes to this number still in "
                f"{s.suppressions_topic} (compacted: older changes to a scope may be gone) were "
                "acknowledged by the tenant's webhook"
            ),
            changes=changes,
            truncated=scan.truncated or refused_truncated,
        )

    def _committed(self, tenant: str, partitions: list[int]) -> dict[int, int]:
        """The tenant's lane's committed offsets (the next change it will deliver)."""
        s = self._settings
        lane = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "group.id": f"{s.sync_group_prefix}-{tenant}",  # read, never joined
                "enable.auto.commit": False,
                **s.kafka_client_config(),
            }
        )
        try:
            wanted = [TopicPartition(s.suppressions_topic, p) for p in partitions]
            done = lane.committed(wanted, timeout=5) if wanted else []
            return {tp.partition: tp.offset for tp in done if tp.offset >= 0}
        finally:
            lane.close()

    def _refused(self, tenant: str) -> tuple[set[tuple[int, int]], bool]:
        """Positions in the suppressions topic of the tenant's changes its receiver refused."""
        s = self._settings
        consumer = reader(s, "dnc-subject-access")
        try:
            scan = scan_keys(
                consumer,
                s.reference_dead_letter_topic,
                set(),
                seconds=s.gateway_subject_scan_seconds,
                max_messages=s.gateway_subject_scan_max_messages,
                all_partitions=True,
            )
        finally:
            consumer.close()
        refused = set()
        for letter in scan.found:
            headers = dict(letter.headers)
            if headers.get(DLQ_TENANT) != tenant.encode():
                continue
            if headers.get(DLQ_TOPIC) != s.suppressions_topic.encode():
                continue
            try:
                refused.add((int(headers[DLQ_PARTITION]), int(headers[DLQ_OFFSET])))
            except (KeyError, ValueError):
                continue
        return refused, scan.truncated


def _scope_row(row: tuple[object, ...]) -> ScopeRow:
    target, scope, campaign_id, suppressed, kind, version, changed_at, updated_at = row
    return ScopeRow.model_validate(
        {
            "target": target,
            "scope": scope,
            "campaign_id": campaign_id,
            "do_not_call": suppressed,
            "kind": kind,
            "version": version,
            "changed_at": changed_at,
            "delivered_at": updated_at,
        }
    )


def _sent(
    change: SuppressionChange,
    partition: int,
    offset: int,
    delivery: Literal["acknowledged", "refused", "pending"],
) -> SentChange:
    changed_at: datetime = change.changed_at
    return SentChange(
        target=change.target,
        scope=change.scope,
        campaign_id=change.campaign_id,
        suppressed=change.suppressed,
        kind=change.kind.value if change.kind else None,
        version=change.version,
        changed_at=changed_at,
        partition=partition,
        offset=offset,
        delivery=delivery,
    )
