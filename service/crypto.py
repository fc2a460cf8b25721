"""AES-256-GCM encryption of stored secrets under a ring of master keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.config import Config, ConfigError

FORMAT = "v1"


class DecryptionError(Exception):
    """A stored value cannot be decrypted with any key in the ring."""


def key_id(key: bytes) -> str:
    """A short public identifier of a key: not reversible, tags each ciphertext."""
    return hashlib.sha256(b"smtpconf-key-id:" + key).hexdigest()[:16]


def generate_key_text() -> str:
    """32 random bytes, base64: the format of ``SMTPCONF_MASTER_KEY``."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def parse_key(text: str) -> bytes:
    """Decode one base64 master key and insist on 32 bytes."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a master key is not valid base64") from None
    if len(key) != 32:
        raise ConfigError("a master key must be 32 bytes (base64 of 32 random bytes)")
    return key


class KeyRing:
    """Several master keys at once: the first encrypts, every one decrypts.

    Each ciphertext is ``v1:<key id>:<base64(nonce || ciphertext || tag)>`` so a
    value names the key that sealed it and a rotation can find what is left.
    The associated data binds a value to where it is stored, so a ciphertext
    copied to another row does not decrypt there.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("no master key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.primary_id = key_id(keys[0])

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary_id}, keys={len(self._keys)})"

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self.primary_id].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{FORMAT}:{self.primary_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, token: str, context: str) -> str:
        try:
            fmt, kid, payload = token.split(":", 2)
            raw = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            raise DecryptionError("stored value is not in the expected format") from None
        if fmt != FORMAT or kid not in self._keys:
            raise DecryptionError(f"stored value is sealed with key {kid}, which is not in the key ring")
        try:
            return self._keys[kid].decrypt(raw[:12], raw[12:], context.encode("utf-8")).decode("utf-8")
        except Exception:
            raise DecryptionError("stored value failed authentication") from None

    @staticmethod
    def key_id_of(token: str) -> str | None:
        parts = token.split(":", 2)
        return parts[1] if len(parts) == 3 else None

    @classmethod
    def from_config(cls, config: Config) -> "KeyRing":
        """Keys from ``SMTPCONF_MASTER_KEY`` and/or ``SMTPCONF_MASTER_KEY_FILE``.

        Either may hold several keys, one per line (or comma-separated): the
        first is the current key, the others are still accepted for decryption.
        """
        texts: list[str] = []
        if config.master_key:
            texts += config.master_key.replace(",", "\n").splitlines()
        if config.master_key_file:
            path = Path(config.master_key_file)
            try:
                texts += path.read_text().replace(",", "\n").splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read SMTPCONF_MASTER_KEY_FILE {path}: {exc.strerror}") from None
        keys: list[bytes] = []
        for text in texts:
            if text.strip() and not text.strip().startswith("#"):
                key = parse_key(text)
                if key not in keys:
                    keys.append(key)
        if not keys:
            raise ConfigError(
                "no master key: set SMTPCONF_MASTER_KEY (32 random bytes, base64) or "
                "SMTPCONF_MASTER_KEY_FILE, or use the development run command"
            )
        return cls(keys)
