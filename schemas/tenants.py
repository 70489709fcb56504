"""Tenants (the clients we call for): default region, cooldown, view buckets, dial policy."""

from __future__ import annotations

import hmac
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, ValidationError, field_validator

from schemas.errors import ConfigError, UnknownTenant
from schemas.phone import known_region
from schemas.policy import (
    CAMPAIGN_PATTERN,
    DEFAULT_POLICY,
    CampaignKeys,
    CampaignPolicy,
    PolicyKeys,
)
from schemas.reference import SinkConfig
from schemas.tokens import (
    MAX_TOKEN_LENGTH,
    TOKEN_ID_PATTERN,
    Principal,
    Role,
    TokenRecord,
    new_token,
    token_block,
    token_digest,
)

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_REFUSAL_COOLDOWN = timedelta(days=60)
MIN_REFUSAL_COOLDOWN = timedelta(days=1)
# ISO 8601 durations in weeks, days and time units only: years and months have no fixed
# length, and a cooldown that is a day short lets a dialer call a person too early.
_COOLDOWN_DURATION = re.compile(
    r"^P(?=\d|T\d)(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
)


class TenantConfig(PolicyKeys):
    """One client's settings, as declared under ``[tenants.NAME]`` in the tenants file.

    Its dial-policy keys (:class:`PolicyKeys`) are the defaults of its campaigns.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_region: str = Field("FR", description="ISO 3166 region for national numbers")
    refusal_cooldown: timedelta = Field(
        DEFAULT_REFUSAL_COOLDOWN,
        description="how long a refusal suppresses: an ISO 8601 duration of at least one day, "
        "in weeks, days or hours (e.g. 'P60D')",
    )
    view_buckets: int | None = Field(
        None, ge=1, le=1 << 20, description="buckets of this tenant's view (default: setting)"
    )
    reference_list: SinkConfig | None = Field(
        None, description="where `dnc sync` delivers this tenant's changes (none: not synced)"
    )
    # Gateway tokens, declared as [[tenants.NAME.tokens]] blocks (`dnc token create`).
    tokens: tuple[TokenRecord, ...] = Field(
        (), description="gateway tokens of this tenant: id, role and SHA-256 (never the token)"
    )
    campaigns: dict[Annotated[str, StringConstraints(pattern=CAMPAIGN_PATTERN)], CampaignKeys] = (
        Field(
            default_factory=dict,
            description="[tenants.NAME.campaigns.ID]: the dial-policy keys a campaign overrides",
        )
    )

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if not known_region(region):
            raise ValueError(f"{value!r} is not a region phonenumbers knows (e.g. FR, GB, US)")
        return region

    @field_validator("refusal_cooldown", mode="before")
    @classmethod
    def _iso_duration(cls, value: object) -> object:
        if isinstance(value, timedelta):  # built in Python, not read from a file
            return value
        if isinstance(value, str) and _COOLDOWN_DURATION.match(value.strip().upper()):
            return value.strip().upper()
        why = (
            "a bare number is not accepted (it would be read as seconds)"
            if isinstance(value, int | float) or str(value).strip().isdigit()
            else "years and months are not accepted: they have no fixed length"
            if isinstance(value, str) and re.search(r"\d[YM]", value.upper().split("T")[0])
            else "not an ISO 8601 duration"
        )
        raise ValueError(
            "refusal_cooldown must be an ISO 8601 duration in weeks, days or hours, such as "
            f'"P60D" (60 days) or "P8W"; got {value!r}: {why}'
        )

    @field_validator("refusal_cooldown")
    @classmethod
    def _at_least_a_day(cls, value: timedelta) -> timedelta:
        if value < MIN_REFUSAL_COOLDOWN:
            raise ValueError(
                f'refusal_cooldown must be at least one day ("P1D"); got {value} '
                "(for a shorter suppression, give the event an explicit expires_at)"
            )
        return value

    def policy(self, campaign: str | None = None) -> CampaignPolicy:
        """The dial policy of ``campaign`` (None or unlisted: this tenant's defaults)."""
        tenant_policy = DEFAULT_POLICY.overlaid(self)
        keys = self.campaigns.get(campaign) if campaign is not None else None
        return tenant_policy if keys is None else tenant_policy.overlaid(keys)

    @field_validator("tokens")
    @classmethod
    def _unique_token_ids(cls, value: tuple[TokenRecord, ...]) -> tuple[TokenRecord, ...]:
        ids = [t.id for t in value]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"token ids must be unique within a tenant: {duplicated}")
        return value


