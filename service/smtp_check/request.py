"""What a check is asked to do: the settings, how to get the credentials, and where it may go."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


PasswordGetter = Callable[[bool], ResolvedPassword]


@dataclass
class CheckRequest:
    """What to check: effective settings, how to get the password, and where checks may go.

    ``send_to=None`` validates only (no MAIL/RCPT/DATA); an address sends one test mail.
    The password getter runs in the caller's thread (it may rely on thread-local
    context); its time counts against ``timeout_seconds`` but only its own
    timeouts bound it. Every other step gets the time left before the deadline.
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
