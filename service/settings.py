"""Settings as they are read: one level as stored, and the effective settings senders poll."""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

import sqlalchemy as sa

from service.board import Applied
from service.db import Database, SmtpSettings, is_unavailable, iso_utc
from service.errors import DatabaseUnavailable
from service.propagation import Propagator
from service.settings_model import (
    PASSWORD_AUTH,
    SYSTEM_SCOPE,
    Effective,
    EffectiveView,
    StoredSettings,
    etag_of,
    merge,
    redact,
    redact_auth,
    redact_password,
    tenant_scope,
    warnings_for,
)
from service.schemas import SETTINGS_FIELDS, SYSTEM_DEFAULTS

#: Settings rows a worker reads at once and keeps for effective reads after each change
#: (every tenant of a large installation fits); beyond, rows are read as they are asked for.
ROW_CACHE_SIZE = 20_000
#: Merged effective documents (with their renderings) a worker keeps, oldest out first: as many as
#: rows, so that senders of 10,000 tenants polling at random are answered from memory as one tenant
#: is. Each costs about 3 KB, held only for tenants actually read.
EFFECTIVE_CACHE_SIZE = 20_000
#: Renderings kept per effective document (one per password value and version seen).
VIEWS_PER_EFFECTIVE = 4


class SettingsService:
    """Reads settings documents: one level as stored, and the effective settings senders poll.

    Effective reads come from rows and merged documents kept in the process.
    Every write announces itself (``service.propagation``); ``sync``, called
    first by every effective read, applies what any worker or instance
    announced, which calls ``forget`` after a settings change. Reads of one
    level (``get``) always ask the database.
    """

    def __init__(self, db: Database, propagator: Propagator) -> None:
        self.db = db
        self.sync = propagator.poll
        propagator.subscribe(self._apply)
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

    def _apply(self, applied: Applied) -> None:
        if applied.settings:
            self.forget()

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
        effective = merge(rows.get(SYSTEM_SCOPE), rows.get(scope) if scope else None, tenant)
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
        effective = merge(picked[SYSTEM_SCOPE], picked[scope] if scope else None, tenant)
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
        return EffectiveView(etag_of(effective.base_tag, tag_parts), json.dumps(body).encode())

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

