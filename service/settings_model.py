"""What settings are: levels and scopes, the effective merge, redaction, warnings and ETags."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import re
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.db import SmtpSettings, iso_utc
from service.errors import NotFound
from service.oauth_flows import SECRET_FIELDS
from service.schemas import SETTINGS_FIELDS, SYSTEM_DEFAULTS, is_oauth2

SYSTEM_SCOPE = "system"
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED_FIELDS = ("host", "port", "from_email")
DESTINATION_FIELDS = ("host", "port", "security", "username")
READ_BACK_PLAINTEXT = {"source": "plaintext", "value_set": True}
PASSWORD_AUTH = {"method": "password"}
#: Hosts whose operators have retired password (basic) SMTP AUTH.
BASIC_AUTH_RETIRED_HOSTS = frozenset({"smtp.office365.com", "smtp-mail.outlook.com"})


def tenant_scope(tenant: str) -> str:
    if not TENANT_ID.match(tenant):
        raise NotFound("No such tenant: tenant ids are letters, digits, '.', '_' and '-'.", code="tenant_not_found")
    return f"tenant:{tenant}"


def plaintext_context(scope: str) -> str:
    """Associated data binding a stored password to its settings row."""
    return f"smtp_settings:{scope}:password"


def redact_password(password: dict[str, Any] | None) -> dict[str, Any] | None:
    """The form a password reference is shown in: never a value."""
    if password is None:
        return None
    if password.get("source") == "plaintext":
        return dict(READ_BACK_PLAINTEXT)
    return dict(password)


def auth_secret_context(scope: str, name: str) -> str:
    """Associated data binding a stored OAuth2 secret (``client_secret``, ...) to its settings row."""
    return f"smtp_settings:{scope}:auth.{name}"


def redact_auth(auth: dict[str, Any] | None) -> dict[str, Any] | None:
    """The form an ``auth`` object is shown in: its secrets as references, never values."""
    if auth is None:
        return None
    return {name: redact_password(value) if name in SECRET_FIELDS else value for name, value in auth.items()}


def redact(document: dict[str, Any] | None) -> dict[str, Any] | None:
    if document is None:
        return None
    out = dict(document)
    if "password" in out:
        out["password"] = redact_password(out["password"])
    if "auth" in out:
        out["auth"] = redact_auth(out["auth"])
    return out


def auth_scope(effective: Any) -> str:
    """The settings row an OAuth2 plaintext secret is sealed to: the level ``auth`` was set at."""
    if effective.tenant is not None and "auth" in effective.tenant.document:
        return effective.tenant.scope
    return SYSTEM_SCOPE


def warnings_for(effective: dict[str, Any]) -> list[str]:
    """Warning codes about the merged settings."""
    warnings = []
    if effective.get("username") is None and effective.get("password") is None:
        warnings.append("anonymous_smtp")
    elif effective.get("security") == "none":
        warnings.append("credentials_over_plaintext")
    host = str(effective.get("host") or "").lower().rstrip(".")
    if host in BASIC_AUTH_RETIRED_HOSTS and effective.get("username") is not None and not is_oauth2(effective):
        warnings.append("basic_auth_retiring")
    return warnings


def etag_of(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 list matching; ``*`` matches any current representation."""
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


@dataclasses.dataclass
class StoredSettings:
    """One row as read from the database."""

    scope: str
    document: dict[str, Any]
    version: int
    updated_at: dt.datetime
    updated_by: str

    @property
    def etag(self) -> str:
        return etag_of(self.scope, self.version, self.stamp)

    @functools.cached_property
    def stamp(self) -> str:
        """``updated_at`` in ISO 8601, as the ETags hash it (rows are kept and read many times)."""
        return self.updated_at.isoformat()

    @functools.cached_property
    def updated_at_text(self) -> str:
        """``updated_at`` as documents show it."""
        return iso_utc(self.updated_at)

    @classmethod
    def of(cls, row: SmtpSettings) -> "StoredSettings":
        return cls(row.scope, copy.deepcopy(row.document), row.version, row.updated_at, row.updated_by)


@dataclasses.dataclass(frozen=True)
class EffectiveView:
    """An effective document as served: its ETag and its JSON text."""

    etag: str
    encoded: bytes


@dataclasses.dataclass
class Effective:
    """The merged settings a sender uses, with where each field came from.

    Shared between requests while the settings are unchanged: never mutated.
    """

    document: dict[str, Any]
    inherited: list[str]
    system: StoredSettings | None
    tenant: StoredSettings | None
    scope: str
    #: ``effective_view`` results by the extra fields they were rendered with.
    views: dict[Any, EffectiveView] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    #: Served from memory while the database could not be asked whether it changed.
    stale: bool = False

    @property
    def base_tag(self) -> list[Any]:
        return [s and [s.scope, s.version, s.stamp] for s in (self.system, self.tenant)]

    @functools.cached_property
    def stale_twin(self) -> "Effective":
        """The same settings marked ``settings_stale`` (kept, so that its renderings are too)."""
        return dataclasses.replace(self, views={}, stale=True)


def merge(system: StoredSettings | None, tenant: StoredSettings | None, tenant_id: str | None) -> Effective:
    """The effective settings of ``tenant_id`` (``None``: the system level): tenant fields over system ones."""
    base = {**SYSTEM_DEFAULTS, **(system.document if system else {})}
    override = tenant.document if tenant else {}
    # Values are shared with the rows, not copied: both are read-only.
    document = {name: override[name] if name in override else base.get(name) for name in SETTINGS_FIELDS}
    inherited = [name for name in SETTINGS_FIELDS if name not in override] if tenant_id is not None else []
    missing = [name for name in REQUIRED_FIELDS if document.get(name) is None]
    if missing:
        where = "the system level" if tenant_id is None else f"tenant {tenant_id} or the system level"
        raise NotFound(
            f"SMTP settings are not configured at {where} (missing {', '.join(missing)}).",
            code="settings_not_configured",
        )
    for name in ("cc", "bcc", "preferred_notifications"):
        if document[name] is None:
            document[name] = []
    if document["auth"] is None:
        document["auth"] = PASSWORD_AUTH
    elif is_oauth2(document):
        # A token replaces the password: one inherited from the system level is set aside.
        document["password"] = None
    scope = SYSTEM_SCOPE if tenant_id is None else f"tenant:{tenant_id}"
    return Effective(document, inherited, system, tenant, scope)


def scopes_whose_password(session: Session, matches: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The settings levels whose password reference, or a secret reference in ``auth``, ``matches``."""
    found = []
    for scope, document in session.execute(sa.select(SmtpSettings.scope, SmtpSettings.document)):
        auth = document.get("auth") if isinstance(document.get("auth"), dict) else {}
        references = [document.get("password"), *(auth.get(name) for name in SECRET_FIELDS)]
        if any(isinstance(reference, dict) and matches(reference) for reference in references):
            found.append(scope)
    return found
