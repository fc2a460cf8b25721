"""Rotation events pushed by secret managers: Azure Event Grid deliveries (Event Grid schema and CloudEvents 1.0)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets as random
from typing import Any, Mapping

import sqlalchemy as sa

from service import audit
from service.db import Database, EventKey, utcnow
from service.errors import Conflict, Unauthorized, ValidationFailed
from service.secrets import SecretsService

SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
#: Content types a delivery may carry: the Event Grid schema, and CloudEvents in structured and batch mode.
EVENT_GRID_JSON = "application/json"
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"
CONTENT_TYPES = (EVENT_GRID_JSON, CLOUDEVENT, CLOUDEVENT_BATCH)
#: What a key compares with when the connection has none, so that both cases take the same time.
_NO_KEY = hashlib.sha256(b"no event key").hexdigest()


@dataclasses.dataclass(frozen=True)
class Event:
    """One delivered event, whichever schema carried it."""

    id: str
    type: str
    source: str | None
    subject: str | None
    data: Mapping[str, Any]


def hash_key(key: str) -> str:
    # Keys carry 256 bits of entropy: a fast hash is as strong as a slow one here.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse(document: Any, content_type: str) -> list[Event]:
    """The events of a delivery; 422 ``validation_failed`` with per-event, per-field messages."""
    if content_type == CLOUDEVENT:
        if not isinstance(document, dict):
            raise ValidationFailed(errors={"_schema": ["A CloudEvent is a JSON object."]})
        problems = _cloudevent_errors(document)
        if problems:
            raise ValidationFailed(errors=problems)
        return [_cloudevent(document)]
    if not isinstance(document, list):
        raise ValidationFailed(errors={"_schema": ["A delivery is a JSON array of events."]})
    events: list[Event] = []
    errors: dict[str, Any] = {}
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            errors[str(index)] = {"_schema": ["An event is a JSON object."]}
            continue
        # Event Grid may deliver CloudEvents as application/json too: the attributes tell.
        cloud = content_type == CLOUDEVENT_BATCH or "specversion" in item
        problems = _cloudevent_errors(item) if cloud else _event_grid_errors(item)
        if problems:
            errors[str(index)] = problems
        else:
            events.append(_cloudevent(item) if cloud else _event_grid(item))
    if errors:
        raise ValidationFailed(errors=errors)
    return events


def _strings(document: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, list[str]]:
    errors = {name: ["Required: a non-empty string."] for name in required if not _text(document.get(name))}
    errors.update(
        {name: ["Must be a string."] for name in optional if document.get(name) is not None and not isinstance(document[name], str)}
    )
    if "data" in document and document["data"] is not None and not isinstance(document["data"], dict):
        errors["data"] = ["Must be a JSON object."]
    return errors


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _event_grid_errors(item: Mapping[str, Any]) -> dict[str, list[str]]:
    return _strings(item, ("id", "eventType", "eventTime"), ("topic", "subject", "dataVersion", "metadataVersion"))


def _cloudevent_errors(item: Mapping[str, Any]) -> dict[str, list[str]]:
    errors = _strings(item, ("id", "source", "type"), ("subject", "time"))
    if item.get("specversion") != "1.0":
        errors["specversion"] = ['Must be "1.0".']
    return errors


def _event_grid(item: Mapping[str, Any]) -> Event:
    return Event(item["id"], item["eventType"], item.get("topic"), item.get("subject"), item.get("data") or {})


def _cloudevent(item: Mapping[str, Any]) -> Event:
    return Event(item["id"], item["type"], item["source"], item.get("subject"), item.get("data") or {})


class RotationEvents:
    """Event keys per connection, and what a delivery of events does."""

    def __init__(self, db: Database, secrets: SecretsService) -> None:
        self.db = db
        self.secrets = secrets

    def create_key(self, name: str, *, actor: str) -> str:
        """Create or replace the connection's event key; returns the key (shown once, stored as a hash)."""
        record = self.secrets.connections.get(name)  # 404 provider_not_found
        self._require_events(record)
        key = random.token_urlsafe(32)
        with self.db.transaction() as session:
            row = session.get(EventKey, name)
            replaced = row is not None
            if row is None:
                session.add(EventKey(provider=name, key_hash=hash_key(key), created_at=utcnow(), created_by=actor))
            else:
                row.key_hash, row.created_at, row.created_by = hash_key(key), utcnow(), actor
            audit.record(
                session,
                actor=actor,
                action="secret_provider.event_key",
                target=f"secret_provider:{name}",
                after={"event_key": "[redacted]", "replaced": replaced},
            )
        return key

    def authenticate(self, name: str, key: str | None) -> dict[str, Any]:
        """The connection whose event key ``key`` is; 401 otherwise (an unknown connection alike)."""
        with self.db.read() as session:
            stored = session.scalar(sa.select(EventKey.key_hash).where(EventKey.provider == name[:128]))
        digest = hash_key(key or "")
        matches = hmac.compare_digest(digest, stored or _NO_KEY) and stored is not None and bool(key)
        if not matches:
            raise Unauthorized("The event key is missing or wrong.", code="unauthorized")
        record = self.secrets.connection(name)
        if record is None:
            raise Unauthorized("The event key is missing or wrong.", code="unauthorized")
        self._require_events(record)
        return record

    def _require_events(self, record: Mapping[str, Any]) -> None:
        kind = record["document"]["type"]
        provider = self.secrets.registry.get(kind)
        if provider is None or not provider.publishes_events:
            raise Conflict(f"A {kind} connection publishes no rotation events.", code="events_not_supported")

    def validated(self, name: str, event: Event) -> dict[str, Any]:
        """Event Grid's subscription handshake: echo the validation code; audited."""
        code = event.data.get("validationCode")
        if not _text(code):
            raise ValidationFailed(errors={"data": {"validationCode": ["Required: a non-empty string."]}})
        with self.db.transaction() as session:
            audit.record(
                session,
                actor=f"event:{name}",
                action="rotation_event.subscription_validated",
                target=f"secret_provider:{name}",
                after={"id": event.id, "type": event.type, "source": event.source},
            )
        return {"validationResponse": code}

    def handshake(self, name: str, origin: str) -> None:
        """The CloudEvents webhook handshake (``OPTIONS`` with ``WebHook-Request-Origin``); audited."""
        with self.db.transaction() as session:
            audit.record(
                session,
                actor=f"event:{name}",
                action="rotation_event.webhook_handshake",
                target=f"secret_provider:{name}",
                after={"origin": origin[:200]},
            )

    def deliver(self, name: str, record: Mapping[str, Any], events: list[Event]) -> dict[str, Any]:
        """Audit every event, then mark each secret that got a new version for refetch."""
        provider = self.secrets.registry.get(record["document"]["type"])
        assert provider is not None  # authenticate() checked it
        rotated: list[str] = []
        with self.db.transaction() as session:
            for event in events:
                secret = provider.rotated_secret(record["document"], event.type, event.data)
                if secret is not None and secret not in rotated:
                    rotated.append(secret)
                audit.record(
                    session,
                    actor=f"event:{name}",
                    action="rotation_event",
                    target=f"secret_provider:{name}",
                    after={
                        "id": event.id[:200],
                        "type": event.type[:200],
                        "subject": (event.subject or "")[:300] or None,
                        "secret": secret,
                        "outcome": "marked_for_refetch" if secret is not None else "ignored",
                    },
                )
        for secret in rotated:
            mark_for_refetch(self.secrets, name, secret, actor=f"event:{name}")
        return {"received": len(events), "marked_for_refetch": rotated}


def mark_for_refetch(secrets: SecretsService, provider: str, secret: str, *, actor: str) -> None:
    """Make every worker and instance read ``secret`` from its manager again: the same path as
    ``POST /v1/secret-cache/invalidate``, so a rotation event behaves exactly like it."""
    secrets.invalidate(provider, secret, actor=actor)
