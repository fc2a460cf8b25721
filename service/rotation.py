"""Master-key rotation: re-encrypt every stored secret under the current key."""

from __future__ import annotations

import sqlalchemy as sa

from service import audit
from service.crypto import KeyRing
from service.db import Database, InternalSecretVersion, SmtpSettings
from service.oauth_flows import SECRET_FIELDS
from service.settings import auth_secret_context, plaintext_context


def internal_secret_context(name: str, version: int) -> str:
    """Associated data binding an internal secret value to its name and version."""
    return f"internal_secret:{name}:{version}"


def rotate_master_key(db: Database, keyring: KeyRing, actor: str = "cli") -> dict[str, int]:
    """One transaction: every value ends sealed by ``keyring``'s first key, or nothing changes."""
    counts = {"secrets": 0, "passwords": 0}
    with db.transaction() as session:
        for row in session.scalars(sa.select(InternalSecretVersion).with_for_update()):
            if row.key_id == keyring.primary_id:
                continue
            context = internal_secret_context(row.name, row.version)
            row.ciphertext = keyring.encrypt(keyring.decrypt(row.ciphertext, context), context)
            row.key_id = keyring.primary_id
            counts["secrets"] += 1
        for row in session.scalars(sa.select(SmtpSettings).with_for_update()):
            document = dict(row.document)
            password = document.get("password")
            if _stale(password, keyring):
                document["password"] = _resealed(password, plaintext_context(row.scope), keyring)
                counts["passwords"] += 1
            auth = document.get("auth")
            if isinstance(auth, dict):
                # OAuth2 client secrets and keys kept as plaintext are sealed like passwords.
                for name in SECRET_FIELDS:
                    if _stale(auth.get(name), keyring):
                        auth = {**auth, name: _resealed(auth[name], auth_secret_context(row.scope, name), keyring)}
                        counts["passwords"] += 1
                document["auth"] = auth
            if document != row.document:
                row.document = document
        audit.record(
            session,
            actor=actor,
            action="master_key.rotate",
            target="master_key",
            after={"key_id": keyring.primary_id, **counts},
        )
    return counts


def _stale(reference: object, keyring: KeyRing) -> bool:
    """A stored plaintext reference sealed under a key other than the current one."""
    return (
        isinstance(reference, dict)
        and reference.get("source") == "plaintext"
        and "ciphertext" in reference
        and KeyRing.key_id_of(reference["ciphertext"]) != keyring.primary_id
    )


def _resealed(reference: dict, context: str, keyring: KeyRing) -> dict:
    return {**reference, "ciphertext": keyring.encrypt(keyring.decrypt(reference["ciphertext"], context), context)}
