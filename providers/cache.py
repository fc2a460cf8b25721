"""The in-process cache that resolves secrets: TTL, single flight, refresh ahead, stale serving, refetch marks."""

from __future__ import annotations

import contextvars
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
#: How long a request waits for a fetch when a last good value could be served instead.
DEFAULT_STALE_WAIT = 0.03
#: A value is refreshed in the background once this share of its TTL is left...
REFRESH_AHEAD_FRACTION = 0.1
#: ...but never earlier than this many seconds before the TTL ends.
MAX_REFRESH_AHEAD = 30.0
#: How many in-flight fetches a caller outwaits because they started before a refetch mark.
_MAX_ROUNDS = 4


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
    #: Served past its TTL (or after a refetch mark) because the manager could not be reached in time.
    stale: bool
    #: Not fetched by this call (a cache hit, or another caller's fetch).
    from_cache: bool


@dataclasses.dataclass(eq=False)
class _Flight:
    """One fetch in progress; callers that arrive meanwhile wait on ``done``."""

    #: The entry's refetch mark when the fetch started: a later mark is not satisfied by it.
    mark: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    resolution: Resolution | None = None
    error: BaseException | None = None
    #: Set under the cache lock once the fetch has answered: its outcome is reported after any "slow" one.
    answered: bool = False


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
    #: Bumped by each ``invalidate``; ``refetch`` holds until a fetch started after the last mark succeeds.
    mark: int = 0
    refetch: bool = False
    #: The fresh-hit answer for ``secret``, built once: hits are most calls.
    hit: Resolution | None = None


