"""SMTP settings: the system level, tenant overrides, and the effective merge."""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import re
import threading
from typing import Any, Callable

import sqlalchemy as sa
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import audit
from service.crypto import KeyRing
from service.db import Database, SmtpSettings, is_unavailable, iso_utc, utcnow
from service.errors import DatabaseUnavailable, NotFound, PreconditionFailed, ValidationFailed
from service.oauth_flows import ENDPOINT_FIELDS, SECRET_FIELDS, with_defaults
from service.propagation import SETTINGS, announce
from service.schemas import SETTINGS_FIELDS, SYSTEM_DEFAULTS, check_auth_plaintext, credential_errors, is_oauth2, load_settings

SYSTEM_SCOPE = "system"
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED_FIELDS = ("host", "port", "from_email")
DESTINATION_FIELDS = ("host", "port", "security", "username")
READ_BACK_PLAINTEXT = {"source": "plaintext", "value_set": True}
PASSWORD_AUTH = {"method": "password"}
#: Hosts whose operators have retired password (basic) SMTP AUTH.
BASIC_AUTH_RETIRED_HOSTS = frozenset({"smtp.office365.com", "smtp-mail.outlook.com"})
#: Settings rows a worker reads at once and keeps for effective reads after each change
#: (every tenant of a large installation fits); beyond, rows are read as they are asked for.
ROW_CACHE_SIZE = 20_000
#: Merged effective documents (with their renderings) a worker keeps, oldest out first.
EFFECTIVE_CACHE_SIZE = 256
#: Renderings kept per effective document (one per password value and version seen).
VIEWS_PER_EFFECTIVE = 4


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
    """An effective document as served: the body, its ETag and its JSON text."""

    body: dict[str, Any]
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


