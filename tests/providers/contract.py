"""The contract every secret provider passes; a provider's tests subclass it.

A subclass supplies factories (as pytest fixtures or plain methods) and
inherits the tests, in the way keyring's backend test suite works.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import pytest

from providers.base import (
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SecretNotFound,
    SecretProvider,
)

CANARY = "canary-Pw-7f3a9c1e-do-not-leak"


class ProviderContract:
    """Found, not found, unavailable, auth failure, and no secret in any message."""

    def make_provider(self) -> SecretProvider:
        """A provider connected to a working manager."""
        raise NotImplementedError

    def store(self, name: str, value: str) -> None:
        """Write ``value`` as the newest version of secret ``name`` in the manager."""
        raise NotImplementedError

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        """A reference (as the settings document holds it) to secret ``name``."""
        raise NotImplementedError

    def make_unavailable_provider(self) -> SecretProvider:
        """A provider whose manager cannot be reached."""
        raise NotImplementedError

    def make_bad_auth_provider(self) -> SecretProvider:
        """A provider whose manager refuses the service's credentials."""
        raise NotImplementedError

    def test_fetch_returns_stored_value(self) -> None:
        self.store("contract/found", CANARY)
        secret = self.make_provider().fetch(self.reference("contract/found"))
        assert secret.value == CANARY
        assert CANARY not in repr(secret)

    def test_missing_secret_raises_secret_not_found(self) -> None:
        with pytest.raises(SecretNotFound) as info:
            self.make_provider().fetch(self.reference("contract/does-not-exist"))
        assert info.value.code == "secret_not_found"

    def test_unreachable_manager_raises_provider_unavailable(self) -> None:
        provider = self.make_unavailable_provider()
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):
            provider.fetch(self.reference("contract/found"))
        assert time.monotonic() - started < 15

    def test_refused_credentials_raise_auth_error(self) -> None:
        with pytest.raises(ProviderAuthError):
            self.make_bad_auth_provider().fetch(self.reference("contract/found"))

    def test_no_secret_value_in_any_error_message(self) -> None:
        self.store("contract/found", CANARY)
        failures: list[ProviderError] = []
        for make, name in (
            (self.make_provider, "contract/does-not-exist"),
            (self.make_unavailable_provider, "contract/found"),
            (self.make_bad_auth_provider, "contract/found"),
        ):
            try:
                make().fetch(self.reference(name))
            except ProviderError as exc:
                failures.append(exc)
        assert len(failures) == 3
        for exc in failures:
            assert CANARY not in str(exc) and CANARY not in repr(exc)

    def test_check_passes_on_working_manager_and_fails_when_unreachable(self) -> None:
        self.make_provider().check()
        with pytest.raises(ProviderUnavailable):
            self.make_unavailable_provider().check()


class VersionedProviderContract(ProviderContract):
    """For managers with versions: pinning returns the old value after a rotation."""

    def test_version_pinning_returns_the_pinned_value(self) -> None:
        self.store("contract/versioned", "first-value")
        first = self.make_provider().fetch(self.reference("contract/versioned"))
        self.store("contract/versioned", "second-value")
        latest = self.make_provider().fetch(self.reference("contract/versioned"))
        assert latest.value == "second-value"
        assert latest.version != first.version
        pinned = self.make_provider().fetch(self.reference("contract/versioned", version=first.version))
        assert pinned.value == "first-value"
        assert pinned.version == first.version

    def test_missing_version_raises_secret_not_found(self) -> None:
        self.store("contract/versioned-missing", "only-value")
        with pytest.raises(SecretNotFound):
            self.make_provider().fetch(self.reference("contract/versioned-missing", version="999"))
