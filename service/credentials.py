"""Effective settings to the credential a sender uses: a password or an OAuth2 access token."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from providers.base import SecretValue, expires_soon
from service import smtp_check
from service.crypto import DecryptionError, KeyRing
from service.db import iso_utc, utcnow
from service.errors import PasswordUnavailable, TokenUnavailable
from service.oauth import TokenService
from service.oauth_flows import Token, TokenDenied, TokenError, secret_field
from service.schemas import is_oauth2
from service.secrets import EXPIRY_WARNING, ResolvedPassword, SecretsService
from service.settings_model import SYSTEM_SCOPE, Effective, auth_scope, auth_secret_context, plaintext_context

#: How long an effective read waits for a token endpoint: senders must not wait long.
EFFECTIVE_TOKEN_TIMEOUT = 5.0
#: A check's token request when its settings name no ``timeout_seconds``.
DEFAULT_TOKEN_TIMEOUT = 10.0
#: Stored (plaintext) secrets a process keeps decrypted: every tenant's own password fits.
DECRYPTED_CACHE_SIZE = 20_000


class CredentialPath:
    """The one way from effective settings to a password or an access token.

    Effective reads, checks and sending all go through here: staleness,
    versions and the re-fetch after an authentication failure (``refresh``)
    behave the same for each of them.
    """

    def __init__(self, secrets: SecretsService, keyring: KeyRing, tokens: TokenService) -> None:
        self.secrets = secrets
        self.keyring = keyring
        self.tokens = tokens
        # (ciphertext, context, version) -> the value, decrypted once: a read then costs a lookup,
        # and its password_resolved_at (when it was decrypted) leaves the effective rendering cacheable.
        # A new value is a new ciphertext; single dict operations are atomic, so threads share it.
        self._decrypted: dict[tuple[str, str, str | None], ResolvedPassword] = {}

    # what the SMTP engine takes

    def password_getter(self, effective: Effective) -> smtp_check.PasswordGetter | None:
        """``get(refresh)`` for the effective password; None when there is none (anonymous, or OAuth2)."""
        reference = effective.document.get("password")
        if reference is None or is_oauth2(effective.document):
            return None
        # A candidate's kept plaintext password is sealed to the level it was stored at.
        scope = reference.get("_stored_scope") or password_scope(effective)
        reference = {k: v for k, v in reference.items() if k != "_stored_scope"}

        def get(refresh: bool) -> smtp_check.ResolvedPassword:
            try:
                resolved = self._password(reference, scope, refresh=refresh)
            except PasswordUnavailable as exc:
                raise smtp_check.PasswordUnavailable(exc.detail, source=reference.get("source")) from None
            return smtp_check.ResolvedPassword(resolved.value, resolved.source, resolved.version, resolved.from_cache)

        return get

    def token_getter(self, effective: Effective, *, timeout: float | None = None) -> smtp_check.TokenGetter | None:
        """``get(refresh)`` for an access token under ``auth.method: oauth2``, else None.

        ``timeout`` bounds one token request; by default the settings' ``timeout_seconds``.
        """
        if not is_oauth2(effective.document):
            return None
        auth = effective.document["auth"]
        scope = auth_scope(effective)
        subject = str(effective.document["username"])
        bound = timeout or float(effective.document.get("timeout_seconds") or DEFAULT_TOKEN_TIMEOUT)

        def get(refresh: bool) -> smtp_check.AccessToken:
            try:
                token = self._token(auth, scope, subject, refresh=refresh, timeout=bound)
            except PasswordUnavailable as exc:
                raise smtp_check.TokenUnavailable(
                    f"The OAuth2 client credential could not be resolved: {exc.detail}", code="password_unavailable"
                ) from None
            except TokenUnavailable as exc:
                code = "destination_not_allowed" if exc.extra.get("reason") == "destination_not_allowed" else exc.code
                raise smtp_check.TokenUnavailable(exc.detail, oauth_error=exc.extra.get("oauth_error"), code=code) from None
            return smtp_check.AccessToken(token.value, token.flow, token.expires_at_datetime, token.from_cache)

        return get

    # what an effective read with include_password=true adds

    def effective_fields(self, effective: Effective, token_name: str) -> dict[str, Any]:
        """The password (or, under OAuth2, the access token) fields, and who-read-what bookkeeping.

        Raises 503 ``password_unavailable`` or ``token_unavailable``.
        """
        document = effective.document
        if is_oauth2(document):
            token = self._token(
                document["auth"], auth_scope(effective), str(document["username"]), timeout=EFFECTIVE_TOKEN_TIMEOUT
            )
            return {
                "password": None,
                "password_version": None,
                "password_resolved_at": None,
                "access_token": token.value,
                "access_token_expires_at": iso_utc(token.expires_at_datetime),
                "sasl_mechanism": "XOAUTH2",
            }
        reference = document.get("password")
        if reference is None:
            return {"password": None, "password_version": None, "password_resolved_at": None}
        if reference.get("source") == "plaintext":
            resolved = self._plaintext(reference, password_scope(effective))
            self.secrets.access_log.note(token_name, "plaintext", "plaintext", resolved.version)
            return password_fields(resolved.value, resolved.version, resolved.resolved_at, False, None)
        plan, resolution = self.secrets.resolution(reference)
        secret = resolution.secret
        self.secrets.access_log.note(token_name, plan.source, plan.label, secret.version)
        # A fresh cache hit is the same Resolution object until the value is fetched
        # again, so its fields are worked out once; only an expiry warning can come due meanwhile.
        soon = expires_soon(secret, within=EXPIRY_WARNING)
        last = plan.last_fields
        if last is not None and last[0] is resolution and last[1] == soon:
            return last[2]
        resolved_at = dt.datetime.fromtimestamp(resolution.fetched_at, dt.timezone.utc)
        fields = password_fields(secret.value, secret.version, resolved_at, resolution.stale, secret.expires_at)
        plan.last_fields = (resolution, soon, fields)
        return fields

    # below: one reference to one value

    def _password(self, reference: Mapping[str, Any], scope: str, *, refresh: bool = False) -> ResolvedPassword:
        if reference.get("source") != "plaintext":
            return self.secrets.resolve(reference, refresh=refresh)
        if "value" in reference:  # candidate settings, not stored yet
            return ResolvedPassword(reference["value"], "plaintext", None, utcnow())
        return self._plaintext(reference, scope)

    def _plaintext(self, reference: Mapping[str, Any], scope: str, field: str = "password") -> ResolvedPassword:
        context = plaintext_context(scope) if field == "password" else auth_secret_context(scope, field)
        key = (reference.get("ciphertext"), context, reference.get("version"))
        held = self._decrypted.get(key)  # type: ignore[arg-type]
        if held is not None:
            return held
        try:
            value = self.keyring.decrypt(reference["ciphertext"], context)
        except (DecryptionError, KeyError):
            raise PasswordUnavailable(f"The stored {field} cannot be decrypted with the configured master keys.") from None
        resolved = ResolvedPassword(value, "plaintext", reference.get("version"), utcnow())
        if len(self._decrypted) >= DECRYPTED_CACHE_SIZE:
            self._decrypted.clear()
        self._decrypted[key] = resolved  # type: ignore[index]
        return resolved

    def _auth_secret(self, auth: Mapping[str, Any], scope: str) -> ResolvedPassword:
        """The client secret, certificate or key of an OAuth2 ``auth`` object, or 503 ``password_unavailable``."""
        try:
            name = secret_field(auth)
        except TokenError as exc:
            raise PasswordUnavailable(exc.message) from None
        reference = auth[name]
        if reference.get("source") != "plaintext" or "value" in reference:
            return self._password(reference, scope)
        return self._plaintext(reference, reference.get("_stored_scope") or scope, name)

    def _token(
        self, auth: Mapping[str, Any], scope: str, subject: str, *, refresh: bool = False, timeout: float | None = None
    ) -> Token:
        """An access token for the mailbox ``subject``; 503 ``password_unavailable`` or ``token_unavailable``."""
        secret = self._auth_secret(auth, scope)
        try:
            return self.tokens.get(auth, secret.value, subject, refresh=refresh, timeout=timeout)
        except TokenError as exc:
            extra: dict[str, Any] = {"oauth_error": exc.oauth_error}
            if isinstance(exc, TokenDenied):
                # A policy refusal, not an outage: said so, so that nobody waits for it to pass.
                extra["reason"] = "destination_not_allowed"
            raise TokenUnavailable(f"No access token: {exc.message}".replace(secret.value, "********"), extra=extra) from None


def password_scope(effective: Effective) -> str:
    """The settings row a plaintext password is sealed to: the level it was set at."""
    if effective.tenant is not None and "password" in effective.tenant.document:
        return effective.tenant.scope
    return SYSTEM_SCOPE


def password_fields(
    value: str, version: str | None, resolved_at: dt.datetime, stale: bool, expires_at: dt.datetime | None
) -> dict[str, Any]:
    """The password fields of an effective read, with its warnings."""
    fields: dict[str, Any] = {
        "password": value,
        "password_version": version,
        "password_resolved_at": iso_utc(resolved_at),
    }
    warnings = []
    if stale:
        fields["password_stale"] = True
        warnings.append("password_stale")
    if expires_soon(SecretValue("", version, expires_at), within=EXPIRY_WARNING):
        warnings.append("password_expires_soon")
    if warnings:
        fields["warnings"] = warnings
    return fields
