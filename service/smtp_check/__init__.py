"""SMTP check engine: walks a connection stage by stage, optionally sends a test mail, and reports a masked transcript.

The modules, one concern each: ``policy`` (where a check may connect),
``request`` (what it is asked), ``connection`` (the wire and TLS), ``auth``
(SASL mechanisms as pure encoders), ``login`` (the AUTH exchanges), ``message`` (the test mail),
``dialogue`` (the stages) and ``errors``. This package never imports Flask.
"""

from __future__ import annotations

from typing import Any

from service.smtp_check.dialogue import SECURITY_MODES, STAGES, Check
from service.smtp_check.login import MASK
from service.smtp_check.policy import (
    DEFAULT_ALLOWED_PORTS,
    DEFAULT_DENIED,
    DestinationPolicy,
    IPNetwork,
    Resolver,
    system_resolver,
)
from service.smtp_check.request import (
    AccessToken,
    CheckRequest,
    PasswordGetter,
    PasswordUnavailable,
    ResolvedPassword,
    TokenGetter,
    TokenUnavailable,
)

__all__ = [
    "DEFAULT_ALLOWED_PORTS",
    "DEFAULT_DENIED",
    "MASK",
    "AccessToken",
    "SECURITY_MODES",
    "STAGES",
    "CheckRequest",
    "DestinationPolicy",
    "IPNetwork",
    "PasswordGetter",
    "PasswordUnavailable",
    "ResolvedPassword",
    "Resolver",
    "TokenGetter",
    "TokenUnavailable",
    "default_resolver",
    "run_check",
]

# Looked up at each check (not bound at import), so a lab or a test can put another resolver here.
_system_resolver: Resolver = system_resolver


def default_resolver() -> Resolver:
    """The resolver checks and token requests use unless told otherwise (looked up at each call)."""
    return _system_resolver


def run_check(request: CheckRequest) -> dict[str, Any]:
    """Run the check and return the contract's result document.

    SMTP and network problems are reported in the result, never raised; a
    ValueError means the request itself is invalid (for instance
    ``insecure_skip_verify`` in FIPS mode).
    """
    return Check(request, _system_resolver).run()
