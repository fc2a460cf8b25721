"""The credentials the service itself uses to reach a secret manager: environment, file or internal references."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from providers.base import ProviderMisconfigured
from service.internal_store import InternalStore


class ManagerCredentials:
    """Resolves ``{"env": NAME}``, ``{"file": PATH}`` or ``{"internal": SECRET}`` for a provider's login."""

    def __init__(self, store: InternalStore) -> None:
        self.store = store

    def __call__(self, ref: Mapping[str, str]) -> str:
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
