"""Specification of the secret cache: TTL, single flight, stale serving, invalidation."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest

from providers.base import (
    ProviderAuthError,
    ProviderUnavailable,
    SecretNotAllowed,
    SecretNotFound,
    SecretValue,
)
from providers.cache import CacheKey, Resolution, SecretCache

CANARY = "canary-Pw-7f3a9c1e-do-not-leak"
WAIT = 5.0
KEY = CacheKey("vault-prod", "mail/smtp", None)


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeManager:
    """A fetch function standing in for a secret manager; counts calls and can be taken down."""

    def __init__(self, value: str = CANARY) -> None:
        self.value = value
        self.version = 1
        self.calls = 0
        self.error: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self) -> SecretValue:
        with self._lock:
            self.calls += 1
        if self.error is not None:
            raise self.error
        return SecretValue(self.value, version=str(self.version))

    def rotate(self, value: str) -> None:
        self.value = value
        self.version += 1


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def cache(mono: FakeClock, wall: FakeClock) -> SecretCache:
    # Callers wait for every fetch here, so outcomes do not depend on thread scheduling;
    # the bounded wait has its own test on the real clock.
    return SecretCache(clock=mono, wall=wall, stale_wait=WAIT)


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


def advance(mono: FakeClock, wall: FakeClock, seconds: float) -> None:
    mono.advance(seconds)
    wall.advance(seconds)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_value_within_ttl_is_served_from_cache_without_fetching_again(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    first = cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    advance(mono, wall, 269)  # before the last tenth, where a refresh ahead would start
    second = cache.resolve(KEY, manager, ttl=300, max_stale=3600)

    assert manager.calls == 1
    assert first.secret.value == second.secret.value == CANARY
    assert (first.from_cache, first.stale) == (False, False)
    assert (second.from_cache, second.stale) == (True, False)
    assert second.fetched_at == first.fetched_at == 1_700_000_000.0


def test_value_older_than_ttl_is_fetched_again(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    manager.rotate("rotated-value")
    advance(mono, wall, 300)

    result = cache.resolve(KEY, manager, ttl=300, max_stale=3600)

    assert manager.calls == 2
    assert result.secret.value == "rotated-value"
    assert result.secret.version == "2"
    assert result.from_cache is False
    assert result.fetched_at == 1_700_000_300.0


def test_zero_ttl_always_fetches_but_keeps_the_value_for_stale_serving(
    cache: SecretCache, manager: FakeManager
) -> None:
    cache.resolve(KEY, manager, ttl=0, max_stale=3600)
    cache.resolve(KEY, manager, ttl=0, max_stale=3600)
    assert manager.calls == 2

    manager.error = ProviderUnavailable("vault-prod did not answer")
    result = cache.resolve(KEY, manager, ttl=0, max_stale=3600)

    assert result.stale is True
    assert result.secret.value == CANARY


def test_value_past_its_manager_expiry_is_not_fresh(
    cache: SecretCache, manager: FakeManager, wall: FakeClock
) -> None:
    expires = dt.datetime.fromtimestamp(wall() + 10, tz=dt.timezone.utc)
    fetch_calls = []

    def fetch() -> SecretValue:
        fetch_calls.append(1)
        return SecretValue(CANARY, version="1", expires_at=expires)

    cache.resolve(KEY, fetch, ttl=300, max_stale=3600)
    wall.advance(10)
    cache.resolve(KEY, fetch, ttl=300, max_stale=3600)

    assert len(fetch_calls) == 2


def test_twenty_concurrent_cold_resolves_share_exactly_one_fetch(cache: SecretCache) -> None:
    release = threading.Event()
    calls = []

    def slow_fetch() -> SecretValue:
        calls.append(1)
        assert release.wait(WAIT)
        return SecretValue(CANARY, version="3")

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(cache.resolve, KEY, slow_fetch, 300, 3600) for _ in range(20)]
        # Every caller has reached the cache (and found no value) before the fetch may finish.
        wait_until(lambda: cache.stats()["misses"] == 20)
        release.set()
        results = [future.result(timeout=WAIT) for future in futures]

    assert len(calls) == 1
    assert all(result.secret.value == CANARY for result in results)
    assert sorted(result.from_cache for result in results) == [False] + [True] * 19
    assert cache.stats()["fetches"] == 1


def test_different_keys_fetch_in_parallel(cache: SecretCache) -> None:
    a_started, b_started = threading.Event(), threading.Event()

    def fetch_a() -> SecretValue:
        a_started.set()
        # Only returns a value if B's fetch runs while A's is still running.
        assert b_started.wait(WAIT)
        return SecretValue("value-a")

    def fetch_b() -> SecretValue:
        b_started.set()
        assert a_started.wait(WAIT)
        return SecretValue("value-b")

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(cache.resolve, CacheKey("vault-prod", "a", None), fetch_a, 300, 3600)
        b = pool.submit(cache.resolve, CacheKey("vault-prod", "b", None), fetch_b, 300, 3600)
        assert a.result(timeout=WAIT).secret.value == "value-a"
        assert b.result(timeout=WAIT).secret.value == "value-b"


def test_pinned_versions_are_cached_separately(cache: SecretCache, manager: FakeManager) -> None:
    cache.resolve(CacheKey("vault-prod", "mail/smtp", "1"), manager, ttl=300, max_stale=3600)
    cache.resolve(CacheKey("vault-prod", "mail/smtp", "2"), manager, ttl=300, max_stale=3600)

    assert manager.calls == 2


def test_failed_single_flight_shares_its_exception_with_every_waiter(cache: SecretCache) -> None:
    release = threading.Event()
    calls = []

    def failing_fetch() -> SecretValue:
        calls.append(1)
        assert release.wait(WAIT)
        raise ProviderAuthError("vault-prod refused the AppRole login")

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(cache.resolve, KEY, failing_fetch, 300, 3600) for _ in range(5)]
        wait_until(lambda: cache.stats()["misses"] == 5)
        release.set()
        errors = [future.exception(timeout=WAIT) for future in futures]

    assert len(calls) == 1
    assert all(isinstance(error, ProviderAuthError) for error in errors)
    assert {error.message for error in errors} == {"vault-prod refused the AppRole login"}


def test_waiters_of_a_fetch_that_falls_back_to_stale_get_the_stale_value(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=3600)
    advance(mono, wall, 61)
    release = threading.Event()
    misses = cache.stats()["misses"]

    def down() -> SecretValue:
        assert release.wait(WAIT)
        raise ProviderUnavailable("vault-prod timed out")

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(cache.resolve, KEY, down, 60, 3600) for _ in range(3)]
        wait_until(lambda: cache.stats()["misses"] == misses + 3)
        release.set()
        results = [future.result(timeout=WAIT) for future in futures]

    assert all(result.stale and result.from_cache and result.secret.value == CANARY for result in results)
    assert cache.stats()["stale_served"] == 3


def test_manager_down_serves_last_good_value_as_stale_until_max_stale_then_fails(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")

    advance(mono, wall, 61)
    stale = cache.resolve(KEY, manager, ttl=60, max_stale=600)
    assert stale.stale is True
    assert stale.from_cache is True
    assert stale.secret.value == CANARY
    assert stale.fetched_at == 1_700_000_000.0

    advance(mono, wall, 538)
    assert cache.resolve(KEY, manager, ttl=60, max_stale=600).stale is True

    advance(mono, wall, 1)
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)


def test_manager_is_not_asked_again_during_the_failure_backoff(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    advance(mono, wall, 61)

    for _ in range(10):
        assert cache.resolve(KEY, manager, ttl=60, max_stale=600).stale is True
    assert manager.calls == 2

    advance(mono, wall, 1)
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    assert manager.calls == 3


def test_cold_key_with_manager_down_fails_fast_during_the_backoff(
    cache: SecretCache, manager: FakeManager, mono: FakeClock
) -> None:
    manager.error = ProviderUnavailable("vault-prod: connection refused")

    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)
    with pytest.raises(ProviderUnavailable) as info:
        cache.resolve(KEY, manager, ttl=60, max_stale=600)

    assert manager.calls == 1
    assert info.value.message == "vault-prod: connection refused"
    mono.advance(1)
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)
    assert manager.calls == 2


def test_recovery_after_the_manager_comes_back_clears_staleness(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    advance(mono, wall, 61)
    assert cache.resolve(KEY, manager, ttl=60, max_stale=600).stale is True

    manager.error = None
    manager.rotate("rotated-while-down")
    advance(mono, wall, 1)
    recovered = cache.resolve(KEY, manager, ttl=60, max_stale=600)

    assert recovered.stale is False
    assert recovered.from_cache is False
    assert recovered.secret.value == "rotated-while-down"
    assert cache.resolve(KEY, manager, ttl=60, max_stale=600).from_cache is True


@pytest.mark.parametrize(
    "error",
    [SecretNotFound("mail/smtp not found"), SecretNotAllowed("mail/smtp denied by policy")],
    ids=["not_found", "not_allowed"],
)
def test_manager_answer_that_secret_is_gone_is_never_papered_over_by_stale_value(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock, error: Exception
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = error
    advance(mono, wall, 61)

    with pytest.raises(type(error)):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)

    # The answer also forgets the old value, so a later outage cannot bring it back.
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)
    assert cache.peek(KEY) is None


def test_provider_auth_error_is_raised_rather_than_served_stale(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderAuthError("vault-prod refused the AppRole login")
    advance(mono, wall, 61)

    with pytest.raises(ProviderAuthError):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)


def test_refresh_bypasses_the_fresh_value(cache: SecretCache, manager: FakeManager) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    manager.rotate("rotated-value")

    refreshed = cache.resolve(KEY, manager, ttl=300, max_stale=3600, refresh=True)

    assert manager.calls == 2
    assert refreshed.secret.value == "rotated-value"
    assert refreshed.from_cache is False
    assert cache.resolve(KEY, manager, ttl=300, max_stale=3600).secret.value == "rotated-value"


def test_refresh_during_the_failure_backoff_does_not_ask_the_manager(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    advance(mono, wall, 61)
    cache.resolve(KEY, manager, ttl=60, max_stale=600)

    refreshed = cache.resolve(KEY, manager, ttl=60, max_stale=600, refresh=True)

    assert refreshed.stale is True
    assert manager.calls == 2


def test_concurrent_refreshes_share_one_fetch(cache: SecretCache, manager: FakeManager) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    release = threading.Event()
    misses = cache.stats()["misses"]

    def slow_fetch() -> SecretValue:
        assert release.wait(WAIT)
        return manager()

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cache.resolve, KEY, slow_fetch, 300, 3600, refresh=True) for _ in range(4)]
        wait_until(lambda: cache.stats()["misses"] == misses + 4)
        release.set()
        for future in futures:
            future.result(timeout=WAIT)

    assert manager.calls == 2


def test_invalidate_all_marks_every_value_for_refetch(cache: SecretCache, manager: FakeManager) -> None:
    keys = [CacheKey("vault-prod", "a", None), CacheKey("vault-prod", "b", "2"), CacheKey("akv", "a", None)]
    for key in keys:
        cache.resolve(key, manager, ttl=300, max_stale=3600)

    assert cache.invalidate() == 3

    assert all(cache.peek(key).stale for key in keys)
    for key in keys:
        assert cache.resolve(key, manager, ttl=300, max_stale=3600).from_cache is False
    assert manager.calls == 6
    assert all(cache.resolve(key, manager, ttl=300, max_stale=3600).from_cache for key in keys)


def test_invalidate_one_provider_keeps_the_others_fresh(cache: SecretCache, manager: FakeManager) -> None:
    vault_a, vault_b = CacheKey("vault-prod", "a", None), CacheKey("vault-prod", "b", None)
    akv_a = CacheKey("akv", "a", None)
    for key in (vault_a, vault_b, akv_a):
        cache.resolve(key, manager, ttl=300, max_stale=3600)

    assert cache.invalidate(provider="vault-prod") == 2

    assert cache.peek(vault_a).stale and cache.peek(vault_b).stale
    assert cache.peek(akv_a).stale is False


def test_invalidate_one_secret_marks_all_its_versions_and_nothing_else(cache: SecretCache, manager: FakeManager) -> None:
    latest, pinned = CacheKey("vault-prod", "a", None), CacheKey("vault-prod", "a", "4")
    other, other_provider = CacheKey("vault-prod", "b", None), CacheKey("akv", "a", None)
    for key in (latest, pinned, other, other_provider):
        cache.resolve(key, manager, ttl=300, max_stale=3600)

    assert cache.invalidate(provider="vault-prod", secret="a") == 2

    assert cache.peek(latest).stale and cache.peek(pinned).stale
    assert not cache.peek(other).stale and not cache.peek(other_provider).stale
    cache.resolve(other, manager, ttl=300, max_stale=3600)
    assert manager.calls == 4


def test_invalidated_value_is_refetched_and_served_stale_while_the_manager_is_down(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    cache.invalidate(provider="vault-prod")
    manager.error = ProviderUnavailable("vault-prod: connection refused")

    stale = cache.resolve(KEY, manager, ttl=300, max_stale=3600)

    assert manager.calls == 2  # the mark made it ask the manager
    assert stale.stale is True and stale.secret.value == CANARY
    advance(mono, wall, 3600)
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=300, max_stale=3600)


def test_the_mark_holds_until_a_fetch_succeeds(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    cache.invalidate()
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    assert cache.resolve(KEY, manager, ttl=300, max_stale=3600).stale is True
    manager.error = None
    manager.rotate("after-the-outage")
    advance(mono, wall, 1)  # past the failure backoff, well within the TTL

    recovered = cache.resolve(KEY, manager, ttl=300, max_stale=3600)

    assert recovered.secret.value == "after-the-outage" and recovered.stale is False
    assert cache.resolve(KEY, manager, ttl=300, max_stale=3600).from_cache is True


def test_purge_forgets_values_outright(cache: SecretCache, manager: FakeManager) -> None:
    cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    other = CacheKey("vault-prod", "other", None)
    cache.resolve(other, manager, ttl=300, max_stale=3600)

    assert cache.purge(provider="vault-prod", secret="mail/smtp") == 1

    manager.error = ProviderUnavailable("vault-prod: connection refused")
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    assert cache.peek(KEY) is None and cache.peek(other) is not None


def test_invalidate_ends_a_failure_backoff(cache: SecretCache, manager: FakeManager) -> None:
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    with pytest.raises(ProviderUnavailable):
        cache.resolve(KEY, manager, ttl=300, max_stale=3600)
    manager.error = None

    cache.invalidate()

    assert cache.resolve(KEY, manager, ttl=300, max_stale=3600).secret.value == CANARY


def test_fetch_running_during_invalidate_does_not_satisfy_the_mark(cache: SecretCache, manager: FakeManager) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_fetch() -> SecretValue:
        started.set()
        assert release.wait(WAIT)
        return SecretValue("read-before-invalidate")

    with ThreadPoolExecutor(max_workers=2) as pool:
        future = pool.submit(cache.resolve, KEY, slow_fetch, 300, 3600)
        assert started.wait(WAIT)
        cache.invalidate()
        later = pool.submit(cache.resolve, KEY, manager, 300, 3600)
        release.set()
        assert future.result(timeout=WAIT).secret.value == "read-before-invalidate"
        assert later.result(timeout=WAIT).secret.value == CANARY  # asked again, not handed the older read

    assert manager.calls == 1
    assert cache.resolve(KEY, manager, ttl=300, max_stale=3600).secret.value == CANARY


def test_a_value_near_the_end_of_its_ttl_is_refreshed_in_the_background_once(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=100, max_stale=3600)
    manager.rotate("rotated")
    advance(mono, wall, 89)
    assert cache.resolve(KEY, manager, ttl=100, max_stale=3600).secret.value == CANARY
    assert manager.calls == 1  # not yet in the last tenth

    release = threading.Event()

    def slow_fetch() -> SecretValue:
        assert release.wait(WAIT)
        return manager()

    advance(mono, wall, 2)
    served = [cache.resolve(KEY, slow_fetch, ttl=100, max_stale=3600) for _ in range(20)]
    assert all(r.secret.value == CANARY and r.stale is False for r in served)  # nobody waited
    assert cache.stats()["refreshes_ahead"] == 1
    release.set()
    wait_until(lambda: cache.peek(KEY).secret.value == "rotated")
    assert manager.calls == 2
    advance(mono, wall, 80)  # 171 s after the first fetch: the refreshed value is still fresh
    assert cache.resolve(KEY, manager, ttl=100, max_stale=3600).from_cache is True
    assert manager.calls == 2


def test_past_the_ttl_a_hung_manager_costs_a_request_at_most_the_stale_wait(manager: FakeManager) -> None:
    cache = SecretCache(stale_wait=0.05)
    cache.resolve(KEY, manager, ttl=0.2, max_stale=3600)
    hung = threading.Event()

    def hung_fetch() -> SecretValue:
        assert hung.wait(WAIT)
        raise ProviderUnavailable("vault-prod timed out")

    time.sleep(0.25)
    try:
        started = time.monotonic()
        results = [cache.resolve(KEY, hung_fetch, ttl=0.2, max_stale=3600) for _ in range(5)]
        elapsed = time.monotonic() - started
    finally:
        hung.set()
    assert all(r.stale and r.secret.value == CANARY for r in results)
    assert elapsed < 5 * 0.05 + 0.5
    assert cache.stats()["fetches"] == 2  # one fetch for all five


def test_outcomes_say_degraded_as_soon_as_a_hung_fetch_makes_stale_serve_and_ok_after_a_success(
    mono: FakeClock, wall: FakeClock, manager: FakeManager
) -> None:
    cache = SecretCache(clock=mono, wall=wall, stale_wait=0.01, failure_backoff=1.0)
    outcomes: list[tuple[str, str, str | None]] = []
    cache.on_outcome = lambda provider, status, code: outcomes.append((provider, status, code))
    cache.resolve(KEY, manager, ttl=60, max_stale=3600)
    assert outcomes == [("vault-prod", "ok", None)]
    hung = threading.Event()

    def hung_fetch() -> SecretValue:
        assert hung.wait(WAIT)
        raise ProviderUnavailable("vault-prod timed out")

    advance(mono, wall, 61)
    try:
        stale = cache.resolve(KEY, hung_fetch, ttl=60, max_stale=3600)
        # Said while the fetch still hangs, not when its client times out.
        assert outcomes[1:] == [("vault-prod", "degraded", ProviderUnavailable.code)]
    finally:
        hung.set()
    assert stale.stale
    wait_until(lambda: len(outcomes) == 3)
    assert outcomes[2] == ("vault-prod", "degraded", ProviderUnavailable.code)
    advance(mono, wall, 2)  # past the failure backoff
    # Waits for the fetch (no stale answer can win a race with it).
    assert cache.resolve(KEY, manager, ttl=60, max_stale=3600, refresh=True).stale is False
    assert outcomes[-1] == ("vault-prod", "ok", None)


def test_generation_increments_on_every_invalidate(cache: SecretCache) -> None:
    assert cache.generation == 0
    cache.invalidate()
    cache.invalidate(provider="nothing-cached")
    assert cache.generation == 2


def test_peek_reports_cached_value_without_fetching(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    assert cache.peek(KEY) is None
    cache.resolve(KEY, manager, ttl=60, max_stale=600)

    fresh = cache.peek(KEY)
    advance(mono, wall, 60)
    old = cache.peek(KEY)

    expected = Resolution(SecretValue(CANARY, "1"), fetched_at=1_700_000_000.0, stale=False, from_cache=True)
    assert fresh == expected
    assert old is not None and old.stale is True
    assert manager.calls == 1


def test_stats_count_hits_misses_fetches_failures_and_stale_serves(
    cache: SecretCache, manager: FakeManager, mono: FakeClock, wall: FakeClock
) -> None:
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    advance(mono, wall, 61)
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = SecretNotFound("mail/smtp not found")
    advance(mono, wall, 1)
    with pytest.raises(SecretNotFound):
        cache.resolve(KEY, manager, ttl=60, max_stale=600)

    assert cache.stats() == {"hits": 1, "misses": 4, "fetches": 3, "stale_served": 2, "failures": 2, "refreshes_ahead": 0}


def test_no_secret_value_in_reprs_or_logs(
    cache: SecretCache,
    manager: FakeManager,
    mono: FakeClock,
    wall: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="providers.cache")
    fresh = cache.resolve(KEY, manager, ttl=60, max_stale=600)
    manager.error = ProviderUnavailable("vault-prod: connection refused")
    advance(mono, wall, 61)
    stale = cache.resolve(KEY, manager, ttl=60, max_stale=600)
    cache.invalidate()

    assert stale.stale is True
    assert "served stale" in caplog.text
    for text in (repr(fresh), repr(stale), repr(cache), repr(KEY), str(fresh), caplog.text):
        assert CANARY not in text
