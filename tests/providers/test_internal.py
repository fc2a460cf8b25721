"""The internal source passes the provider contract, on the service's own store."""

from __future__ import annotations

import base64
import os
from typing import Any, Mapping

import pytest

from providers.base import ProviderContext
from providers.internal import InternalProvider
from service.crypto import KeyRing
from service.db import Database
from service.internal_store import InternalStore
from tests.providers.contract import VersionedProviderContract


def _ring() -> KeyRing:
    return KeyRing([os.urandom(32)])


class TestInternalContract(VersionedProviderContract):
    @pytest.fixture(autouse=True)
    def _store(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.db = Database(f"sqlite:///{tmp_path / 'store.db'}")
        self.db.upgrade()
        self.keyring = _ring()
        self.writer = InternalStore(self.db, self.keyring)

    def _provider(self, store: InternalStore) -> InternalProvider:
        return InternalProvider({"type": "internal", "allowed_secrets": ["*"]}, ProviderContext(credential=dict.get, internal_store=store))

    def make_provider(self) -> InternalProvider:
        return self._provider(self.writer)

    def store(self, name: str, value: str) -> None:
        self.writer.put(name, {"value": value}, actor="test")

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        return {"source": "internal", "secret": name, "version": int(version) if version is not None else None}

    def make_unavailable_provider(self) -> InternalProvider:
        blocked = self.tmp_path / "unreachable.db"
        blocked.mkdir(exist_ok=True)  # a directory where the database file should be: it cannot be opened
        unreachable = Database(f"sqlite:///{blocked}")
        return self._provider(InternalStore(unreachable, self.keyring))

    def make_bad_auth_provider(self) -> InternalProvider:
        self.store("contract/found", "sealed-under-the-right-key")
        return self._provider(InternalStore(self.db, _ring()))


def test_key_material_is_not_in_the_keyring_repr() -> None:
    key = os.urandom(32)
    assert base64.b64encode(key).decode() not in repr(KeyRing([key]))
