"""Tenants (the clients we call for): default region, cooldown, view buckets."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigError, UnknownTenant

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_REFUSAL_COOLDOWN = timedelta(days=60)


class TenantConfig(BaseModel):
    """One client's settings, as declared under ``[tenants.NAME]`` in the tenants file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_region: str = Field("FR", description="ISO 3166 region for national numbers")
    refusal_cooldown: timedelta = Field(
        DEFAULT_REFUSAL_COOLDOWN,
        description="how long a refusal suppresses (ISO 8601 duration such as 'P60D', or seconds)",
    )
    view_buckets: int | None = Field(
        None, ge=1, le=1 << 20, description="buckets of this tenant's view (default: setting)"
    )

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (e.g. FR, GB, US)")
        return region

    @field_validator("refusal_cooldown")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("refusal_cooldown must be positive")
        return value


class TenantDirectory:
    """The declared tenants; unknown tenants are refused (a typo must not hide a refusal)."""

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._tenants = dict(tenants)

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
                raise ConfigError(f"tenants file {path}: tenant {name!r}: {exc}") from exc
        return cls(tenants)

    def get(self, tenant: str) -> TenantConfig:
        """The tenant's config, or :class:`UnknownTenant`."""
        try:
            return self._tenants[tenant]
        except KeyError:
            raise UnknownTenant(tenant) from None

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants

    @property
    def names(self) -> list[str]:
        """Declared tenant names, sorted."""
        return sorted(self._tenants)
