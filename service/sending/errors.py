"""How a send fails: the contract's error codes for the HTTP routes and the SMTP submission server."""

from __future__ import annotations

from typing import Any

from service.errors import ApiError, Conflict, PasswordUnavailable, TenantNotAllowed, TokenUnavailable, ValidationFailed

__all__ = [
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "PasswordUnavailable",
    "TenantNotAllowed",
    "TokenUnavailable",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "ValidationFailed",
]

#: What a caller is told to wait before trying again after a temporary failure upstream.
UPSTREAM_RETRY_AFTER_SECONDS = 30


class UpstreamRejected(ApiError):
    """The mail server refused permanently (a 5xx): sending the same again will not help."""

    status = 502
    code = "upstream_rejected"
    title = "The mail server rejected the message"

    def __init__(
        self,
        detail: str,
        *,
        smtp_code: int,
        smtp_enhanced_code: str | None,
        smtp_message: str,
        rejected: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.smtp_code = smtp_code
        self.smtp_enhanced_code = smtp_enhanced_code
        self.smtp_message = smtp_message
        self.rejected = dict(rejected or {})
        extra: dict[str, Any] = {
            "smtp_code": smtp_code,
            "smtp_enhanced_code": smtp_enhanced_code,
            "smtp_message": smtp_message,
        }
        if self.rejected:
            extra["rejected"] = self.rejected
        super().__init__(detail, extra=extra)


class UpstreamUnavailable(ApiError):
    """The mail server could not take the message now (a 4xx, a timeout, unreachable, TLS): try again later.

    ``reason``: ``timeout``, ``unreachable``, ``temporary`` (the server answered 4xx),
    ``tls``, ``protocol``, ``auth``, ``not_allowed`` (the destination policy).
    """

    status = 503
    code = "upstream_unavailable"
    title = "The mail server is unavailable"

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        smtp_code: int | None = None,
        smtp_enhanced_code: str | None = None,
        smtp_message: str | None = None,
        retry_after: int = UPSTREAM_RETRY_AFTER_SECONDS,
    ) -> None:
        self.reason = reason
        self.smtp_code = smtp_code
        self.smtp_enhanced_code = smtp_enhanced_code
        self.smtp_message = smtp_message
        extra: dict[str, Any] = {"reason": reason}
        if smtp_code is not None:
            extra.update(smtp_code=smtp_code, smtp_enhanced_code=smtp_enhanced_code, smtp_message=smtp_message)
        super().__init__(detail, extra=extra, headers={"Retry-After": str(retry_after)})


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    title = "A request with this Idempotency-Key is still being sent"


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was used with another request"
