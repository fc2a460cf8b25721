"""The in-process cache that resolves secrets: TTL, single flight, stale serving, invalidation."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Callable

from providers.base import ProviderUnavailable, SecretNotAllowed, SecretNotFound, SecretValue

log = logging.getLogger(__name__)

#: Seconds after a failed fetch during which the manager is not asked again.
DEFAULT_FAILURE_BACKOFF = 1.0


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """One cached secret: the connection (or source), the secret's name and the pinned version."""

    provider: str
    secret: str
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class Resolution:
    """A resolved secret and how it was obtained. ``repr`` never shows the value."""

    secret: SecretValue
    #: ``time.time()`` when the fetch that produced the value started.
    fetched_at: float
    #: Served past its TTL because the manager could not be reached.
    stale: bool
    #: Not fetched by this call (a cache hit, or another caller's fetch).
    from_cache: bool


@dataclasses.dataclass(eq=False)
class _Flight:
    """One fetch in progress; callers that arrive meanwhile wait on ``done``."""

    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    resolution: Resolution | None = None
    error: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _Entry:
    """What the cache knows about one key; mutated only under the cache lock."""

    secret: SecretValue | None = None
    fetched_mono: float = 0.0
    fetched_wall: float = 0.0
    ttl: float = 0.0
    flight: _Flight | None = None
    retry_after: float = float("-inf")
    last_error: ProviderUnavailable | None = None
    #: The fresh-hit answer for ``secret``, built once: hits are most calls.
    hit: Resolution | None = None


