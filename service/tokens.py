"""API tokens: random, stored only as hashes, each carrying one or more roles."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import sqlalchemy as sa

from service.audit import record
from service.db import ApiToken, Database, utcnow

ROLES = ("admin", "reader", "secret-reader", "security")
TOKEN_PREFIX = "smtpconf_"


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller a request was authenticated as."""

    name: str
    roles: frozenset[str]


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of entropy, so a fast hash is as good as a slow one
    # here and keeps authentication cheap on every request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenError(ValueError):
    """A token cannot be created as asked."""


def create_token(db: Database, name: str, roles: list[str], actor: str = "cli") -> str:
    """Store a new token's hash and return the token itself (shown once)."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise TokenError(f"unknown role(s): {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    if not roles:
        raise TokenError("a token needs at least one role")
    if not name or len(name) > 128:
        raise TokenError("a token name is 1 to 128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as session:
        if session.scalar(sa.select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise TokenError(f"a token named {name!r} exists already")
        session.add(ApiToken(name=name, token_hash=hash_token(token), roles=sorted(set(roles)), created_at=utcnow()))
        record(session, actor=actor, action="token.create", target=f"token:{name}", after={"name": name, "roles": sorted(set(roles))})
    return token


def authenticate(db: Database, token: str) -> Principal | None:
    """The principal a bearer token belongs to, or ``None``."""
    with db.read() as session:
        row = session.execute(
            sa.select(ApiToken.name, ApiToken.roles).where(ApiToken.token_hash == hash_token(token))
        ).first()
    if row is None:
        return None
    return Principal(name=row.name, roles=frozenset(row.roles))