class SettingsService:
    """Reads and writes settings documents; every write is audited in its transaction.

    Effective reads, what senders poll, come from rows and merged documents
    kept in the process. Every write announces itself (``service.propagation``);
    ``sync``, called first by every effective read, applies what any worker or
    instance announced, which calls ``forget`` after a settings change.
    Reads of one level (``get``) always ask the database.
    """

    def __init__(
        self,
        db: Database,
        keyring: KeyRing,
        *,
        fips_mode: bool,
        check_reference: Callable[[dict[str, Any]], dict[str, Any]],
        sync: Callable[[], None],
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.fips_mode = fips_mode
        #: Validates a password reference against its provider type and connection
        #: allow-list; raises ``ApiError``. Supplied by the secrets layer.
        self.check_reference = check_reference
        self.sync = sync
        self._lock = threading.Lock()
        self._rows_flight = threading.Lock()
        # The table as last read (None: not read since the last change). When it
        # held more than ROW_CACHE_SIZE rows, the others are read one by one and
        # kept here too, a level without settings as None.
        self._rows: dict[str, StoredSettings | None] | None = None
        self._complete = False
        self._effective: collections.OrderedDict[str | None, Effective] = collections.OrderedDict()
        # Bumped by forget(): a read that started before must not store what it read.
        self._epoch = 0
        # The last rows and effective documents read, kept through forget() and
        # served (marked stale) when the database cannot be read again.
        self._last_rows: tuple[dict[str, StoredSettings | None], bool] | None = None
        self._last_effective: collections.OrderedDict[str | None, Effective] = collections.OrderedDict()

    def forget(self) -> None:
        """Drop the kept rows and effective documents (settings changed somewhere)."""
        with self._lock:
            self._epoch += 1
            if self._rows is not None:
                self._last_rows = (self._rows, self._complete)
            self._rows = None
            self._effective = collections.OrderedDict()

    def holds_settings(self) -> bool:
        """Whether effective settings can be served from memory (the database was read before)."""
        return self._rows is not None or self._last_rows is not None or bool(self._last_effective)

    # reads

    def get(self, scope: str) -> StoredSettings | None:
        with self.db.read() as session:
            row = session.get(SmtpSettings, scope)
            return StoredSettings.of(row) if row else None

    def effective(self, tenant: str | None) -> Effective:
        """The merged settings of ``tenant`` (``None``: the system level), shared and read-only.

        While the database cannot be read, the last view held in memory is
        served, marked stale; with none, 503 ``database_unavailable``.
        """
        try:
            effective = self._current_effective(tenant)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            effective = self._last_known_effective(tenant)
        else:
            if self._last_effective.get(tenant) is not effective:
                with self._lock:
                    _bounded_put(self._last_effective, tenant, effective, EFFECTIVE_CACHE_SIZE)
        return effective if self.db.reachable else effective.stale_twin

    def _last_known_effective(self, tenant: str | None) -> Effective:
        kept = self._last_effective.get(tenant)
        if kept is not None:
            return kept
        with self._lock:
            last = self._rows, self._complete
            if last[0] is None:
                last = self._last_rows  # type: ignore[assignment]
        scope = None if tenant is None else tenant_scope(tenant)
        wanted = [SYSTEM_SCOPE] if scope is None else [SYSTEM_SCOPE, scope]
        if last is None or not (last[1] or all(name in last[0] for name in wanted)):
            raise DatabaseUnavailable("The database cannot be reached, and these settings are not held in memory.")
        rows = last[0]
        effective = self.merge(rows.get(SYSTEM_SCOPE), rows.get(scope) if scope else None, tenant)
        with self._lock:
            _bounded_put(self._last_effective, tenant, effective, EFFECTIVE_CACHE_SIZE)
        return effective

    def _current_effective(self, tenant: str | None) -> Effective:
        self.sync()
        kept = self._effective.get(tenant)
        if kept is not None:
            return kept
        with self._lock:
            epoch, rows, complete, kept_effective = self._epoch, self._rows, self._complete, self._effective
        if rows is None:
            rows, complete = self._rows_once(epoch)
        scope = None if tenant is None else tenant_scope(tenant)
        wanted = [SYSTEM_SCOPE] if scope is None else [SYSTEM_SCOPE, scope]
        picked = {name: rows.get(name) for name in wanted}
        missing = [] if complete else [name for name in wanted if name not in rows]
        if missing:
            found, _ = self._read_rows(missing)
            picked.update((name, found.get(name)) for name in missing)
            with self._lock:
                if self._epoch == epoch and self._rows is not None:
                    for name in missing:
                        _bounded_put(self._rows, name, picked[name], 2 * ROW_CACHE_SIZE)
        effective = self.merge(picked[SYSTEM_SCOPE], picked[scope] if scope else None, tenant)
        with self._lock:
            if self._epoch == epoch:
                _bounded_put(kept_effective, tenant, effective, EFFECTIVE_CACHE_SIZE)
        return effective

    def _rows_once(self, epoch: int) -> tuple[dict[str, StoredSettings | None], bool]:
        """The whole table for ``epoch``, read by one thread while the others wait for it."""
        with self._rows_flight:
            with self._lock:
                if self._epoch == epoch and self._rows is not None:
                    return self._rows, self._complete
            rows, complete = self._read_rows(None)
            with self._lock:
                if self._epoch == epoch:
                    self._rows, self._complete = rows, complete
            return rows, complete

    def _read_rows(self, scopes: list[str] | None) -> tuple[dict[str, StoredSettings | None], bool]:
        """The rows of ``scopes``, or of the whole table up to ROW_CACHE_SIZE; whether that was all of it."""
        columns = (SmtpSettings.scope, SmtpSettings.document, SmtpSettings.version, SmtpSettings.updated_at, SmtpSettings.updated_by)
        query = sa.select(*columns)
        query = query.where(SmtpSettings.scope.in_(scopes)) if scopes else query.order_by(SmtpSettings.scope).limit(ROW_CACHE_SIZE + 1)
        with self.db.read() as session:
            rows: dict[str, StoredSettings | None] = {row.scope: StoredSettings(*row) for row in session.execute(query)}
        if scopes or len(rows) <= ROW_CACHE_SIZE:
            return rows, True
        del rows[max(rows)]
        return collections.OrderedDict(rows), False  # more rows will be added, and the oldest dropped

    @staticmethod
    def merge(system: StoredSettings | None, tenant: StoredSettings | None, tenant_id: str | None) -> Effective:
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

    def view(self, stored: StoredSettings, *, inherited_from: StoredSettings | None | bool = False) -> dict[str, Any]:
        """The GET representation of one level's document."""
        body = redact(stored.document) or {}
        if stored.scope == SYSTEM_SCOPE:
            body = {**SYSTEM_DEFAULTS, **body}
            body["password"] = redact_password(stored.document.get("password"))
            body["auth"] = redact_auth(body.get("auth")) or dict(PASSWORD_AUTH)
            body["warnings"] = warnings_for(body)
        else:
            system = inherited_from if isinstance(inherited_from, StoredSettings) else None
            merged = {**SYSTEM_DEFAULTS, **(system.document if system else {}), **stored.document}
            body["inherited"] = [name for name in SETTINGS_FIELDS if name not in stored.document]
            body["warnings"] = warnings_for(merged)
        body = {**{name: body[name] for name in SETTINGS_FIELDS if name in body}, **body}
        body["version"] = stored.version
        body["updated_at"] = iso_utc(stored.updated_at)
        body["updated_by"] = stored.updated_by
        return body

    @staticmethod
    def notification_fields(effective: Effective, notification: str) -> dict[str, Any]:
        """What a mail of type ``notification`` carries: Cc and Bcc only for the preferred types."""
        preferred = notification in effective.document["preferred_notifications"]
        return {
            "notification": notification,
            "cc": effective.document["cc"] if preferred else [],
            "bcc": effective.document["bcc"] if preferred else [],
        }

    def effective_view(self, effective: Effective, extra: dict[str, Any] | None = None) -> EffectiveView:
        """The effective document and its ETag (which follows the password version); shared, read-only."""
        key = _flat_key(extra)
        view = effective.views.get(key)
        if view is None:
            view = self._render_effective(effective, dict(extra) if extra else None)
            if len(effective.views) >= VIEWS_PER_EFFECTIVE:
                effective.views.clear()
            effective.views[key] = view
        return view

    def _render_effective(self, effective: Effective, extra: dict[str, Any] | None) -> EffectiveView:
        body = dict(effective.document)
        body["password"] = redact_password(body.get("password"))
        body["auth"] = redact_auth(body.get("auth"))
        body["inherited"] = effective.inherited
        body["warnings"] = warnings_for(effective.document)
        newest = max((s for s in (effective.system, effective.tenant) if s), key=lambda s: s.updated_at, default=None)
        body["version"] = sum(s.version for s in (effective.system, effective.tenant) if s)
        body["updated_at"] = newest.updated_at_text if newest else None
        body["updated_by"] = newest.updated_by if newest else None
        if effective.stale:
            body["settings_stale"] = True
        if extra:
            body["warnings"] = body["warnings"] + [w for w in extra.pop("warnings", []) if w not in body["warnings"]]
            body.update(extra)
        tag_parts = {k: v for k, v in body.items() if k not in ("password", "password_resolved_at")}
        return EffectiveView(body, etag_of(effective.base_tag, tag_parts), json.dumps(body).encode())

    # writes

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

    def tenants(self, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Tenants with an override, in id order, ``limit`` after ``after``; and the next cursor."""
        query = (
            sa.select(SmtpSettings.scope, SmtpSettings.version, SmtpSettings.updated_at, SmtpSettings.updated_by)
            .where(SmtpSettings.scope.startswith("tenant:", autoescape=True))
            .order_by(SmtpSettings.scope)
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(SmtpSettings.scope > tenant_scope(after))
        with self.db.read() as session:
            rows = session.execute(query).all()
        items = [
            {"tenant": scope.removeprefix("tenant:"), "version": version, "updated_at": iso_utc(at), "updated_by": by}
            for scope, version, at, by in rows[:limit]
        ]
        return items, (items[-1]["tenant"] if len(rows) > limit else None)

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


def _bounded_put(kept: collections.OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert, dropping the oldest entries beyond ``size``."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > size:
        kept.popitem(last=False)


def _flat_key(extra: dict[str, Any] | None) -> tuple[Any, ...]:
    """A dictionary key standing for the extra fields (scalars and lists of scalars, in a fixed order)."""
    if not extra:
        return ()
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in extra.items())


def scopes_whose_password(session: Session, matches: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The settings levels whose password reference, or a secret reference in ``auth``, ``matches``."""
    found = []
    for scope, document in session.execute(sa.select(SmtpSettings.scope, SmtpSettings.document)):
        auth = document.get("auth") if isinstance(document.get("auth"), dict) else {}
        references = [document.get("password"), *(auth.get(name) for name in SECRET_FIELDS)]
        if any(isinstance(reference, dict) and matches(reference) for reference in references):
            found.append(scope)
    return found


def _messages(exc: ValidationError) -> dict[str, Any]:
    messages = exc.messages
    if isinstance(messages, list):
        return {"_schema": messages}
    return messages
