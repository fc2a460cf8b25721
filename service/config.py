"""The one settings loader: defaults, then ``SMTPCONF_*`` variables, then a test mapping."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from service.transport import parse_networks

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


def _as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"SMTPCONF_{name} must be a number") from None
    if not number >= 0:
        raise ConfigError(f"SMTPCONF_{name} must not be negative")
    return number


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
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    allow_plaintext_secrets: bool = False
    trusted_proxies: str | None = None
    database_timeout_seconds: float = 5.0
    token_outage_grace_seconds: float = 300.0
    #: Days the delivery log keeps a row.
    delivery_log_days: int = 30
    #: The largest body the message routes take (every other route: 64 KiB).
    message_max_bytes: int = 10 * 1024 * 1024
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
        for name in ("fips_mode", "testing", "allow_plaintext_secrets"):
            if name in values:
                values[name] = _as_bool(values[name])
        if "rate_limit_per_minute" in values:
            values["rate_limit_per_minute"] = _as_int("RATE_LIMIT_PER_MINUTE", values["rate_limit_per_minute"])
        for name in ("delivery_log_days", "message_max_bytes"):
            if name in values:
                values[name] = _as_int(name.upper(), values[name])
                if values[name] < 1:
                    raise ConfigError(f"SMTPCONF_{name.upper()} must be at least 1")
        for name in ("secret_sync_interval_seconds", "database_timeout_seconds", "token_outage_grace_seconds"):
            if name in values:
                values[name] = _as_float(name.upper(), values[name])
        values["database_url"] = normalise_database_url(str(values["database_url"]))
        if bool(values.get("tls_cert_file")) != bool(values.get("tls_key_file")):
            raise ConfigError("SMTPCONF_TLS_CERT_FILE and SMTPCONF_TLS_KEY_FILE are set together or not at all")
        try:
            parse_networks(values.get("trusted_proxies"))
        except ValueError as exc:
            raise ConfigError(f"SMTPCONF_TRUSTED_PROXIES: {exc}") from None
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
