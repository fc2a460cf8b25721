"""Password references: checking them on submit and resolving them for senders."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping

import sqlalchemy as sa
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError

from providers.base import ProviderContext, ProviderError
from providers.registry import ProviderRegistry
from service.crypto import DecryptionError, KeyRing
from service.db import Database, PasswordAccess, utcnow
from service.errors import ApiError, ValidationFailed


EXPIRY_WARNING = dt.timedelta(days=14)


class PasswordUnavailable(ApiError):
    status = 503
    code = "password_unavailable"
    title = "The SMTP password cannot be resolved"


@dataclasses.dataclass(frozen=True)
class ResolvedPassword:
    """A password resolved for a sender; ``repr`` never shows the value."""

    value: str = dataclasses.field(repr=False)
    source: str
    version: str | None
    resolved_at: dt.datetime
    stale: bool = False
    from_cache: bool = False
    expires_at: dt.datetime | None = None


class SecretsService:
    """Checks password references against provider types and resolves them."""

    def __init__(self, db: Database, keyring: KeyRing, registry: ProviderRegistry) -> None:
        self.db = db
        self.keyring = keyring
        self.registry = registry
        self._noted: set[tuple[str, str, str, str]] = set()

    def check_reference(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Validate a reference with its provider type's schema; 422 when it is not right."""
        provider = self.registry.get(reference["source"])
        if provider is None:
            raise ValidationFailed(
                errors={"password": {"source": [f"Unknown source; installed: {', '.join(self.registry.sources())}."]}}
            )
        try:
            loaded = provider.reference_schema().load(reference)
        except ValidationError as exc:
            raise ValidationFailed(errors={"password": exc.messages}) from None
        return loaded

    def password_fields(self, effective: Any, token_name: str) -> dict[str, Any]:
        """The fields ``include_password=true`` adds, and who-read-what bookkeeping."""
        reference = effective.document.get("password")
        if reference is None:
            return {"password": None, "password_version": None, "password_resolved_at": None}
        resolved = self.resolve(reference, _password_scope(effective))
        self.note_access(token_name, reference, resolved)
        fields: dict[str, Any] = {
            "password": resolved.value,
            "password_version": resolved.version,
            "password_resolved_at": resolved.resolved_at.isoformat().replace("+00:00", "Z"),
        }
        warnings = []
        if resolved.stale:
            fields["password_stale"] = True
            warnings.append("password_stale")
        if resolved.expires_at is not None and resolved.expires_at - dt.datetime.now(dt.timezone.utc) < EXPIRY_WARNING:
            warnings.append("password_expires_soon")
        if warnings:
            fields["warnings"] = warnings
        return fields

    def note_access(self, token_name: str, reference: Mapping[str, Any], resolved: ResolvedPassword) -> None:
        """Record the first time a token reads a password version; never the value."""
        key = (token_name, resolved.source, _secret_label(reference), resolved.version or "")
        if key in self._noted:
            return
        try:
            with self.db.transaction() as session:
                exists = session.scalar(
                    sa.select(PasswordAccess.id).where(
                        PasswordAccess.token_name == key[0],
                        PasswordAccess.source == key[1],
                        PasswordAccess.secret == key[2],
                        PasswordAccess.version == key[3],
                    )
                )
                if exists is None:
                    session.add(
                        PasswordAccess(token_name=key[0], source=key[1], secret=key[2], version=key[3], first_at=utcnow())
                    )
        except IntegrityError:
            pass  # another worker recorded it first
        self._noted.add(key)

    def resolve(self, reference: Mapping[str, Any], scope: str, *, refresh: bool = False) -> ResolvedPassword:
        """The password a stored reference names, or 503 ``password_unavailable``."""
        from service.settings import plaintext_context

        source = reference.get("source")
        now = dt.datetime.now(dt.timezone.utc)
        if source == "plaintext":
            try:
                value = self.keyring.decrypt(reference["ciphertext"], plaintext_context(scope))
            except (DecryptionError, KeyError):
                raise PasswordUnavailable("The stored password cannot be decrypted with the configured master keys.") from None
            provider = self.registry.get("plaintext")
            if provider is None:
                raise PasswordUnavailable("The plaintext source is not installed.")
            try:
                secret = provider({}, ProviderContext(credential=_no_credentials)).fetch(
                    {"source": "plaintext", "value": value, "version": reference.get("version")}
                )
            except ProviderError as exc:
                raise PasswordUnavailable(exc.message) from None
            return ResolvedPassword(secret.value, "plaintext", secret.version, now)
        raise PasswordUnavailable(f"The password source {source!r} is not available.")


def _password_scope(effective: Any) -> str:
    """The settings row a plaintext password is sealed to: the level it was set at."""
    if effective.tenant is not None and "password" in effective.tenant.document:
        return effective.tenant.scope
    return "system"


def _secret_label(reference: Mapping[str, Any]) -> str:
    if reference.get("source") == "plaintext":
        return "plaintext"
    parts = [reference.get("provider"), reference.get("secret") or reference.get("path"), reference.get("key")]
    parts += [reference.get("safe"), reference.get("object")]
    return "/".join(str(p) for p in parts if p)


def _no_credentials(ref: Mapping[str, str]) -> str:
    raise ProviderError("this source takes no credentials")
