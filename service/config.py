"""The one settings loader: defaults, then ``SMTPCONF_*`` variables, then a test mapping."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

DEFAULT_DATABASE_PATH = Path("var") / "smtpconf.db"


class ConfigError(Exception):
    """The service cannot start with this configuration."""


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _as_int(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"SMTPCONF_{name} must be an integer") from None


@dataclasses.dataclass(frozen=True)
class Config:
    """Typed view of the service configuration."""

    database_url: str
    master_key: str | None = dataclasses.field(default=None, repr=False)
    master_key_file: str | None = None
    fips_mode: bool = False
    smtp_allowed_ports: str | None = None
    smtp_denied_networks: str | None = None
    log_level: str = "INFO"
    rate_limit_per_minute: int = 30
    #: Seconds between the safety polls of the database's change generations (one worker per instance).
    secret_sync_interval_seconds: float = 10.0
    #: The instance's shared generation board; ``smtpconf serve`` sets one for its workers.
    generations_file: str | None = None
    testing: bool = False

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Config":
        """Build the configuration from ``SMTPCONF_*`` variables and ``overrides``."""
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        prefix = "SMTPCONF_"
        for key, value in environ.items():
            if key.startswith(prefix):
                raw[key[len(prefix):].lower()] = value
        raw.update({k.lower(): v for k, v in (overrides or {}).items()})
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values.setdefault("database_url", default_database_url())
        for name in ("fips_mode", "testing"):
            if name in values:
                values[name] = _as_bool(values[name])
        if "rate_limit_per_minute" in values:
            values["rate_limit_per_minute"] = _as_int("RATE_LIMIT_PER_MINUTE", values["rate_limit_per_minute"])
        if "secret_sync_interval_seconds" in values:
            values["secret_sync_interval_seconds"] = float(values["secret_sync_interval_seconds"])
        values["database_url"] = normalise_database_url(str(values["database_url"]))
        return cls(**values)


def default_database_url() -> str:
    """A SQLite file under ``./var/``."""
    return f"sqlite:///{DEFAULT_DATABASE_PATH.resolve()}"


def normalise_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and drive them with psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
