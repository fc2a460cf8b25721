"""API tokens: random, stored only as hashes, each carrying one or more roles."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
import time
from typing import Callable

import sqlalchemy as sa

from service.audit import record
from service.db import ApiToken, Database, is_unavailable, utcnow
from service.errors import DatabaseUnavailable
from service.settings import TENANT_ID

ROLES = ("admin", "reader", "secret-reader", "security", "sender")
TOKEN_PREFIX = "smtpconf_"
#: How long a worker trusts a token it found in the database without asking again.
TOKEN_CACHE_SECONDS = 3.0
#: While the database cannot be reached, how long after it was last found there a token keeps working.
TOKEN_OUTAGE_GRACE_SECONDS = 300.0
#: After the database was found unreachable, how long known tokens are taken from memory without asking it.
OUTAGE_BACKOFF_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller a request was authenticated as."""

    name: str
    roles: frozenset[str]
    #: The tenants a restricted token is limited to; None: unrestricted.
    tenants: tuple[str, ...] | None = None

    def may_act_for(self, tenant: str | None) -> bool:
        """Whether this caller may act for ``tenant`` (None: the system level); the one place that decides it."""
        return self.tenants is None or (tenant is not None and tenant in self.tenants)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of entropy, so a fast hash is as good as a slow one
    # here and keeps authentication cheap on every request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenError(ValueError):
    """A token cannot be created as asked."""


def create_token(
    db: Database, name: str, roles: list[str], actor: str = "cli", tenants: list[str] | None = None
) -> str:
    """Store a new token's hash and return the token itself (shown once); ``tenants`` restricts it."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise TokenError(f"unknown role(s): {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    if not roles:
        raise TokenError("a token needs at least one role")
    if not name or len(name) > 128:
        raise TokenError("a token name is 1 to 128 characters")
    if tenants is not None:
        bad = [tenant for tenant in tenants if not TENANT_ID.match(tenant)]
        if bad or not tenants:
            raise TokenError(f"not a tenant id: {', '.join(map(repr, bad)) or 'none given'}")
        tenants = sorted(set(tenants))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as session:
        if session.scalar(sa.select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise TokenError(f"a token named {name!r} exists already")
        session.add(
            ApiToken(name=name, token_hash=hash_token(token), roles=sorted(set(roles)), created_at=utcnow(), tenants=tenants)
        )
        after = {"name": name, "roles": sorted(set(roles)), "tenants": tenants}
        record(session, actor=actor, action="token.create", target=f"token:{name}", after=after)
    return token


@dataclasses.dataclass(eq=False)
class _Lookup:
    """One database lookup of a token hash that other threads may wait for."""

    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    principal: Principal | None = None
    error: BaseException | None = None


class Authenticator:
    """Bearer tokens to principals, with a short per-process memory of the tokens found.

    Every request authenticates, and a database query is most of what a cached
    read costs otherwise. Only hits are remembered, so a token created a moment
    ago works at once and an unknown one is looked up every time; a token
    removed from the database keeps working for at most ``ttl`` seconds in a
    worker that saw it just before.

    While the database cannot be reached, a token found there less than
    ``outage_grace`` seconds ago keeps working, so senders keep reading what
    is served from memory; any other token gets 503 ``database_unavailable``
    (whether it is valid cannot be known).
    """

    def __init__(
        self,
        db: Database,
        ttl: float = TOKEN_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        outage_grace: float = TOKEN_OUTAGE_GRACE_SECONDS,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.outage_grace = outage_grace
        self._clock = clock
        # Token hash -> (monotonic time last found in the database, principal).
        # Single dict operations are atomic, so request threads share it without a lock.
        self._known: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self._flights: dict[str, _Lookup] = {}

    def __call__(self, token: str) -> Principal | None:
        """The principal a bearer token belongs to, or ``None``."""
        digest = hash_token(token)
        now = self._clock()
        known = self._known.get(digest)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        in_grace = known is not None and now - known[0] < self.outage_grace
        if in_grace and self.db.unreachable_within(OUTAGE_BACKOFF_SECONDS):
            return known[1]  # type: ignore[index]
        try:
            who = self._shared_lookup(digest)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if in_grace:
                return known[1]  # type: ignore[index]
            raise DatabaseUnavailable("The database cannot be reached to check this token; try again shortly.") from None
        if who is None:
            self._known.pop(digest, None)
        else:
            self._known[digest] = (now, who)
        return who

    def _shared_lookup(self, digest: str) -> Principal | None:
        """One database lookup per token hash at a time: threads asking meanwhile wait for it."""
        with self._lock:
            flight = self._flights.get(digest)
            leader = flight is None
            if leader:
                flight = self._flights[digest] = _Lookup()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.principal
        try:
            flight.principal = self._lookup(digest)
            return flight.principal
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(digest, None)
            flight.done.set()

    def _lookup(self, digest: str) -> Principal | None:
        with self.db.read() as session:
            query = sa.select(ApiToken.name, ApiToken.roles, ApiToken.tenants).where(ApiToken.token_hash == digest)
            row = session.execute(query).first()
        if row is None:
            return None
        return Principal(name=row.name, roles=frozenset(row.roles), tenants=None if row.tenants is None else tuple(row.tenants))
