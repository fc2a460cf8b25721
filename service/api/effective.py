"""The effective settings senders poll: one answer, given by the Flask routes and, for ``GET``, before Flask."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from werkzeug.http import parse_etags

from service.api import (
    api_error,
    authenticate,
    parse_query,
    problem,
    query_arg,
    query_flag,
    require_secure_transport,
)
from service.errors import Forbidden, ValidationFailed
from service.observability import ENDPOINT_KEY
from service.schemas import NOTIFICATION_TYPES
from service.settings_model import TENANT_ID, tenant_scope

ROLES = ("admin", "reader", "secret-reader")
SYSTEM_RULE = "/v1/smtp/effective"
TENANT_RULE = "/v1/tenants/<tenant>/smtp/effective"
_TENANT_PREFIX, _TENANT_SUFFIX = TENANT_RULE.split("<tenant>")

Answer = tuple[str, list[tuple[str, str]], bytes]


def answer(services: Any, environ: dict[str, Any], tenant: str | None, caller: Any) -> Answer:
    """Status line, headers and body of an effective read by ``caller`` (authenticated); raises ``ApiError``.

    Every step is served from memory when nothing changed, down to the JSON text.
    """
    args = parse_query(environ.get("QUERY_STRING", "").encode("latin-1"))
    include_password = query_flag("include_password", args)
    if include_password and "secret-reader" not in caller.roles:
        raise Forbidden("include_password=true needs the secret-reader role.")
    if include_password:
        require_secure_transport(environ, services.config)
    if tenant is not None:
        tenant_scope(tenant)
    notification = query_arg(args, "notification")
    if notification is not None and notification not in NOTIFICATION_TYPES:
        raise ValidationFailed(
            f"Unknown notification type: {notification!r}.",
            errors={"notification": [f"Must be one of: {', '.join(NOTIFICATION_TYPES)}."]},
        )
    effective = services.settings.effective(tenant)
    extra: dict[str, Any] = {}
    if notification is not None:
        extra = services.settings.notification_fields(effective, notification)
    if include_password:
        extra.update(services.credentials.effective_fields(effective, caller.name))
    view = services.settings.effective_view(effective, extra)
    headers = [("ETag", view.etag), ("Cache-Control", "no-store" if include_password else "no-cache")]
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match and parse_etags(if_none_match).contains_weak(view.etag.strip('"')):
        return "304 NOT MODIFIED", headers, b""
    body = view.encoded
    return "200 OK", [("Content-Type", "application/json"), *headers, ("Content-Length", str(len(body)))], body


class EffectiveReads:
    """WSGI middleware: ``GET`` of the effective settings answered without Flask's request machinery.

    Senders poll these reads, mostly with nothing changed: Flask's request
    context, routing and response objects cost more than the read itself. The
    answer, errors included, is the routes' (the same functions give it); any
    other method or path, or a tenant id that is not one, goes on to Flask.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], services: Any) -> None:
        self.app = app
        self.services = services

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not path.endswith(_TENANT_SUFFIX):
            return self.app(environ, start_response)
        if path == SYSTEM_RULE:
            tenant, rule = None, SYSTEM_RULE
        elif path.startswith(_TENANT_PREFIX) and TENANT_ID.match(path[len(_TENANT_PREFIX) : -len(_TENANT_SUFFIX)]):
            tenant, rule = path[len(_TENANT_PREFIX) : -len(_TENANT_SUFFIX)], TENANT_RULE
        else:
            return self.app(environ, start_response)
        environ[ENDPOINT_KEY] = rule
        try:
            caller = authenticate(self.services, environ, ROLES, tenant)
            status, headers, body = answer(self.services, environ, tenant, caller)
        except Exception as exc:
            return problem(api_error(exc))(environ, start_response)
        start_response(status, headers)
        return (body,)
