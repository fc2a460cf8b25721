"""Password references: checking them on submit and resolving them for senders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from marshmallow import ValidationError
from sqlalchemy.orm import Session

from providers.base import (
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    SecretNotAllowed,
    SecretProvider,
    SecretValue,
    secret_allowed,
)
from providers.cache import CacheKey, Resolution, SecretCache
from providers.registry import ProviderRegistry
from service import audit
from service.connections import INTERNAL, ConnectionService
from service.access_log import AccessLog
from service.crypto import KeyRing
from service.db import Database, is_unavailable
from service.errors import ApiError, PasswordUnavailable, ValidationFailed
from service.internal_store import InternalStore
from service.observability import SECRET_FETCHES
from service.propagation import Applied, Propagator, announce, refetch

log = logging.getLogger("smtpconf.secrets")
EXPIRY_WARNING = dt.timedelta(days=14)
#: Names one listing answers with, at most (pickers, not exports).
MAX_LISTED_NAMES = 1000
MAX_PLANS = 256


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


@dataclasses.dataclass(eq=False)
class Plan:
    """How one stored reference is resolved under one snapshot of the connections."""

    key: CacheKey
    fetch: Callable[[], SecretValue]
    ttl: float
    max_stale: float
    #: How ``password_access`` names the secret.
    label: str
    source: str
    #: The fields ``password_fields`` last returned: (resolution, expiry warning due, fields).
    last_fields: tuple[Resolution, bool, dict[str, Any]] | None = dataclasses.field(default=None, repr=False)


class SecretsService:
    """Checks password references against provider types and connections, and resolves them.

    Resolution goes through one ``SecretCache`` per process. What any worker
    or instance changes (connection edits, invalidations, rotations in the
    internal store) arrives through ``propagation``; ``sync`` applies it before
    a request uses the caches, and marks only the values concerned for refetch.
    """

    def __init__(
        self,
        db: Database,
        keyring: KeyRing,
        registry: ProviderRegistry,
        *,
        propagator: Propagator,
        cache: SecretCache | None = None,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.registry = registry
        self.connections = ConnectionService(db, registry)
        self.store = InternalStore(db, keyring)
        self.cache = cache or SecretCache()
        self.propagator = propagator
        self._lock = threading.Lock()
        self.access_log = AccessLog(db)
        self._snapshot: dict[str, dict[str, Any]] | None = None
        self._last_snapshot: dict[str, dict[str, Any]] | None = None
        self._snapshot_flight = threading.Lock()
        self._connections_epoch = 0
        # How each reference resolves under the current snapshot, emptied with it.
        # Keyed by identity: references come from settings documents kept
        # between requests, and each entry holds its reference so that the id
        # cannot be reused by another object while the entry lives.
        self._plans: dict[int, tuple[Mapping[str, Any], Plan]] = {}
        self._providers: dict[str, tuple[int, SecretProvider]] = {}
        self._settings_listeners: list[Callable[[], None]] = []
        propagator.subscribe(self._apply)

    # coherence across workers and instances

    def sync(self) -> None:
        """Apply what any worker or instance announced since this process last looked."""
        self.propagator.poll()

    def _apply(self, applied: Applied) -> None:
        if applied.connections:
            with self._lock:
                self._snapshot, self._plans = None, {}
                self._connections_epoch += 1
        if applied.all_secrets:
            self.cache.invalidate()
        elif applied.connection_slots or applied.secret_slots:
            self.cache.invalidate(match=lambda key: applied.selects(key.provider, key.secret))
        if applied.settings:
            for listener in self._settings_listeners:
                listener()

    def on_settings_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when settings changed (through any worker or instance)."""
        self._settings_listeners.append(listener)

    def refetch_everywhere(
        self,
        provider: str | None,
        secret: str | None = None,
        *,
        also: Callable[[Session, int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Mark cached values (all, ``provider``'s, or its ``secret`` in every version) for refetch on
        every worker and instance; ``also(session, generation, marked)`` runs in the same transaction.
        Returns (values marked in this process, the new cache generation)."""
        marked = self.cache.invalidate(provider=provider, secret=secret)
        with self.db.transaction() as session:
            generation = announce(session, refetch(provider, secret))["cache_generation"]
            if also is not None:
                also(session, generation, marked)
        return marked, generation

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every connection, as every worker sees them after the last announced change."""
        self.sync()
        return self._connections()

    def connection(self, name: str) -> dict[str, Any] | None:
        """The connection as every worker sees it after the last announced change."""
        self.sync()
        return self._connections().get(name)

    def _connections(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            snapshot, epoch = self._snapshot, self._connections_epoch
        if snapshot is not None:
            return snapshot
        with self._snapshot_flight:  # one read of the table for all threads that need it
            with self._lock:
                if self._snapshot is not None and self._connections_epoch == epoch:
                    return self._snapshot
                epoch = self._connections_epoch
            try:
                snapshot = self.connections.all()
            except Exception as exc:
                # The database is down: resolve with the connections last read.
                if not is_unavailable(exc) or self._last_snapshot is None:
                    raise
                return self._last_snapshot
            self._last_snapshot = snapshot
            with self._lock:
                # A read that an edit overtook must not be kept as current.
                if self._connections_epoch == epoch:
                    self._snapshot = snapshot
        return snapshot

    def provider(self, name: str, record: dict[str, Any]) -> SecretProvider:
        with self._lock:
            held = self._providers.get(name)
            if held and held[0] == record["version"]:
                return held[1]
            cls = self.registry.get(record["document"]["type"])
            if cls is None:
                raise ProviderMisconfigured(f"provider type {record['document']['type']!r} is not installed")
            provider = cls(record["document"], ProviderContext(credential=self.credential, internal_store=self.store))
            self._providers[name] = (record["version"], provider)
        if held:
            held[1].close()
        return provider

    # credentials the service itself needs to reach a manager

    def credential(self, ref: Mapping[str, str]) -> str:
        """The value of ``{"env": NAME}``, ``{"file": PATH}`` or ``{"internal": SECRET}``."""
        ((kind, where),) = ref.items()
        if kind == "env":
            value = os.environ.get(where)
            if value is None:
                raise ProviderMisconfigured(f"environment variable {where} is not set")
            return value
        if kind == "file":
            try:
                return Path(where).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ProviderMisconfigured(f"credential file {where} cannot be read: {exc.strerror}") from None
        if kind == "internal":
            return self.store.read(where).value
        raise ProviderMisconfigured(f"unknown credential reference kind {kind!r}")

    # submit-time checks

    def check_reference(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Validate a reference with its type's schema and its connection's allow-list."""
        provider = self.registry.get(reference["source"])
        if provider is None:
            raise ValidationFailed(
                errors={"password": {"source": [f"Unknown source; installed: {', '.join(self.registry.sources())}."]}}
            )
        try:
            loaded = provider.reference_schema().load(reference)
        except ValidationError as exc:
            raise ValidationFailed(errors={"password": exc.messages}) from None
        if not provider.needs_connection:
            return loaded
        name = connection_name(loaded)
        if not name:
            raise ValidationFailed(errors={"password": {"provider": ["Name the connection to read it from."]}})
        record = self.connection(name)
        if record is None or record["document"]["type"] != loaded["source"]:
            raise ValidationFailed(
                errors={"password": {"provider": [f"No {loaded['source']} connection named {name!r}."]}}
            )
        secret = provider.secret_name(loaded)
        if not secret_allowed(secret, record["document"].get("allowed_secrets", [])):
            raise ValidationFailed(
                f"The connection {name!r} does not allow the secret {secret!r}.",
                code="secret_not_allowed",
                errors={"password": [f"Not in the allowed_secrets of connection {name!r}."]},
            )
        return loaded

    # resolution

    def resolve(self, reference: Mapping[str, Any], *, refresh: bool = False) -> ResolvedPassword:
        """The secret a manager reference names, or 503 ``password_unavailable``."""
        _plan, resolution = self.resolution(reference, refresh)
        return ResolvedPassword(
            value=resolution.secret.value,
            source=str(reference.get("source")),
            version=resolution.secret.version,
            resolved_at=dt.datetime.fromtimestamp(resolution.fetched_at, dt.timezone.utc),
            stale=resolution.stale,
            from_cache=resolution.from_cache,
            expires_at=resolution.secret.expires_at,
        )

    def resolution(self, reference: Mapping[str, Any], refresh: bool = False) -> tuple[Plan, Resolution]:
        """How a manager reference resolves, and the cache's answer for it."""
        self.sync()
        plan = self._plan(reference, str(reference.get("source")))
        try:
            return plan, self.cache.resolve(plan.key, plan.fetch, plan.ttl, plan.max_stale, refresh=refresh)
        except ProviderError as exc:
            raise PasswordUnavailable(
                f"The password cannot be read from {plan.key.provider!r}: {exc.message}", extra={"reason": exc.code}
            ) from None

    def _plan(self, reference: Mapping[str, Any], source: str) -> Plan:
        """Connection, allow-list, cache key and provider for a reference: worked out once per snapshot."""
        # Read without the lock: the dict is replaced, never emptied in place, when the snapshot goes.
        held = self._plans.get(id(reference))
        if held is not None and held[0] is reference:
            return held[1]
        name = connection_name(reference)
        snapshot = self._connections()
        record = snapshot.get(name) if name else None
        cls = self.registry.get(source)
        if record is None or cls is None:
            if name:
                self.cache.purge(provider=name)  # the connection is gone: so are its values
            raise PasswordUnavailable(f"The {source} connection {name!r} is not configured.", extra={"reason": "provider_not_found"})
        document = record["document"]
        secret = cls.secret_name(reference)
        if not secret_allowed(secret, document.get("allowed_secrets", [])):
            self.cache.purge(provider=name, secret=secret)  # no longer allowed: never served again, not even stale
            raise PasswordUnavailable(
                f"The connection {name!r} does not allow the secret {secret!r}.", extra={"reason": SecretNotAllowed.code}
            )
        variant = json.dumps({k: v for k, v in reference.items() if k not in ("source", "provider")}, sort_keys=True)
        provider = self.provider(name, record)

        def fetch() -> Any:
            try:
                value = provider.fetch(reference)
            except ProviderError as exc:
                SECRET_FETCHES.labels(source, exc.code).inc()
                log.warning("secret fetch failed", extra={"provider": name, "source": source, "error_code": exc.code})
                raise
            SECRET_FETCHES.labels(source, "ok").inc()
            return value

        plan = Plan(
            CacheKey(provider=name, secret=secret, version=variant),
            fetch,
            float(document.get("cache_ttl_seconds", 300)),
            float(document.get("max_stale_seconds", 0)),
            secret_label(reference),
            source,
        )
        with self._lock:
            # A snapshot dropped meanwhile may have held another provider or allow-list.
            if self._snapshot is snapshot:
                if len(self._plans) >= MAX_PLANS:
                    self._plans = {}  # candidate checks bring new references every time
                self._plans[id(reference)] = (reference, plan)
        return plan

    # the security team's operations

    def invalidate(self, provider: str | None, secret: str | None, *, actor: str) -> dict[str, int]:
        """Mark cached values for refetch on every worker and instance; audited in the same transaction."""
        if provider is not None:
            self.connections.get(provider)  # 404 provider_not_found for a name that does not exist

        def record(session: Session, generation: int, marked: int) -> None:
            audit.record(
                session,
                actor=actor,
                action="secret_cache.invalidate",
                target=f"secret_cache:{provider or '*'}:{secret or '*'}",
                after={"provider": provider, "secret": secret, "invalidated": marked, "generation": generation},
            )

        marked, generation = self.refetch_everywhere(provider, secret, also=record)
        return {"invalidated": marked, "generation": generation}

    def list_names(self, name: str, prefix: str) -> dict[str, Any]:
        """Secret names the connection's manager lists under ``prefix`` and its ``allowed_secrets`` allow."""
        record = self.connections.get(name)
        allowed = record["document"].get("allowed_secrets", [])
        try:
            listing = self.provider(name, record).list_secrets(
                prefix, accept=lambda secret: secret_allowed(secret, allowed), limit=MAX_LISTED_NAMES
            )
        except ProviderError as exc:
            log.warning("secret listing failed", extra={"provider": name, "error_code": exc.code})
            raise ApiError(exc.message, status=exc.status, code=exc.code, title="The secret manager cannot list") from None
        return {"names": listing.names, "truncated": listing.truncated}

    def close(self) -> None:
        with self._lock:
            providers, self._providers = self._providers, {}
        for _version, provider in providers.values():
            provider.close()


def connection_name(reference: Mapping[str, Any]) -> str | None:
    return INTERNAL if reference.get("source") == INTERNAL else reference.get("provider")


def secret_label(reference: Mapping[str, Any]) -> str:
    if reference.get("source") == "plaintext":
        return "plaintext"
    parts = [connection_name(reference), reference.get("secret") or reference.get("path"), reference.get("key")]
    parts += [reference.get("safe"), reference.get("object")]
    return "/".join(str(p) for p in parts if p)
