"""Settings as they are written: validated, plaintext secrets sealed under the master key, audited and announced."""

from __future__ import annotations

import copy
from typing import Any, Callable

import sqlalchemy as sa
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import audit
from service.crypto import KeyRing
from service.db import Database, SmtpSettings, utcnow
from service.errors import NotFound, PreconditionFailed, ValidationFailed
from service.oauth_flows import ENDPOINT_FIELDS, SECRET_FIELDS, with_defaults
from service.propagation import SETTINGS, announce
from service.schemas import SYSTEM_DEFAULTS, check_auth_plaintext, credential_errors, is_oauth2, load_settings
from service.settings_model import (
    DESTINATION_FIELDS,
    SYSTEM_SCOPE,
    StoredSettings,
    auth_secret_context,
    etag_matches,
    plaintext_context,
    redact,
)


class SettingsWriter:
    """Stores and deletes one level's document; every write is audited in its transaction."""

    def __init__(
        self,
        db: Database,
        keyring: KeyRing,
        *,
        fips_mode: bool,
        check_reference: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.fips_mode = fips_mode
        #: Validates a password reference against its provider type and connection
        #: allow-list; raises ``ApiError``. Supplied by the secrets layer.
        self.check_reference = check_reference

    def put(self, scope: str, payload: Any, *, actor: str, if_match: str | None) -> StoredSettings:
        """Validate and store a whole document at one level."""
        tenant = scope != SYSTEM_SCOPE
        try:
            document = load_settings(payload, tenant=tenant)
        except ValidationError as exc:
            raise ValidationFailed(errors=_messages(exc)) from None
        if self.fips_mode and document.get("insecure_skip_verify"):
            raise ValidationFailed(
                "insecure_skip_verify is not allowed in FIPS mode.",
                code="fips_forbids_skip_verify",
                errors={"insecure_skip_verify": ["Not allowed when the service runs in FIPS mode."]},
            )
        password = document.get("password")
        if password is not None:
            document["password"] = self.check_reference(password)
        if document.get("auth") is not None:
            document["auth"] = check_auth_references(document["auth"], self.check_reference)
        return self._write(scope, document, actor=actor, if_match=if_match)

    def delete(self, scope: str, *, actor: str, if_match: str | None) -> None:
        with self.db.transaction() as session:
            row = session.execute(
                sa.select(SmtpSettings).where(SmtpSettings.scope == scope).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                raise NotFound("No settings are stored at this level.", code="settings_not_found")
            current = StoredSettings.of(row)
            if if_match is not None and not etag_matches(if_match, current.etag):
                raise PreconditionFailed("The settings changed since they were read: fetch them again.")
            session.delete(row)
            audit.record(session, actor=actor, action="smtp_settings.delete", target=scope, before=redact(current.document))
            announce(session, SETTINGS)

    def _write(self, scope: str, document: dict[str, Any], *, actor: str, if_match: str | None) -> StoredSettings:
        for attempt in range(2):
            try:
                with self.db.transaction() as session:
                    stored = self._write_in(session, scope, document, actor=actor, if_match=if_match)
                return stored
            except IntegrityError:
                # Two first writes of the same level raced; the loser retries
                # as an update (and then honours If-Match against the winner).
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _write_in(
        self, session: Session, scope: str, document: dict[str, Any], *, actor: str, if_match: str | None
    ) -> StoredSettings:
        row = session.execute(
            sa.select(SmtpSettings).where(SmtpSettings.scope == scope).with_for_update()
        ).scalar_one_or_none()
        current = StoredSettings.of(row) if row else None
        if if_match is not None and (current is None or not etag_matches(if_match, current.etag)):
            raise PreconditionFailed("The settings changed since they were read: fetch them again.")
        system = None
        if scope != SYSTEM_SCOPE:
            system_row = session.get(SmtpSettings, SYSTEM_SCOPE)
            system = system_row.document if system_row else {}
        document = self._seal_password(scope, document, current, system)
        document = self._seal_auth(scope, document, current)
        effective = {**SYSTEM_DEFAULTS, **(system or {}), **document}
        errors = credential_errors(effective, own=document)
        if errors:
            raise ValidationFailed(errors=errors)
        now = utcnow()
        if row is None:
            row = SmtpSettings(scope=scope, document=document, version=1, updated_at=now, updated_by=actor)
            session.add(row)
            session.flush()
        else:
            row.document = document
            row.version = current.version + 1
            row.updated_at = now
            row.updated_by = actor
        audit.record(
            session,
            actor=actor,
            action="smtp_settings.put",
            target=scope,
            before=redact(current.document) if current else None,
            after=redact(document),
        )
        announce(session, SETTINGS)
        return StoredSettings(scope, copy.deepcopy(document), row.version, now, actor)

    def _seal_password(
        self,
        scope: str,
        document: dict[str, Any],
        current: StoredSettings | None,
        system: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Encrypt a new plaintext value, or keep the stored one under the round-trip rule."""
        password = document.get("password")
        if not password or password.get("source") != "plaintext":
            return document
        stored = current.document.get("password") if current else None
        stored_plain = stored if stored and stored.get("source") == "plaintext" else None
        if "value" in password:
            version = int(stored_plain.get("version", 0)) + 1 if stored_plain else 1
            sealed = {
                "source": "plaintext",
                "ciphertext": self.keyring.encrypt(password["value"], plaintext_context(scope)),
                "version": str(version),
            }
            return {**document, "password": sealed}
        if stored_plain is None:
            raise ValidationFailed(
                "There is no stored password to keep: send the password value.",
                code="password_required",
                errors={"password": ["No stored password at this level: send {\"source\": \"plaintext\", \"value\": ...}."]},
            )
        before = {**SYSTEM_DEFAULTS, **(system or {}), **current.document}
        after = {**SYSTEM_DEFAULTS, **(system or {}), **document}
        changed = [name for name in DESTINATION_FIELDS if before.get(name) != after.get(name)]
        if changed:
            raise ValidationFailed(
                f"The stored password is only kept while {', '.join(DESTINATION_FIELDS)} are unchanged "
                f"({', '.join(changed)} changed): send the password again.",
                code="password_required",
                errors={"password": [f"Send the password again: {', '.join(changed)} changed."]},
            )
        return {**document, "password": dict(stored_plain)}


    def _seal_auth(self, scope: str, document: dict[str, Any], current: StoredSettings | None) -> dict[str, Any]:
        """Encrypt new plaintext OAuth2 secrets, or keep stored ones while the token endpoint and client are unchanged."""
        auth = document.get("auth")
        if not is_oauth2(document):
            return document
        stored_auth = (current.document.get("auth") if current else None) or {}
        sealed = dict(auth)
        for name in SECRET_FIELDS:
            reference = auth.get(name)
            if not reference or reference.get("source") != "plaintext":
                continue
            stored = stored_auth.get(name) if isinstance(stored_auth.get(name), dict) else None
            stored_plain = stored if stored and stored.get("source") == "plaintext" else None
            if "value" in reference:
                version = int(stored_plain.get("version", 0)) + 1 if stored_plain else 1
                sealed[name] = {
                    "source": "plaintext",
                    "ciphertext": self.keyring.encrypt(reference["value"], auth_secret_context(scope, name)),
                    "version": str(version),
                }
                continue
            changed = kept_auth_secret_changes(stored_auth, auth) if stored_plain else None
            if stored_plain is None or changed:
                reason = f"{', '.join(changed)} changed" if changed else "no stored value at this level"
                raise ValidationFailed(
                    f"The stored {name} is only kept while the token endpoint and client are unchanged ({reason}): send it again.",
                    code="password_required",
                    errors={"auth": {name: [f"Send the value again: {reason}."]}},
                )
            sealed[name] = dict(stored_plain)
        return {**document, "auth": sealed}


def kept_auth_secret_changes(stored_auth: dict[str, Any], auth: dict[str, Any]) -> list[str]:
    """The fields naming the token endpoint and client that differ between two ``auth`` objects."""
    before, after = with_defaults(stored_auth), with_defaults(auth)
    return [name for name in ENDPOINT_FIELDS if before.get(name) != after.get(name)]


def check_auth_references(auth: dict[str, Any], check_reference: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Each secret reference inside ``auth``, checked like ``password`` (types, connections, allow-lists)."""
    checked = dict(auth)
    for name in SECRET_FIELDS:
        reference = auth.get(name)
        if reference is None:
            continue
        try:
            if reference.get("source") == "plaintext":
                checked[name] = check_auth_plaintext(reference)
            else:
                checked[name] = check_reference(reference)
        except ValidationError as exc:
            raise ValidationFailed(errors={"auth": {name: exc.messages}}) from None
        except ValidationFailed as exc:
            # The secrets layer words its errors for ``password``; they are this field's.
            exc.errors = {"auth": {name: (exc.errors or {}).get("password", exc.errors)}}
            raise
    return checked


def _messages(exc: ValidationError) -> dict[str, Any]:
    messages = exc.messages
    if isinstance(messages, list):
        return {"_schema": messages}
    return messages
