"""The internal secret store: named secrets with versions, encrypted under the key ring."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from providers.base import ProviderAuthError, ProviderUnavailable, SecretNotFound, SecretValue
from service import audit
from service.crypto import DecryptionError, KeyRing
from service.db import Database, InternalSecret, InternalSecretVersion, is_unavailable, iso_utc, utcnow
from service.errors import Conflict, NotFound, ValidationFailed
from service.propagation import announce, refetch
from service.rotation import internal_secret_context
from service.settings_model import scopes_whose_password

NAME = re.compile(r"^(?!.*//)(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,255}(?<!/)$")
MAX_VALUE_LENGTH = 8192
#: The connection under which internal secrets are cached.
INTERNAL_CONNECTION = "internal"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise NotFound("No such secret: names are letters, digits, '.', '_', '-' and '/'.", code="secret_not_found")
    return name


class InternalStore:
    """CRUD on internal secrets; values never leave except through ``read``."""

    def __init__(self, db: Database, keyring: KeyRing) -> None:
        self.db = db
        self.keyring = keyring

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as session:
            rows = session.scalars(sa.select(InternalSecret).order_by(InternalSecret.name))
            return [self._meta(row) for row in rows]

    def names(self) -> list[str]:
        """Every secret's name, in name order; never a value."""
        with self.db.read() as session:
            return list(session.scalars(sa.select(InternalSecret.name).order_by(InternalSecret.name)))

    def get(self, name: str) -> dict[str, Any]:
        with self.db.read() as session:
            row = session.get(InternalSecret, check_name(name))
            if row is None:
                raise NotFound(f"No secret named {name}.", code="secret_not_found")
            versions = session.scalars(
                sa.select(InternalSecretVersion)
                .where(InternalSecretVersion.name == name)
                .order_by(InternalSecretVersion.version.desc())
            )
            return {
                **self._meta(row),
                "versions": [
                    {"version": v.version, "created_at": iso_utc(v.created_at), "created_by": v.created_by}
                    for v in versions
                ],
            }

    def put(self, name: str, payload: Any, *, actor: str) -> tuple[dict[str, Any], bool]:
        """Write a new version (a rotation); returns the metadata and whether the secret is new."""
        check_name(name)
        if not isinstance(payload, dict) or set(payload) - {"value"}:
            unknown = sorted(set(payload) - {"value"}) if isinstance(payload, dict) else []
            errors = {field: ["Unknown field."] for field in unknown} or {"_schema": ['The body is {"value": "..."}.']}
            raise ValidationFailed(errors=errors)
        value = payload.get("value")
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_VALUE_LENGTH:
            raise ValidationFailed(errors={"value": [f"A string of 1 to {MAX_VALUE_LENGTH} characters."]})
        now = utcnow()
        with self.db.transaction() as session:
            row = session.execute(
                sa.select(InternalSecret).where(InternalSecret.name == name).with_for_update()
            ).scalar_one_or_none()
            created = row is None
            if row is None:
                row = InternalSecret(name=name, current_version=1, created_at=now, updated_at=now, updated_by=actor)
                session.add(row)
                session.flush()
            else:
                row.current_version += 1
                row.updated_at = now
                row.updated_by = actor
            version = row.current_version
            session.add(
                InternalSecretVersion(
                    name=name,
                    version=version,
                    ciphertext=self.keyring.encrypt(value, internal_secret_context(name, version)),
                    key_id=self.keyring.primary_id,
                    created_at=now,
                    created_by=actor,
                )
            )
            audit.record(
                session,
                actor=actor,
                action="secret.create" if created else "secret.rotate",
                target=f"secret:{name}",
                after={"name": name, "version": version, "value": "[redacted]"},
            )
            announce(session, refetch(INTERNAL_CONNECTION, name))
        return self.get(name), created

    def delete(self, name: str, *, actor: str) -> None:
        with self.db.transaction() as session:
            row = session.get(InternalSecret, check_name(name))
            if row is None:
                raise NotFound(f"No secret named {name}.", code="secret_not_found")
            users = _settings_referencing(session, name)
            if users:
                raise Conflict(
                    f"The secret is referenced by the settings of: {', '.join(users)}.",
                    code="secret_in_use",
                    extra={"used_by": users},
                )
            session.execute(sa.delete(InternalSecretVersion).where(InternalSecretVersion.name == name))
            session.delete(row)
            audit.record(session, actor=actor, action="secret.delete", target=f"secret:{name}", before={"name": name})
            announce(session, refetch(INTERNAL_CONNECTION, name))

    def read(self, name: str, version: int | None = None) -> SecretValue:
        """The value of a version (latest by default), for resolution and credentials."""
        query = sa.select(InternalSecretVersion).where(InternalSecretVersion.name == name)
        if version is None:
            query = query.order_by(InternalSecretVersion.version.desc()).limit(1)
        else:
            query = query.where(InternalSecretVersion.version == version)
        try:
            with self.db.read() as session:
                row = session.scalars(query).first()
        except sa.exc.SQLAlchemyError as exc:
            if not is_unavailable(exc):
                raise
            raise ProviderUnavailable("the database holding the internal store cannot be reached") from None
        if row is None:
            which = f"version {version} of " if version is not None else ""
            raise SecretNotFound(f"{which}internal secret {name!r} does not exist")
        try:
            value = self.keyring.decrypt(row.ciphertext, internal_secret_context(row.name, row.version))
        except DecryptionError as exc:
            # The master keys are the service's credential to its own store.
            raise ProviderAuthError(f"internal secret {name!r} cannot be decrypted: {exc}") from None
        return SecretValue(value=value, version=str(row.version))

    @staticmethod
    def _meta(row: InternalSecret) -> dict[str, Any]:
        return {
            "name": row.name,
            "current_version": row.current_version,
            "created_at": iso_utc(row.created_at),
            "updated_at": iso_utc(row.updated_at),
            "updated_by": row.updated_by,
        }


def _settings_referencing(session: Any, name: str) -> list[str]:
    return scopes_whose_password(session, lambda p: p.get("source") == "internal" and p.get("secret") == name)
