"""Master-key rotation: re-encrypt every stored secret under the current key."""

from __future__ import annotations

import sqlalchemy as sa

from service import audit
from service.crypto import KeyRing
from service.db import Database, InternalSecretVersion, SmtpSettings
from service.settings import plaintext_context


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
            password = row.document.get("password")
            if not password or password.get("source") != "plaintext":
                continue
            if KeyRing.key_id_of(password["ciphertext"]) == keyring.primary_id:
                continue
            context = plaintext_context(row.scope)
            sealed = keyring.encrypt(keyring.decrypt(password["ciphertext"], context), context)
            row.document = {**row.document, "password": {**password, "ciphertext": sealed}}
            counts["passwords"] += 1
        audit.record(
            session,
            actor=actor,
            action="master_key.rotate",
            target="master_key",
            after={"key_id": keyring.primary_id, **counts},
        )
    return counts
