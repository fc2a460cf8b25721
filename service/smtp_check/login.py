"""AUTH over an open connection: a password (PLAIN, LOGIN) or a bearer token (XOAUTH2, OAUTHBEARER)."""

from __future__ import annotations

from collections.abc import Mapping

from service.smtp_check import auth
from service.smtp_check.connection import Connection
from service.smtp_check.errors import AuthRejected, Failure

#: What a transcript shows in place of a credential.
MASK = "********"
#: Exchange Online's answers when password (basic) authentication is turned off by policy.
BASIC_AUTH_DISABLED = {(535, "5.7.139"), (550, "5.7.30")}


def authenticate_password(
    connection: Connection, offered: Mapping[str, str], login: str, password: str, secrets: list[str]
) -> None:
    """PLAIN (preferred) or LOGIN; ``secrets`` gains what a transcript must mask. Raises ``Failure``, or
    ``AuthRejected`` when the server refused the credentials."""
    if "AUTH" not in offered:
        raise Failure("auth_unsupported", "The server does not offer authentication; the credentials were not sent.")
    mechanisms = set(offered["AUTH"].upper().split())
    if "PLAIN" in mechanisms:
        payload = auth.auth_plain_encode(login, password)
        secrets.append(payload)
        reply = connection.command(f"AUTH PLAIN {payload}", shown=f"AUTH PLAIN {MASK}")
    elif "LOGIN" in mechanisms:
        reply = connection.command("AUTH LOGIN")
        if reply.code == 334:
            reply = connection.command(auth.auth_login_encode(login), shown=MASK)
        if reply.code == 334:
            reply = connection.command(auth.b64(password), shown=MASK)
    else:
        offered = " ".join(sorted(mechanisms)) or "none"
        raise Failure("auth_unsupported", f"The server offers AUTH {offered}, but neither PLAIN nor LOGIN.")
    if reply.code == 235:
        return
    if reply.code == 334:
        raise Failure("protocol_error", "The server asked for more authentication data than PLAIN or LOGIN define.", reply, polite=False)
    if reply.code == 504:
        raise Failure("auth_unsupported", "The server refused the authentication mechanism it offered.", reply)
    if (reply.code, reply.enhanced) in BASIC_AUTH_DISABLED:
        raise Failure(
            "basic_auth_disabled",
            "The server refuses password (basic) authentication by policy: use auth.method oauth2 "
            "(for Exchange Online, the microsoft flow).",
            reply,
        )
    raise AuthRejected("auth_failed", "The server rejected the username or password.", reply)

def authenticate_token(
    connection: Connection, offered: Mapping[str, str], user: str, token: str, server: tuple[str, int], secrets: list[str]
) -> None:
    """XOAUTH2 (preferred) or OAUTHBEARER for ``user`` at ``server`` (host, port). Raises ``Failure``, or
    ``AuthRejected`` when the server refused the token."""
    if "AUTH" not in offered:
        raise Failure("auth_unsupported", "The server does not offer authentication; the token was not sent.")
    mechanisms = set(offered["AUTH"].upper().split())
    mechanism = auth.pick(mechanisms, auth.TOKEN_MECHANISMS)
    if mechanism is None:
        offered = " ".join(sorted(mechanisms)) or "none"
        raise Failure("auth_unsupported", f"The server offers AUTH {offered}, but neither XOAUTH2 nor OAUTHBEARER.")
    if mechanism == "XOAUTH2":
        payload = auth.xoauth2_encode(user, token)
    else:
        payload = auth.oauthbearer_encode(user, token, *server)
    secrets.append(payload)
    if auth.fits_one_line(mechanism, payload):
        reply = connection.command(f"AUTH {mechanism} {payload}", shown=f"AUTH {mechanism} {MASK}")
    else:
        # Too long for one command line (RFC 5321 4.5.3.1.4; Gmail answers 555 5.5.2):
        # the response follows the server's empty challenge instead.
        reply = connection.command(f"AUTH {mechanism}")
        if reply.code == 334:
            reply = connection.command(payload, shown=MASK)
    detail = ""
    if reply.code == 334:
        # A refused token: the server explains in a JSON challenge and waits for a
        # dummy response before its final reply (RFC 7628 3.2.3).
        explained = auth.oauth_error(reply.text)
        if explained and explained.get("status"):
            detail = f" (status {str(explained['status'])[:20]})"
        reply = connection.command(auth.OAUTH_ERROR_ACK[mechanism])
    if reply.code == 235:
        return
    if reply.code == 334:
        raise Failure("protocol_error", "The server kept asking for authentication data after the token.", reply, polite=False)
    if reply.code == 504:
        raise Failure("auth_unsupported", "The server refused the authentication mechanism it offered.", reply)
    raise AuthRejected("auth_failed", f"The server refused the access token for {user}{detail}.", reply)
