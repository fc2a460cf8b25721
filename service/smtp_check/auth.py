"""SASL mechanisms as pure functions: credentials (and a challenge) in, the base64 text to send out.

In the style of aiosmtplib's ``auth.py``: no I/O here, so each encoding is
tested without a server, and the dialogue only sends what these return.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

#: RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
MAX_COMMAND_LINE = 512
#: Password mechanisms in order of preference.
PASSWORD_MECHANISMS = ("PLAIN", "LOGIN")
#: Bearer-token mechanisms in order of preference (OAUTHBEARER only where XOAUTH2 is not offered).
TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
#: What a client sends to end the exchange after a server's error challenge:
#: an empty line for XOAUTH2, a single ^A (RFC 7628 3.2.3) for OAUTHBEARER.
OAUTH_ERROR_ACK = {"XOAUTH2": "", "OAUTHBEARER": "AQ=="}


def b64(text: str) -> str:
    """``text`` in UTF-8, base64-encoded."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def auth_plain_encode(login: str, password: str) -> str:
    """RFC 4616 PLAIN initial response: no authorisation identity, the login, the password."""
    return b64(f"\0{login}\0{password}")


def auth_login_encode(text: str) -> str:
    """The answer to one LOGIN challenge (the login, then the password)."""
    return b64(text)


def xoauth2_encode(user: str, token: str) -> str:
    """Google's and Microsoft's XOAUTH2 initial response: ``user=U^Aauth=Bearer T^A^A``."""
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01")


def oauthbearer_encode(user: str, token: str, host: str, port: int) -> str:
    """RFC 7628 OAUTHBEARER initial response: a GS2 header naming the user, then host, port and bearer token."""
    # A comma or equals sign in the authorisation identity is escaped as in RFC 5801.
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return b64(f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")


def oauth_error(challenge: str) -> dict[str, Any] | None:
    """The JSON error a server sends in a ``334`` after refusing a bearer token (RFC 7628 3.2.2), if any."""
    try:
        decoded = json.loads(base64.b64decode(challenge.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def fits_one_line(mechanism: str, initial_response: str) -> bool:
    """Whether ``AUTH MECHANISM RESPONSE`` fits in one command line; otherwise the response follows the 334."""
    return len(f"AUTH {mechanism} {initial_response}\r\n") <= MAX_COMMAND_LINE


def pick(offered: set[str], preference: tuple[str, ...]) -> str | None:
    """The first mechanism of ``preference`` that the server offers."""
    return next((mechanism for mechanism in preference if mechanism in offered), None)
