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


_POSITIVE_INTEGERS = (
    "delivery_log_days",
    "message_max_bytes",
    "submission_max_bytes",
    "submission_max_recipients",
    "submission_max_connections",
    "submission_max_connections_per_client",
    "submission_messages_per_minute",
)


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
    #: The serving front (``service.front``): how long a client may take, and how many it may be.
    header_timeout_seconds: float = 10.0
    body_min_bytes_per_second: float = 1024.0
    keepalive_timeout_seconds: float = 75.0
    request_timeout_seconds: float = 120.0
    write_timeout_seconds: float = 30.0
    max_connections_per_worker: int = 10_000
    max_request_body_bytes: int = 16 * 1024 * 1024
    #: HOST:PORT of the SMTP submission server; ``smtpconf serve`` runs one beside the HTTP workers when set.
    submission_bind: str | None = None
    submission_implicit_tls: bool = False
    submission_max_bytes: int = 25 * 1024 * 1024
    submission_max_recipients: int = 100
    submission_max_connections: int = 200
    submission_max_connections_per_client: int = 20
    submission_messages_per_minute: int = 600
    submission_idle_seconds: float = 300.0
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
        for name in ("fips_mode", "testing", "allow_plaintext_secrets", "submission_implicit_tls"):
            if name in values:
                values[name] = _as_bool(values[name])
        for name in ("rate_limit_per_minute", "max_connections_per_worker", "max_request_body_bytes"):
            if name in values:
                values[name] = _as_int(name.upper(), values[name])
        for name in _POSITIVE_INTEGERS:
            if name in values:
                values[name] = _as_int(name.upper(), values[name])
                if values[name] < 1:
                    raise ConfigError(f"SMTPCONF_{name.upper()} must be at least 1")
        for name in (
            "secret_sync_interval_seconds", "database_timeout_seconds", "token_outage_grace_seconds",
            "header_timeout_seconds", "body_min_bytes_per_second", "keepalive_timeout_seconds",
            "request_timeout_seconds", "write_timeout_seconds", "submission_idle_seconds",
        ):
            if name in values:
                values[name] = _as_float(name.upper(), values[name])
        values["database_url"] = normalise_database_url(str(values["database_url"]))
        if bool(values.get("tls_cert_file")) != bool(values.get("tls_key_file")):
            raise ConfigError("SMTPCONF_TLS_CERT_FILE and SMTPCONF_TLS_KEY_FILE are set together or not at all")
        if values.get("submission_bind"):
            parse_bind(str(values["submission_bind"]), "SUBMISSION_BIND")
        try:
            parse_networks(values.get("trusted_proxies"))
        except ValueError as exc:
            raise ConfigError(f"SMTPCONF_TRUSTED_PROXIES: {exc}") from None
        return cls(**values)


def parse_bind(text: str, name: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a host and a port number."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"SMTPCONF_{name} must be HOST:PORT, not {text!r}")
    return host, int(port)


def default_database_url() -> str:
    """A SQLite file under ``./var/``."""
    return f"sqlite:///{DEFAULT_DATABASE_PATH.resolve()}"


def normalise_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and drive them with psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
