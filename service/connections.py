"""Secret-manager connections: validated by their provider type, audited, shared by instances."""

from __future__ import annotations

import copy
import re
from typing import Any

import sqlalchemy as sa
from marshmallow import ValidationError

from providers.registry import ProviderRegistry
from service import audit
from service.db import Database, SecretProviderConnection, iso_utc, utcnow
from service.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from service.propagation import announce, connection_edited
from service.settings_model import etag_matches, etag_of, scopes_whose_password

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INTERNAL = "internal"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise NotFound("No such connection: names are letters, digits, '.', '_' and '-'.", code="provider_not_found")
    return name


class ConnectionService:
    """CRUD on connection documents. Credentials in them are only env/file/internal references."""

    def __init__(self, db: Database, registry: ProviderRegistry) -> None:
        self.db = db
        self.registry = registry

    def all(self) -> dict[str, dict[str, Any]]:
        """Every connection: name → {document, version, updated_at, updated_by}."""
        with self.db.read() as session:
            rows = session.scalars(sa.select(SecretProviderConnection).order_by(SecretProviderConnection.name))
            return {row.name: self._record(row) for row in rows}

    def get(self, name: str) -> dict[str, Any]:
        with self.db.read() as session:
            row = session.get(SecretProviderConnection, check_name(name))
            if row is None:
                raise NotFound(f"No connection named {name}.", code="provider_not_found")
            return self._record(row)

    def put(self, name: str, payload: Any, *, actor: str, if_match: str | None) -> tuple[dict[str, Any], bool]:
        check_name(name)
        document = self.load(name, payload)
        with self.db.transaction() as session:
            row = session.execute(
                sa.select(SecretProviderConnection).where(SecretProviderConnection.name == name).with_for_update()
            ).scalar_one_or_none()
            before = self._record(row) if row else None
            if if_match is not None and (before is None or not etag_matches(if_match, before["etag"])):
                raise PreconditionFailed("The connection changed since it was read: fetch it again.")
            if before is not None and before["document"]["type"] != document["type"]:
                users = _settings_using(session, name)
                if users:
                    raise Conflict(
                        f"The connection is used by the settings of {', '.join(users)}; its type cannot change.",
                        code="provider_in_use",
                    )
            now = utcnow()
            if row is None:
                row = SecretProviderConnection(name=name, document=document, version=1, updated_at=now, updated_by=actor)
                session.add(row)
                session.flush()
            else:
                row.document = document
                row.version += 1
                row.updated_at = now
                row.updated_by = actor
            audit.record(
                session,
                actor=actor,
                action="secret_provider.put",
                target=f"secret_provider:{name}",
                before=before["document"] if before else None,
                after=copy.deepcopy(document),
            )
            announce(session, *connection_edited(name))
            return self._record(row), before is None

    def delete(self, name: str, *, actor: str, if_match: str | None) -> None:
        check_name(name)
        if name == INTERNAL:
            raise Conflict("The internal connection cannot be deleted; edit its allowed_secrets.", code="provider_in_use")
        with self.db.transaction() as session:
            row = session.execute(
                sa.select(SecretProviderConnection).where(SecretProviderConnection.name == name).with_for_update()
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"No connection named {name}.", code="provider_not_found")
            record = self._record(row)
            if if_match is not None and not etag_matches(if_match, record["etag"]):
                raise PreconditionFailed("The connection changed since it was read: fetch it again.")
            users = _settings_using(session, name)
            if users:
                raise Conflict(
                    f"The connection is used by the settings of {', '.join(users)}.",
                    code="provider_in_use",
                    extra={"used_by": users},
                )
            session.delete(row)
            audit.record(
                session, actor=actor, action="secret_provider.delete", target=f"secret_provider:{name}", before=record["document"]
            )
            announce(session, *connection_edited(name))

    def load(self, name: str, payload: Any) -> dict[str, Any]:
        """Validate a connection document with its type's schema."""
        if not isinstance(payload, dict):
            raise ValidationFailed(errors={"_schema": ["A connection document is a JSON object."]})
        kind = payload.get("type")
        provider = self.registry.get(kind) if isinstance(kind, str) else None
        if provider is None or provider.connection_schema is None:
            raise ValidationFailed(
                errors={"type": [f"Must be one of: {', '.join(self.registry.connection_types())}."]}
            )
        if (kind == INTERNAL) != (name == INTERNAL):
            raise ValidationFailed(
                errors={"type": ["The internal store has exactly one connection, named 'internal'."]}
            )
        try:
            return provider.connection_schema().load(payload)
        except ValidationError as exc:
            raise ValidationFailed(errors=exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}) from None

    @staticmethod
    def _record(row: SecretProviderConnection) -> dict[str, Any]:
        return {
            "name": row.name,
            "document": copy.deepcopy(row.document),
            "version": row.version,
            "updated_at": iso_utc(row.updated_at),
            "updated_by": row.updated_by,
            "etag": etag_of("connection", row.name, row.version, row.updated_at.isoformat()),
        }


def view(record: dict[str, Any]) -> dict[str, Any]:
    """The API representation: the document (references only) and its metadata."""
    return {
        "name": record["name"],
        **record["document"],
        "version": record["version"],
        "updated_at": record["updated_at"],
        "updated_by": record["updated_by"],
    }


def _settings_using(session: Any, name: str) -> list[str]:
    def uses(password: dict[str, Any]) -> bool:
        return (INTERNAL if password.get("source") == INTERNAL else password.get("provider")) == name

    return scopes_whose_password(session, uses)
