"""The one error path: every failure leaves as RFC 9457 problem+json with a stable code."""

from __future__ import annotations

from typing import Any, Mapping

PROBLEM_TYPE_BASE = "https://smtp-config-service.invalid/problems/"
#: What a client is told to wait before trying again while the database is unavailable.
RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error the API reports to its caller as problem+json."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        errors: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.detail = detail or self.title
        self.errors = dict(errors) if errors else None
        self.extra = dict(extra) if extra else {}
        self.headers = dict(headers) if headers else {}

    def to_problem(self) -> dict[str, Any]:
        """The problem+json document for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class ValidationFailed(ApiError):
    status = 422
    code = "validation_failed"
    title = "The request does not pass validation"


class InvalidJson(ApiError):
    status = 400
    code = "invalid_json"
    title = "Invalid JSON"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    title = "Not found"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    title = "Not allowed for this token"


class PreconditionFailed(ApiError):
    status = 412
    code = "precondition_failed"
    title = "The resource changed since it was read"


class Conflict(ApiError):
    status = 409
    code = "conflict"
    title = "Conflict"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


class TlsRequired(ApiError):
    status = 403
    code = "tls_required"
    title = "A secret is only sent over HTTPS"
class DatabaseUnavailable(ApiError):
    """The database cannot be used now: what needs it answers 503 with ``Retry-After``."""

    status = 503
    code = "database_unavailable"
    title = "The database is unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = RETRY_AFTER_SECONDS, **kwargs: Any) -> None:
        headers = {"Retry-After": str(retry_after), **(kwargs.pop("headers", None) or {})}
        super().__init__(detail or "The database cannot be reached now; try again shortly.", headers=headers, **kwargs)


class TenantNotAllowed(ApiError):
    """A token restricted to tenants asked for another tenant or for the system level."""

    status = 403
    code = "tenant_not_allowed"
    title = "This token may not act for this tenant"


class PasswordUnavailable(ApiError):
    status = 503
    code = "password_unavailable"
    title = "The SMTP password cannot be resolved"


class TokenUnavailable(ApiError):
    status = 503
    code = "token_unavailable"
    title = "No OAuth2 access token can be obtained"
