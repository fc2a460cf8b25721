"""AUTH for submission: the username names the tenant (``*``: the system level), the password is a sender token."""

from __future__ import annotations

import dataclasses

from service.errors import DatabaseUnavailable
from service.settings_model import TENANT_ID
from service.tokens import Authenticator, Principal

SYSTEM_LEVEL = "*"
INVALID = "535 5.7.8 Authentication credentials invalid"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a session authenticated as, and for which tenant (None: the system level)."""

    tenant: str | None
    principal: Principal
    #: Kept in memory only, to check before each message that the token still exists and may send.
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """An AUTH attempt's result: an identity, or the reply refusing it."""

    identity: Identity | None = None
    reply: str = INVALID
    #: Whether it counts towards closing the connection after repeated failures (an outage does not).
    counts_as_failure: bool = True


class Refused(Exception):
    """A token that may not send (any more) for the tenant it was given for."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def tenant_of(username: str) -> str | None:
    """The tenant a username names; ``Refused`` when it names none."""
    if username == SYSTEM_LEVEL:
        return None
    if not TENANT_ID.match(username):
        raise Refused(f"{INVALID}: the username is a tenant id, or * for the system level")
    return username


def sender(authenticate: Authenticator, token: str, tenant: str | None) -> Principal:
    """The principal of a token that may send for ``tenant``; ``Refused`` otherwise.

    Raises ``DatabaseUnavailable`` when whether the token is valid cannot be known.
    """
    principal = authenticate(token)
    if principal is None:
        raise Refused(INVALID)
    if "sender" not in principal.roles:
        raise Refused("535 5.7.1 This token may not send mail: it lacks the sender role")
    if not principal.may_act_for(tenant):
        where = "the system level" if tenant is None else f"tenant {tenant}"
        raise Refused(f"535 5.7.1 This token may not send for {where} (tenant_not_allowed)")
    return principal


def check(authenticate: Authenticator, login: bytes, password: bytes) -> Outcome:
    """An AUTH PLAIN or LOGIN attempt (blocking: it may read the database)."""
    try:
        username, token = login.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return Outcome()
    try:
        tenant = tenant_of(username)
        return Outcome(Identity(tenant, sender(authenticate, token, tenant), token))
    except Refused as exc:
        return Outcome(reply=exc.reply)
    except DatabaseUnavailable:
        return Outcome(reply="454 4.7.0 Temporary authentication failure: the token cannot be checked now", counts_as_failure=False)