class SecretCache:
    """Thread-safe cache in front of the secret managers.

    * A value younger than ``ttl`` (and not past its ``expires_at``, and not
      marked for refetch) is served without asking the manager; ``ttl=0``
      always fetches but still keeps the value for stale serving.
    * Refresh ahead: a value served in the last tenth of its TTL (at most
      ``MAX_REFRESH_AHEAD`` seconds before the end) starts one background fetch,
      while callers keep getting the current value; so under steady use no
      request waits for a manager and a rotation still arrives within one TTL.
    * Single flight: one fetch per key at a time, run in its own thread;
      callers that arrive meanwhile wait for it and share its outcome, value or
      exception. The lock is never held during a fetch, so different keys fetch
      in parallel. A caller that could be given a last good value waits at most
      ``stale_wait`` seconds and then gets that value marked stale; others wait
      for the fetch, whose client has its own timeout.
    * Only ``ProviderUnavailable`` (the manager is down or silent) is covered by
      the last good value, while it is younger than ``max_stale`` and not past
      its ``expires_at``; the answer then says ``stale=True``. Every other error
      is raised, ``ProviderAuthError`` included: the service's own credentials
      are broken and someone must see it. ``SecretNotFound`` and
      ``SecretNotAllowed`` are the manager's own answer that the value is gone
      or forbidden, so they also forget the last good value: a later outage
      must not bring it back. ``purge`` does the same on the service's behalf.
    * After a ``ProviderUnavailable`` the key's manager rests ``failure_backoff``
      seconds: callers get the stale value, or the same error.
    * ``refresh=True`` (a rejected password) waits for a fetch, within the failure backoff.
    * ``invalidate`` marks values for refetch: the next resolution waits for
      the manager, and if the manager cannot be reached the last good value is
      still served stale within ``max_stale``. A fetch that started before the
      mark does not satisfy it.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        stale_wait: float = DEFAULT_STALE_WAIT,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._failure_backoff = failure_backoff
        self._stale_wait = stale_wait
        self._lock = threading.Lock()
        self._entries: dict[CacheKey, _Entry] = {}
        self._generation = 0
        self._stats = {"hits": 0, "misses": 0, "fetches": 0, "stale_served": 0, "failures": 0, "refreshes_ahead": 0}
        #: Told (provider, "ok" | "degraded" | "down", error code) of each fetch, and when stale serves a slow one.
        self.on_outcome: Callable[[str, str, str | None], None] | None = None

    def __repr__(self) -> str:
        with self._lock:
            return f"<SecretCache entries={len(self._entries)} generation={self._generation}>"

    @property
    def generation(self) -> int:  # how many times ``invalidate`` has run in this process
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
        for _round in range(_MAX_ROUNDS):
            with self._lock:
                now = self._clock()
                wall_now = self._wall()
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                if not refresh and not entry.refetch and self._is_fresh(entry, now, ttl, wall_now):
                    self._stats["hits"] += 1
                    if entry.flight is None and now >= entry.retry_after and self._refresh_due(entry, now, ttl):
                        self._stats["refreshes_ahead"] += 1
                        self._start(key, entry, fetch, ttl, max_stale)
                    return self._cached(entry, stale=False)
                if _round == 0:
                    self._stats["misses"] += 1
                flight = entry.flight
                leader = False
                if flight is None:
                    if now < entry.retry_after and entry.last_error is not None:
                        stale = self._stale(entry, now, wall_now, max_stale)
                        if stale is None:
                            # A copy, so callers in other threads do not share one traceback.
                            raise copy.copy(entry.last_error)
                        self._stats["stale_served"] += 1
                        return stale
                    flight = self._start(key, entry, fetch, ttl, max_stale)
                    leader = True
                outdated = flight.mark != entry.mark
                # Past the TTL with a last good value at hand, nobody waits long for the manager;
                # after a refetch mark, or when asked to refresh, the answer must come from it.
                may_serve_stale = not refresh and not entry.refetch and self._stale(entry, now, wall_now, max_stale)
            if may_serve_stale and not flight.done.wait(self._stale_wait):
                with self._lock:
                    stale = self._stale(entry, self._clock(), self._wall(), max_stale)
                    if stale is not None:
                        self._stats["stale_served"] += 1
                        if not flight.answered:  # the manager is slow or hung: said at once, not after its timeout
                            self._report(key.provider, "degraded", ProviderUnavailable.code)
                        return stale
            flight.done.wait()
            if outdated:
                continue  # that fetch began before the value was marked for refetch: ask again
            if flight.error is not None:
                raise copy.copy(flight.error) if not leader else flight.error
            assert flight.resolution is not None
            if flight.resolution.stale:
                with self._lock:
                    self._stats["stale_served"] += 1
            return flight.resolution if leader else dataclasses.replace(flight.resolution, from_cache=True)
        raise ProviderUnavailable(f"{key.provider}: the secret was marked for refetch faster than it could be read")

    def invalidate(
        self,
        provider: str | None = None,
        secret: str | None = None,
        *,
        match: Callable[[CacheKey], bool] | None = None,
    ) -> int:
        """Mark values for refetch (all, one provider's, one secret's in every version, or those
        ``match`` picks); the last good value stays for stale serving. Returns how many were marked."""
        with self._lock:
            self._generation += 1
            marked = 0
            for key, entry in self._entries.items():
                if _selected(key, provider, secret, match):
                    entry.mark += 1
                    entry.refetch = True
                    entry.retry_after = float("-inf")
                    marked += entry.secret is not None
        log.info("secret cache marked for refetch: provider=%s secret=%s values=%d", provider, secret, marked)
        return marked

    def purge(self, provider: str | None = None, secret: str | None = None) -> int:
        """Forget values outright, stale copies included (the connection no longer allows them)."""
        with self._lock:
            doomed = [key for key in self._entries if _selected(key, provider, secret, None)]
            dropped = 0
            for key in doomed:
                entry = self._entries.pop(key)
                entry.mark += 1  # a fetch in flight must not store what it reads
                dropped += entry.secret is not None
        if dropped:
            log.info("secret cache purged: provider=%s secret=%s values=%d", provider, secret, dropped)
        return dropped

    def peek(self, key: CacheKey) -> Resolution | None:
        """The cached value for ``key`` without fetching (``stale`` when past its TTL or marked for refetch)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.secret is None:
                return None
            fresh = not entry.refetch and self._is_fresh(entry, self._clock(), entry.ttl, self._wall())
            return self._cached(entry, stale=not fresh)

    def has_values(self, provider: str) -> bool:
        """Whether any last good value of ``provider`` is held (to serve while it is down)."""
        with self._lock:
            return any(key.provider == provider and entry.secret is not None for key, entry in self._entries.items())

    def keys(self) -> list[CacheKey]:  # the keys that hold a value
        with self._lock:
            return [key for key, entry in self._entries.items() if entry.secret is not None]

    def stats(self) -> dict[str, int]:
        """Counters: ``hits`` (fresh values served), ``misses`` (calls that found none),
        ``fetches`` (calls to a manager), ``failures`` (fetches that raised), ``stale_served``,
        ``refreshes_ahead`` (background fetches started before the TTL ended)."""
        with self._lock:
            return dict(self._stats)

    def _start(
        self, key: CacheKey, entry: _Entry, fetch: Callable[[], SecretValue], ttl: float, max_stale: float
    ) -> _Flight:
        """Under the lock: begin a fetch in its own thread, so no caller has to wait for it."""
        flight = entry.flight = _Flight(mark=entry.mark)
        self._stats["fetches"] += 1
        context = contextvars.copy_context()  # keeps the request id on the fetch's log lines
        thread = threading.Thread(
            target=context.run,
            args=(self._run, key, entry, flight, fetch, ttl, max_stale),
            name=f"secret-fetch:{key.provider}",
            daemon=True,
        )
        thread.start()
        return flight

    def _run(
        self,
        key: CacheKey,
        entry: _Entry,
        flight: _Flight,
        fetch: Callable[[], SecretValue],
        ttl: float,
        max_stale: float,
    ) -> None:
        """Run the fetch for everyone waiting on ``flight``; waiters are released whatever happens."""
        started_mono = self._clock()
        started_wall = self._wall()
        try:
            try:
                secret = fetch()
            except BaseException as exc:
                stale = self._after_failure(key, entry, flight, exc, max_stale)
                self._report(key.provider, "down" if stale is None else "degraded", getattr(exc, "code", type(exc).__name__))
                if stale is None:
                    flight.error = exc
                    return
                log.warning(
                    "secret %r of %r served stale (fetched %.0fs ago): %s",
                    key.secret,
                    key.provider,
                    started_wall - stale.fetched_at,
                    ProviderUnavailable.code,
                )
                flight.resolution = stale
                return
            with self._lock:
                flight.answered = True
                if self._entries.get(key) is entry and entry.mark == flight.mark:
                    entry.refetch = False
                if self._entries.get(key) is entry:
                    entry.secret = secret
                    entry.hit = None
                    entry.fetched_mono = started_mono
                    entry.fetched_wall = started_wall
                    entry.ttl = ttl
                    entry.retry_after = float("-inf")
                    entry.last_error = None
            self._report(key.provider, "ok", None)
            flight.resolution = Resolution(secret, fetched_at=started_wall, stale=False, from_cache=False)
        finally:
            with self._lock:
                if entry.flight is flight:
                    entry.flight = None
            flight.done.set()

    def _report(self, provider: str, status: str, code: str | None) -> None:
        listener = self.on_outcome
        if listener is not None:
            try:
                listener(provider, status, code)
            except Exception:  # a broken listener must not fail the fetch
                log.exception("secret cache outcome listener failed")

    def _after_failure(
        self, key: CacheKey, entry: _Entry, flight: _Flight, exc: BaseException, max_stale: float
    ) -> Resolution | None:
        """Record a failed fetch; the stale resolution to serve instead, or ``None`` to raise ``exc``."""
        with self._lock:
            flight.answered = True
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

    def _refresh_due(self, entry: _Entry, now: float, ttl: float) -> bool:
        ahead = min(ttl * REFRESH_AHEAD_FRACTION, MAX_REFRESH_AHEAD)
        return now - entry.fetched_mono >= ttl - ahead

    def _cached(self, entry: _Entry, *, stale: bool) -> Resolution:
        assert entry.secret is not None
        if stale:
            return Resolution(entry.secret, fetched_at=entry.fetched_wall, stale=True, from_cache=True)
        if entry.hit is None:
            entry.hit = Resolution(entry.secret, fetched_at=entry.fetched_wall, stale=False, from_cache=True)
        return entry.hit


def _selected(key: CacheKey, provider: str | None, secret: str | None, match: Callable[[CacheKey], bool] | None) -> bool:
    if match is not None:
        return match(key)
    return (provider is None or key.provider == provider) and (secret is None or key.secret == secret)


def _expired(secret: SecretValue, wall_now: float) -> bool:
    """Whether the manager's own expiry for the value has passed (naive datetimes are UTC)."""
    if secret.expires_at is None:
        return False
    expires_at = secret.expires_at
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.timezone.utc)
    return expires_at.timestamp() <= wall_now
