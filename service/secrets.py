"""Password references: checking them on submit and resolving them for senders."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from marshmallow import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from providers.base import (
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    SecretNotAllowed,
    SecretProvider,
    SecretValue,
    expires_soon,
    secret_allowed,
)
from providers.cache import CacheKey, Resolution, SecretCache
from providers.registry import ProviderRegistry
from service import audit
from service.connections import INTERNAL, ConnectionService
from service.crypto import DecryptionError, KeyRing
from service.db import Database, PasswordAccess, is_unavailable, iso_utc, utcnow
from service.errors import ApiError, ValidationFailed
from service.internal_store import InternalStore
from service.observability import SECRET_FETCHES
from service.oauth import Token, TokenError, TokenService, secret_field
from service.propagation import Applied, Propagator, announce, refetch
from service.schemas import is_oauth2
from service.settings import auth_scope, auth_secret_context, plaintext_context

log = logging.getLogger("smtpconf.secrets")
EXPIRY_WARNING = dt.timedelta(days=14)
#: Names one listing answers with, at most (pickers, not exports).
MAX_LISTED_NAMES = 1000
#: Seconds between background checks of each manager for ``/readyz``.
READINESS_INTERVAL = 5.0
MAX_PLANS = 256
EFFECTIVE_TOKEN_TIMEOUT = 5.0


class PasswordUnavailable(ApiError):
    status = 503
    code = "password_unavailable"
    title = "The SMTP password cannot be resolved"


class TokenUnavailable(ApiError):
    status = 503
    code = "token_unavailable"
    title = "No OAuth2 access token can be obtained"


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
class _Plan:
    """How one stored reference is resolved under one snapshot of the connections."""

    key: CacheKey
    fetch: Callable[[], SecretValue]
    ttl: float
    max_stale: float
    #: How ``password_access`` names the secret.
    label: str
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
        self.cache.on_outcome = self._observed
        self.propagator = propagator
        self._lock = threading.Lock()
        self._noted: set[tuple[str, str, str, str]] = set()
        self._noting: set[tuple[str, str, str, str]] = set()
        self._snapshot: dict[str, dict[str, Any]] | None = None
        self._last_snapshot: dict[str, dict[str, Any]] | None = None
        self._snapshot_flight = threading.Lock()
        self._connections_epoch = 0
        # How each reference resolves under the current snapshot, emptied with it.
        # Keyed by identity: references come from settings documents kept
        # between requests, and each entry holds its reference so that the id
        # cannot be reused by another object while the entry lives.
        self._plans: dict[int, tuple[Mapping[str, Any], _Plan]] = {}
        self._providers: dict[str, tuple[int, SecretProvider]] = {}
        # What is known of each connection's manager: (monotonic time, reachable, error code).
        self._health: dict[str, tuple[float, bool, str | None]] = {}
        self._checked_at = float("-inf")
        self._checking: set[str] = set()
        self._settings_listeners: list[Callable[[], None]] = []
        propagator.subscribe(self._apply)
        #: OAuth2 access tokens for settings with ``auth.method: oauth2`` (set by the app).
        self.tokens: TokenService | None = None

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

    def connection(self, name: str) -> dict[str, Any] | None:
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

    def _provider(self, name: str, record: dict[str, Any]) -> SecretProvider:
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
        self.sync()
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

    def resolve(self, reference: Mapping[str, Any], scope: str, *, refresh: bool = False) -> ResolvedPassword:
        """The password a stored reference names, or 503 ``password_unavailable``."""
        source = str(reference.get("source"))
        if source == "plaintext":
            return self._plaintext(reference, scope)
        _plan, resolution = self._resolution(reference, source, refresh)
        return ResolvedPassword(
            value=resolution.secret.value,
            source=source,
            version=resolution.secret.version,
            resolved_at=dt.datetime.fromtimestamp(resolution.fetched_at, dt.timezone.utc),
            stale=resolution.stale,
            from_cache=resolution.from_cache,
            expires_at=resolution.secret.expires_at,
        )

    def _resolution(self, reference: Mapping[str, Any], source: str, refresh: bool = False) -> tuple[_Plan, Resolution]:
        self.sync()
        plan = self._plan(reference, source)
        try:
            return plan, self.cache.resolve(plan.key, plan.fetch, plan.ttl, plan.max_stale, refresh=refresh)
        except ProviderError as exc:
            raise PasswordUnavailable(
                f"The password cannot be read from {plan.key.provider!r}: {exc.message}", extra={"reason": exc.code}
            ) from None

    def _plan(self, reference: Mapping[str, Any], source: str) -> _Plan:
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
        provider = self._provider(name, record)

        def fetch() -> Any:
            try:
                value = provider.fetch(reference)
            except ProviderError as exc:
                SECRET_FETCHES.labels(source, exc.code).inc()
                log.warning("secret fetch failed", extra={"provider": name, "source": source, "error_code": exc.code})
                raise
            SECRET_FETCHES.labels(source, "ok").inc()
            return value

        plan = _Plan(
            CacheKey(provider=name, secret=secret, version=variant),
            fetch,
            float(document.get("cache_ttl_seconds", 300)),
            float(document.get("max_stale_seconds", 0)),
            secret_label(reference),
        )
        with self._lock:
            # A snapshot dropped meanwhile may have held another provider or allow-list.
            if self._snapshot is snapshot:
                if len(self._plans) >= MAX_PLANS:
                    self._plans = {}  # candidate checks bring new references every time
                self._plans[id(reference)] = (reference, plan)
        return plan

    def _plaintext(self, reference: Mapping[str, Any], scope: str) -> ResolvedPassword:
        try:
            value = self.keyring.decrypt(reference["ciphertext"], plaintext_context(scope))
        except (DecryptionError, KeyError):
            raise PasswordUnavailable("The stored password cannot be decrypted with the configured master keys.") from None
        return ResolvedPassword(value, "plaintext", reference.get("version"), utcnow())

    def resolve_auth_secret(self, auth: Mapping[str, Any], scope: str, *, refresh: bool = False) -> ResolvedPassword:
        """The client secret, certificate or key of an OAuth2 ``auth`` object, or 503 ``password_unavailable``."""
        name = secret_field(auth)
        reference = auth[name]
        if reference.get("source") != "plaintext":
            return self.resolve(reference, scope, refresh=refresh)
        if "value" in reference:  # candidate settings, not stored yet
            return ResolvedPassword(reference["value"], "plaintext", None, utcnow())
        scope = reference.get("_stored_scope") or scope
        try:
            value = self.keyring.decrypt(reference["ciphertext"], auth_secret_context(scope, name))
        except (DecryptionError, KeyError):
            raise PasswordUnavailable(f"The stored {name} cannot be decrypted with the configured master keys.") from None
        return ResolvedPassword(value, "plaintext", reference.get("version"), utcnow())

    def access_token(
        self, auth: Mapping[str, Any], scope: str, subject: str, *, refresh: bool = False, timeout: float | None = None
    ) -> Token:
        """An access token for the mailbox ``subject``; 503 ``password_unavailable`` or ``token_unavailable``."""
        assert self.tokens is not None
        secret = self.resolve_auth_secret(auth, scope)
        try:
            return self.tokens.get(auth, secret.value, subject, refresh=refresh, timeout=timeout)
        except TokenError as exc:
            raise TokenUnavailable(
                f"No access token: {exc.message}".replace(secret.value, "********"),
                extra={"oauth_error": exc.oauth_error},
            ) from None

    def token_fields(self, effective: Any) -> dict[str, Any]:
        """What ``include_password=true`` adds under OAuth2: the access token, never the client secret or key."""
        document = effective.document
        # Senders must not wait long: a hung endpoint answers 503 within this bound.
        token = self.access_token(document["auth"], auth_scope(effective), str(document["username"]), timeout=EFFECTIVE_TOKEN_TIMEOUT)
        return {
            "password": None,
            "password_version": None,
            "password_resolved_at": None,
            "access_token": token.value,
            "access_token_expires_at": iso_utc(token.expires_at_datetime),
            "sasl_mechanism": "XOAUTH2",
        }

    def password_fields(self, effective: Any, token_name: str) -> dict[str, Any]:
        """The fields ``include_password=true`` adds, and who-read-what bookkeeping."""
        if is_oauth2(effective.document):
            return self.token_fields(effective)
        reference = effective.document.get("password")
        if reference is None:
            return {"password": None, "password_version": None, "password_resolved_at": None}
        source = str(reference.get("source"))
        if source == "plaintext":
            resolved = self._plaintext(reference, password_scope(effective))
            self.note_access(token_name, reference, resolved)
            return _password_fields(resolved.value, resolved.version, resolved.resolved_at, resolved.stale, resolved.expires_at)
        plan, resolution = self._resolution(reference, source)
        secret = resolution.secret
        self._note(token_name, source, plan.label, secret.version)
        # A fresh cache hit is the same Resolution object until the value is fetched
        # again, so its fields are worked out once; only an expiry warning can come due meanwhile.
        soon = expires_soon(secret, within=EXPIRY_WARNING)
        last = plan.last_fields
        if last is not None and last[0] is resolution and last[1] == soon:
            return last[2]
        resolved_at = dt.datetime.fromtimestamp(resolution.fetched_at, dt.timezone.utc)
        fields = _password_fields(secret.value, secret.version, resolved_at, resolution.stale, secret.expires_at)
        plan.last_fields = (resolution, soon, fields)
        return fields

    def note_access(self, token_name: str, reference: Mapping[str, Any], resolved: ResolvedPassword) -> None:
        """Record the first time a token reads a password version; never the value."""
        self._note(token_name, resolved.source, secret_label(reference), resolved.version)

    def _note(self, token_name: str, source: str, label: str, version: str | None) -> None:
        key = (token_name, source, label, version or "")
        if key in self._noted or not self.db.reachable:
            return  # during an outage the reading is noted when the database is back and it is read again
        with self._lock:
            if key in self._noting:
                return  # another thread is recording it; the read need not wait for that
            self._noting.add(key)
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
            self._noted.add(key)
        except IntegrityError:
            self._noted.add(key)  # another worker recorded it first
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Bookkeeping must not stop a sender; noted on a later read.
        finally:
            with self._lock:
                self._noting.discard(key)

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
            listing = self._provider(name, record).list_secrets(
                prefix, accept=lambda secret: secret_allowed(secret, allowed), limit=MAX_LISTED_NAMES
            )
        except ProviderError as exc:
            log.warning("secret listing failed", extra={"provider": name, "error_code": exc.code})
            raise ApiError(exc.message, status=exc.status, code=exc.code, title="The secret manager cannot list") from None
        return {"names": listing.names, "truncated": listing.truncated}

    def check_connection(self, name: str) -> dict[str, Any]:
        record = self.connections.get(name)
        started = time.monotonic()
        try:
            self._provider(name, record).check()
            error = None
        except ProviderError as exc:
            error = {"code": exc.code, "message": exc.message}
        self._observed(name, error is None, error and error["code"])
        elapsed = int((time.monotonic() - started) * 1000)
        return {"ok": error is None, "status": "ok" if error is None else "down", "error": error, "elapsed_ms": elapsed}

    # readiness: answered at once from what is known, learnt in the background

    def _observed(self, name: str, ok: bool, code: str | None) -> None:
        """A fetch or a check reached (or failed to reach) ``name``'s manager."""
        self._health[name] = (time.monotonic(), ok, code)

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Each connection: ok, degraded (down, cached values still serve) or down; never waits on a manager."""
        self.sync()
        connections = self._connections()
        now = time.monotonic()
        if now - self._checked_at >= READINESS_INTERVAL:
            self._checked_at = now
            for name, record in connections.items():
                self._check_in_background(name, record)
        report: dict[str, dict[str, Any]] = {}
        for name in connections:
            known = self._health.get(name)
            if known is None:
                report[name] = {"status": "ok", "detail": "not_checked_yet"}
            elif known[1]:
                report[name] = {"status": "ok"}
            else:
                serving = known[2] == ProviderUnavailable.code and self.cache.has_values(provider=name)
                report[name] = {"status": "degraded" if serving else "down", "detail": known[2] or "error"}
        return report

    def _check_in_background(self, name: str, record: dict[str, Any]) -> None:
        with self._lock:
            if name in self._checking:
                return  # the last check has not answered yet (a hung manager): its outcome will come
            self._checking.add(name)

        def check() -> None:
            try:
                self._provider(name, record).check()
                self._observed(name, True, None)
            except ProviderError as exc:
                self._observed(name, False, exc.code)
            except Exception as exc:  # a provider bug must not kill readiness
                log.warning("readiness check failed", extra={"provider": name, "error": type(exc).__name__})
                self._observed(name, False, "provider_error")
            finally:
                with self._lock:
                    self._checking.discard(name)

        threading.Thread(target=check, name=f"readiness:{name}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            providers, self._providers = self._providers, {}
        for _version, provider in providers.values():
            provider.close()


def _password_fields(
    value: str, version: str | None, resolved_at: dt.datetime, stale: bool, expires_at: dt.datetime | None
) -> dict[str, Any]:
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


def connection_name(reference: Mapping[str, Any]) -> str | None:
    return INTERNAL if reference.get("source") == INTERNAL else reference.get("provider")


def password_scope(effective: Any) -> str:
    """The settings row a plaintext password is sealed to: the level it was set at."""
    if effective.tenant is not None and "password" in effective.tenant.document:
        return effective.tenant.scope
    return "system"


def secret_label(reference: Mapping[str, Any]) -> str:
    if reference.get("source") == "plaintext":
        return "plaintext"
    parts = [connection_name(reference), reference.get("secret") or reference.get("path"), reference.get("key")]
    parts += [reference.get("safe"), reference.get("object")]
    return "/".join(str(p) for p in parts if p)
