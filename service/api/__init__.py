"""The HTTP layer: authentication, body parsing and the problem+json error path."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import parse_qsl

from flask import Flask, Response, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.db import is_unavailable
from service.errors import (
    ApiError,
    DatabaseUnavailable,
    Forbidden,
    InvalidJson,
    TenantNotAllowed,
    TlsRequired,
    Unauthorized,
    ValidationFailed,
)
from service.observability import PRINCIPAL_KEY
from service.tokens import Principal
from service.transport import secrets_may_travel

log = logging.getLogger("smtpconf.api")
F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_CODES = {
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Request body too large (64 KiB at most)"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
}


def problem(error: ApiError) -> Response:
    response = Response(json.dumps(error.to_problem()), status=error.status, mimetype="application/problem+json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@functools.lru_cache(maxsize=256)
def parse_query(raw: bytes) -> ImmutableMultiDict[str, str]:
    """A query string as Werkzeug parses it, once per distinct string (senders poll the same URL).

    Immutable, so one result serves every request. A raw byte that is not
    UTF-8 (a client may send one) becomes U+FFFD, so it fails validation as a
    bad value instead of failing the request.
    """
    text = raw.decode("utf-8", "replace")
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"))


def query_arg(args: Mapping[str, str], name: str) -> str | None:
    """The first value of a query parameter, or None (Werkzeug's ``get`` raises and catches a KeyError when absent)."""
    return args[name] if name in args else None


def principal() -> Principal:
    return g.principal


def requires(*roles: str, checks_tenant: bool = False) -> Callable[[F], F]:
    """The view needs a bearer token carrying one of ``roles`` (none given: any role).

    A token restricted to tenants reaches a route only for one of its tenants
    (the ``tenant`` of the path; a route without one is the system level's),
    except the routes open to any role, which belong to no level.
    ``checks_tenant``: the view decides itself (the tenant is in its query).
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            services, tenant = current_app.extensions["smtpconf"], kwargs.get("tenant")
            g.principal = authenticate(services, request.environ, roles, tenant, checks_tenant=checks_tenant)
            return view(*args, **kwargs)

        wrapper.required_roles = roles  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def authenticate(
    services: Any, environ: dict[str, Any], roles: tuple[str, ...], tenant: str | None, *, checks_tenant: bool = False
) -> Principal:
    """The caller of a request needing one of ``roles`` for ``tenant`` (see ``requires``); 401 or 403 otherwise.

    Every authenticated request passes here: the WSGI environ is read directly.
    """
    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send Authorization: Bearer <token>.", headers={"WWW-Authenticate": "Bearer"})
    who = services.authenticate(token)
    if who is None:
        raise Unauthorized("The token is not valid.", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if roles and who.roles.isdisjoint(roles):
        raise Forbidden(f"This needs one of the roles: {', '.join(roles)}.")
    if roles and not checks_tenant and not who.may_act_for(tenant):
        raise TenantNotAllowed(_not_allowed(tenant))
    environ[PRINCIPAL_KEY] = who.name
    return who


def _not_allowed(tenant: str | None) -> str:
    return f"This token may not act for tenant {tenant!r}." if tenant is not None else "This token may not act at the system level."


def require_tenant(who: Principal, tenant: str | None) -> None:
    """403 ``tenant_not_allowed`` unless ``who`` may act for ``tenant`` (None: the system level)."""
    if not who.may_act_for(tenant):
        raise TenantNotAllowed(_not_allowed(tenant))


def require_secure_transport(environ: dict[str, Any] | None = None, config: Any = None) -> None:
    """403 ``tls_required`` unless a secret may go back over this request's transport (by default Flask's)."""
    config = config or current_app.extensions["smtpconf"].config
    if not secrets_may_travel(environ or request.environ, allow_plaintext=config.allow_plaintext_secrets):
        raise TlsRequired(
            "This response carries a secret: ask over HTTPS (or, behind a proxy that encrypts, "
            "have the operator set SMTPCONF_ALLOW_PLAINTEXT_SECRETS=true)."
        )


def json_body(optional: bool = False) -> Any:
    """The parsed JSON body; 400 ``invalid_json`` when it does not parse; ``optional``: None when empty.

    Only a body of no bytes at all is "no body": whitespace alone is not a JSON text.
    """
    raw = request.get_data(cache=True)
    if request.content_length is None and len(raw) >= (request.max_content_length or len(raw) + 1):
        # A streamed (chunked) body is cut at the limit without a word: one byte more is too large.
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    if not raw:
        if optional:
            return None
        raise InvalidJson("The request needs a JSON body.")
    try:
        document = json.loads(raw, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"The body is not valid JSON: {exc.msg}.") from None
    except UnicodeDecodeError:
        raise InvalidJson("The body is not valid JSON: not UTF-8.") from None
    except (ValueError, RecursionError):
        # NaN and Infinity, numbers of thousands of digits, nesting deeper than the parser's stack.
        detail = "The body is not valid JSON, or holds a number or a nesting depth beyond what is accepted."
        raise InvalidJson(detail) from None
    if optional and document is None:
        # A JSON null would otherwise pass for "no body" and skip the checks an object gets.
        raise ValidationFailed(errors={"_schema": ["The body is a JSON object, or empty."]})
    return document


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def query_flag(name: str, args: Mapping[str, str] | None = None) -> bool:
    """A true/false query parameter (of Flask's request unless ``args`` are given); 422 when it is neither."""
    value = query_arg(request.args if args is None else args, name)
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValidationFailed(f"Query parameter {name} must be true or false.", errors={name: ["Must be true or false."]})


def int_query(name: str, default: int | None, low: int, high: int, errors: dict[str, list[str]]) -> int | None:
    """An integer query parameter within [low, high]; a bad one is noted in ``errors`` (for one 422)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        errors[name] = ["Must be an integer."]
        return default
    if not low <= value <= high:
        errors[name] = [f"Must be between {low} and {high}."]
    return value


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code, title = PROBLEM_CODES.get(status, ("http_error", error.name))
        detail = title if status != 405 else f"{request.method} is not allowed here."
        if status == 413 and request.max_content_length:
            # The message routes take more than the 64 KiB of every other route.
            detail = f"Request body too large ({request.max_content_length} bytes at most)."
        response = problem(ApiError(detail, status=status, code=code, title=title))
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _failure(error: Exception) -> Response:
        return problem(api_error(error))


def api_error(error: Exception) -> ApiError:
    """What a failure other than HTTP's own tells the caller: the one mapping, for the views and the effective reads."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, SQLAlchemyError) and is_unavailable(error):
        # The one place where a database that is down, restarting, locked or
        # read-only becomes 503: whatever the view was doing, it needed the database.
        cause = getattr(error, "orig", None) or error
        log.warning("database unavailable", extra={"error": type(cause).__name__})
        return DatabaseUnavailable()
    # Only the class name: an exception message may carry a value.
    log.error("unhandled error", extra={"error": type(error).__name__})
    return ApiError(
        "The service failed to handle the request.", status=500, code="internal_error", title="Internal error"
    )