class SecretCache:
    """Thread-safe cache in front of the secret managers.

    * A value younger than ``ttl`` (and not past its ``expires_at``) is served
      without asking the manager; ``ttl=0`` always fetches but still keeps the
      value for stale serving.
    * Single flight: one fetch per key at a time; callers that arrive meanwhile
      wait for it and share its outcome, value or exception. The lock is never
      held during a fetch, so different keys fetch in parallel. Waiting is
      bounded by the fetch, whose client has its own timeout.
    * Only ``ProviderUnavailable`` (the manager is down or silent) is covered by
      the last good value, while it is younger than ``max_stale`` and not past
      its ``expires_at``; the answer then says ``stale=True``. Every other error
      is raised, ``ProviderAuthError`` included: the service's own credentials
      are broken and someone must see it. ``SecretNotFound`` and ``SecretNotAllowed`` are the manager's
      own answer that the value is gone or forbidden, so they also forget the
      last good value: a later outage must not bring it back.
    * After a ``ProviderUnavailable`` the manager is not asked again for that key
      for ``failure_backoff`` seconds (one second by default, independent of the
      TTL so that ``ttl=0`` connections do not hammer a struggling manager):
      callers get the stale value, or the same error when there is none. The
      first fetch after the backoff that succeeds ends the staleness.
    * ``refresh=True`` (a server rejected the cached password) skips the fresh
      value but still joins an in-flight fetch and honours the failure backoff.
    * ``invalidate`` forgets values entirely, stale copies included: whoever
      invalidates (a security team after a leak or a rotation) wants the old
      value gone, even if that means failing while the manager is down. A fetch
      already running when its key is invalidated still answers its own callers
      but is not cached.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._failure_backoff = failure_backoff
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, _Entry] = {}
        self._generation = 0
        self._stats = {"hits": 0, "misses": 0, "fetches": 0, "stale_served": 0, "failures": 0}

    def __repr__(self) -> str:
        with self._lock:
            return f"<SecretCache entries={len(self._entries)} generation={self._generation}>"

    @property
    def generation(self) -> int:
        """How many times ``invalidate`` has run in this process."""
        with self._lock:
            return self._generation

    def resolve(
        self,
        key: CacheKey,
        fetch: Callable[[], SecretValue],
        ttl: float,
        max_stale: float,
        *,
        refresh: bool = False,
    ) -> Resolution:
        """The secret for ``key``: cached while fresh, else fetched once for all concurrent callers."""
        with self._lock:
            now = self._clock()
            wall_now = self._wall()
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            if not refresh and self._is_fresh(entry, now, ttl, wall_now):
                self._stats["hits"] += 1
                return self._cached(entry, stale=False)
            self._stats["misses"] += 1
            flight = entry.flight
            if flight is None:
                if now < entry.retry_after and entry.last_error is not None:
                    stale = self._stale(entry, now, wall_now, max_stale)
                    if stale is None:
                        # A copy, so callers in other threads do not share one traceback.
                        raise copy.copy(entry.last_error)
                    return stale
                flight = entry.flight = _Flight()
                self._stats["fetches"] += 1
                leader = True
            else:
                leader = False

        if leader:
            return self._lead(key, entry, flight, fetch, ttl, max_stale)
        flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.resolution is not None
        if flight.resolution.stale:
            with self._lock:
                self._stats["stale_served"] += 1
        return dataclasses.replace(flight.resolution, from_cache=True)

    def invalidate(self, provider: str | None = None, secret: str | None = None) -> int:
        """Forget cached values (all, one provider's, or one secret's in every version); return how many."""
        with self._lock:
            self._generation += 1
            doomed = [
                key
                for key in self._entries
                if (provider is None or key.provider == provider) and (secret is None or key.secret == secret)
            ]
            dropped = 0
            for key in doomed:
                if self._entries.pop(key).secret is not None:
                    dropped += 1
        log.info("secret cache invalidated: provider=%s secret=%s values=%d", provider, secret, dropped)
        return dropped

    def peek(self, key: CacheKey) -> Resolution | None:
        """The cached value for ``key`` without fetching (``stale`` when past the TTL it was cached with)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.secret is None:
                return None
            fresh = self._is_fresh(entry, self._clock(), entry.ttl, self._wall())
            return self._cached(entry, stale=not fresh)

    def has_values(self, provider: str) -> bool:
        """Whether any last good value of ``provider`` is held (to serve while it is down)."""
        with self._lock:
            return any(key.provider == provider and entry.secret is not None for key, entry in self._entries.items())

    def stats(self) -> dict[str, int]:
        """Counters: ``hits`` (fresh values served), ``misses`` (calls that found none),
        ``fetches`` (calls to a manager), ``failures`` (fetches that raised), ``stale_served``."""
        with self._lock:
            return dict(self._stats)

    def _lead(
        self,
        key: CacheKey,
        entry: _Entry,
        flight: _Flight,
        fetch: Callable[[], SecretValue],
        ttl: float,
        max_stale: float,
    ) -> Resolution:
        """Run the fetch for everyone waiting on ``flight``; waiters are released whatever happens."""
        started_mono = self._clock()
        started_wall = self._wall()
        try:
            try:
                secret = fetch()
            except BaseException as exc:
                stale = self._after_failure(key, entry, exc, max_stale)
                if stale is None:
                    raise
                log.warning(
                    "secret %r of %r served stale (fetched %.0fs ago): %s",
                    key.secret,
                    key.provider,
                    started_wall - stale.fetched_at,
                    ProviderUnavailable.code,
                )
                flight.resolution = stale
                return stale
            with self._lock:
                entry.secret = secret
                entry.hit = None
                entry.fetched_mono = started_mono
                entry.fetched_wall = started_wall
                entry.ttl = ttl
                entry.retry_after = float("-inf")
                entry.last_error = None
            flight.resolution = Resolution(secret, fetched_at=started_wall, stale=False, from_cache=False)
            return flight.resolution
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                entry.flight = None
            flight.done.set()

    def _after_failure(
        self, key: CacheKey, entry: _Entry, exc: BaseException, max_stale: float
    ) -> Resolution | None:
        """Record a failed fetch; the stale resolution to serve instead, or ``None`` to raise ``exc``."""
        with self._lock:
            self._stats["failures"] += 1
            if isinstance(exc, (SecretNotFound, SecretNotAllowed)):
                entry.secret = entry.hit = None
            if not isinstance(exc, ProviderUnavailable):
                self._forget_if_empty(key, entry)
                return None
            now = self._clock()
            entry.retry_after = now + self._failure_backoff
            entry.last_error = exc
            return self._stale(entry, now, self._wall(), max_stale)

    def _stale(self, entry: _Entry, now: float, wall_now: float, max_stale: float) -> Resolution | None:
        """Under the lock: the last good value as a stale resolution, if still young enough to serve."""
        secret = entry.secret
        if secret is None or now - entry.fetched_mono >= max_stale or _expired(secret, wall_now):
            return None
        self._stats["stale_served"] += 1
        return Resolution(secret, fetched_at=entry.fetched_wall, stale=True, from_cache=True)

    def _forget_if_empty(self, key: CacheKey, entry: _Entry) -> None:
        """Under the lock: drop an entry that holds nothing worth keeping, so failed names do not pile up."""
        if entry.secret is None and self._entries.get(key) is entry:
            del self._entries[key]

    def _is_fresh(self, entry: _Entry, now: float, ttl: float, wall_now: float) -> bool:
        return (
            entry.secret is not None
            and now - entry.fetched_mono < ttl
            and not _expired(entry.secret, wall_now)
        )

    def _cached(self, entry: _Entry, *, stale: bool) -> Resolution:
        assert entry.secret is not None
        if stale:
            return Resolution(entry.secret, fetched_at=entry.fetched_wall, stale=True, from_cache=True)
        if entry.hit is None:
            entry.hit = Resolution(entry.secret, fetched_at=entry.fetched_wall, stale=False, from_cache=True)
        return entry.hit


def _expired(secret: SecretValue, wall_now: float) -> bool:
    """Whether the manager's own expiry for the value has passed (naive datetimes are UTC)."""
    if secret.expires_at is None:
        return False
    expires_at = secret.expires_at
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.timezone.utc)
    return expires_at.timestamp() <= wall_now
