"""OAuth2 access tokens shared by the workers of an instance: one file per key, sealed under the master key."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from service.crypto import DecryptionError, KeyRing
from service.oauth_flows import Token

#: How often a worker waiting for another worker's token request looks again.
LOCK_POLL_SECONDS = 0.01


class SharedTokens:
    """Tokens in a private directory next to the generation board, which every worker of an instance finds.

    A worker that needs a token takes the key's ``flock`` (released by the
    kernel if it dies), uses the token another worker stored if it is still
    good, and otherwise asks the endpoint and stores the answer. Files hold
    AES-GCM ciphertext bound to the key's file name: never a token in plaintext.
    """

    def __init__(self, directory: Path | str, keyring: KeyRing) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keyring = keyring

    @contextlib.contextmanager
    def locked(self, key: Any, timeout: float) -> Iterator[None]:
        """Hold ``key``'s lock across the instance; TimeoutError when another worker holds it past ``timeout``."""
        fd = os.open(self.directory / f"{_name(key)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError from None
                    time.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read(self, key: Any) -> Token | None:
        """The token stored for ``key``, or None (none, unreadable, or sealed under a key no longer held)."""
        name = _name(key)
        try:
            sealed = (self.directory / name).read_text()
            fields = json.loads(self.keyring.decrypt(sealed, _context(name)))
            return Token(fields["value"], float(fields["expires_at"]), fields["flow"], float(fields["issued_at"]), False)
        except (OSError, DecryptionError, ValueError, KeyError, TypeError):
            return None

    def write(self, key: Any, token: Token) -> None:
        name = _name(key)
        fields = {k: v for k, v in dataclasses.asdict(token).items() if k != "from_cache"}
        sealed = self.keyring.encrypt(json.dumps(fields), _context(name))
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".token-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(sealed)
            os.replace(temporary, self.directory / name)  # readers see the old file or the new one, never half
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def clear(self) -> None:
        for path in self.directory.iterdir():
            if not path.name.endswith(".lock"):
                with contextlib.suppress(OSError):
                    path.unlink()


def _name(key: Any) -> str:
    return hashlib.sha256(json.dumps(dataclasses.astuple(key)).encode()).hexdigest()


def _context(name: str) -> str:
    return f"oauth_access_token:{name}"
