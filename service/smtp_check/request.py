"""What a check is asked to do: the settings, how to get the credentials, and where it may go."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.smtp_check.policy import DestinationPolicy, Resolver


@dataclass(frozen=True)
class ResolvedPassword:
    """A password value with where it came from; the value never appears in the repr."""

    value: str = field(repr=False)
    source: str
    version: str | None = None
    from_cache: bool = False


class PasswordUnavailable(Exception):
    """The password getter could not produce a value; the message names no secret."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source


@dataclass(frozen=True)
class AccessToken:
    """An OAuth2 access token for XOAUTH2/OAUTHBEARER; the value never appears in the repr."""

    value: str = field(repr=False)
    flow: str
    expires_at: datetime | None = None
    from_cache: bool = False


class TokenUnavailable(Exception):
    """The token getter could not produce a token.

    ``code`` is ``token_unavailable`` (the endpoint refused or failed; ``oauth_error``
    is its ``error``) or ``password_unavailable`` (the client secret or key could not
    be resolved). The message names no secret.
    """

    def __init__(self, message: str, *, oauth_error: str | None = None, code: str = "token_unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.oauth_error = oauth_error
        self.code = code


PasswordGetter = Callable[[bool], ResolvedPassword]
#: Called with ``refresh=True`` after the server refused a token: drop it and get another.
TokenGetter = Callable[[bool], AccessToken]


@dataclass
class CheckRequest:
    """What to check: effective settings, how to get the password or token, and where checks may go.

    ``send_to=None`` validates only (no MAIL/RCPT/DATA); an address sends one test mail.
    The password getter runs in the caller's thread (it may rely on thread-local
    context); its time counts against ``timeout_seconds`` but only its own
    timeouts bound it. Every other step gets the time left before the deadline.
    ``get_token`` replaces ``get_password`` for OAuth2 settings (one of them, or neither).
    """

    settings: Mapping[str, Any]
    get_password: PasswordGetter | None
    policy: DestinationPolicy
    send_to: str | None = None
    include_cc_bcc: bool = False
    scope: str = "system"
    service_name: str = "smtp-config-service"
    fips_mode: bool = False
    resolver: Resolver | None = None
    get_token: TokenGetter | None = None