class TenantDirectory:
    """The declared tenants; unknown tenants are refused (a typo must not hide a refusal)."""

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._tenants = dict(tenants)
        self._tokens: dict[str, tuple[str, TokenRecord]] = {}  # sha256 -> (tenant, record)
        for name, config in self._tenants.items():
            for record in config.tokens:
                if record.sha256 in self._tokens:
                    raise ConfigError(
                        f"token {record.id!r} of tenant {name!r} has the same hash as token "
                        f"{self._tokens[record.sha256][1].id!r}: create a new token"
                    )
                self._tokens[record.sha256] = (name, record)
        # Built once: the dial decision asks for a policy on every check.
        self._policies = {
            (name, campaign): config.policy(campaign)
            for name, config in self._tenants.items()
            for campaign in (None, *config.campaigns)
        }

    @classmethod
    def load(cls, path: Path) -> TenantDirectory:
        """Read and validate a tenants TOML file; :class:`ConfigError` says what is wrong."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"tenants file {path} not found: create it or point DNC_TENANTS_FILE at one"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"tenants file {path} is not valid TOML: {exc}") from exc
        section = raw.get("tenants")
        if not isinstance(section, dict) or not section:
            raise ConfigError(f"tenants file {path} declares no [tenants.NAME] table")
        tenants: dict[str, TenantConfig] = {}
        for name, body in section.items():
            if not re.match(TENANT_PATTERN, name):
                raise ConfigError(
                    f"tenants file {path}: tenant name {name!r} must match {TENANT_PATTERN}"
                )
            try:
                tenants[name] = TenantConfig.model_validate(body)
            except ValidationError as exc:
                raise ConfigError(
                    f"tenants file {path}: tenant {name!r}: {describe_errors(exc, name)}"
                ) from exc
        return cls(tenants)

    def get(self, tenant: str) -> TenantConfig:
        """The tenant's config, or :class:`UnknownTenant`."""
        try:
            return self._tenants[tenant]
        except KeyError:
            raise UnknownTenant(tenant) from None

    def policy(self, tenant: str, campaign: str | None = None) -> CampaignPolicy:
        """The dial policy of a tenant's campaign (None or unlisted: the tenant's defaults).

        Raises :class:`UnknownTenant` for an undeclared tenant.
        """
        found = self._policies.get((tenant, campaign))
        if found is None:
            found = self._policies.get((tenant, None))
            if found is None:
                raise UnknownTenant(tenant)
        return found

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants

    @property
    def names(self) -> list[str]:
        """Declared tenant names, sorted."""
        return sorted(self._tenants)

    def authenticate(self, token: str) -> Principal | None:
        """The tenant and role of a gateway token, or None when no tenant declares it.

        The lookup key is the SHA-256 of a 256-bit random secret, so its timing tells an
        attacker nothing; the final comparison is constant-time all the same.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_digest(token)
        found = self._tokens.get(digest)
        if found is None or not hmac.compare_digest(found[1].sha256, digest):
            return None
        tenant, record = found
        return Principal(tenant=tenant, token_id=record.id, role=record.role)


def describe_errors(exc: ValidationError, tenant: str) -> str:
    """Every problem, separated by "; ", each naming its key by its dotted path in the file."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"] if part != "[key]"]
        key = ".".join(["tenants", tenant, *loc])
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"][-1:] == ("[key]",) and loc[:1] == ["campaigns"]:
            message = f"a campaign id must match {CAMPAIGN_PATTERN}"
        elif error["type"] == "extra_forbidden":
            model = CampaignKeys if loc[:1] == ["campaigns"] else TenantConfig
            message = f"not a known key (known keys: {', '.join(sorted(model.model_fields))})"
        elif "got " not in message and not isinstance(error.get("input"), dict | list):
            message = f"{message} (got {error.get('input')!r})"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def issue_token(
    path: Path, tenant: str, role: Role, token_id: str | None = None
) -> tuple[str, str]:
    """Create a token for ``tenant``: append its hash to the tenants file, return (id, token).

    The file is only appended to (never rewritten), and only after the appended version
    has been checked to load; the token itself is returned once and stored nowhere.
    """
    directory = TenantDirectory.load(path)
    config = directory.get(tenant)
    chosen_id = token_id or f"{role.value}-{new_token()[4:12].lower()}"
    if not re.match(TOKEN_ID_PATTERN, chosen_id):
        raise ConfigError(f"token id {chosen_id!r} must match {TOKEN_ID_PATTERN}")
    if any(t.id == chosen_id for t in config.tokens):
        raise ConfigError(f"tenant {tenant!r} already has a token with id {chosen_id!r}")
    token = new_token()
    record = TokenRecord(id=chosen_id, role=role, sha256=token_digest(token))
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    block = token_block(tenant, record, f"token {chosen_id} ({role.value}), created {stamp}")
    original = path.read_text(encoding="utf-8")
    candidate = path.with_name(f".{path.name}.{os.getpid()}.check")
    try:
        separator = "" if not original or original.endswith("\n") else "\n"
        candidate.write_text(original + separator + block, encoding="utf-8")
        TenantDirectory.load(candidate)  # raises ConfigError if the result would not load
    finally:
        candidate.unlink(missing_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(separator + block)
    return chosen_id, token
