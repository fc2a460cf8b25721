"""SMTP settings endpoints: system level, tenant overrides and effective settings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from service.api import effective, json_body, json_response, principal, query_flag, requires
from service.errors import NotFound, ValidationFailed
from service.schemas import NOTIFICATION_TYPES
from service.settings_model import SYSTEM_SCOPE, tenant_scope

bp = Blueprint("smtp", __name__)


def _services() -> Any:
    return current_app.extensions["smtpconf"]


def _level_response(scope: str) -> Response:
    services = _services()
    stored = services.settings.get(scope)
    if stored is None:
        code = "settings_not_configured" if scope == SYSTEM_SCOPE else "settings_not_found"
        raise NotFound("No settings are stored at this level.", code=code)
    system = services.settings.get(SYSTEM_SCOPE) if scope != SYSTEM_SCOPE else None
    body = services.settings.view(stored, inherited_from=system)
    return json_response(body, headers={"ETag": stored.etag})


def _put(scope: str, tenant: str | None) -> Response:
    services = _services()
    body = json_body()
    if query_flag("validate"):
        services.checks.limiter.hit(principal().name)
        result = services.checks.check(services.checks.candidate(tenant, body), send_to=None, include_cc_bcc=False)
        if not result["ok"]:
            raise ValidationFailed(
                f"The settings were not saved: the check failed at {result['stage']} ({result['error']['code']}).",
                errors={"settings": [result["error"]["message"]]},
                extra={"result": result},
            )
    stored = services.settings_writer.put(scope, body, actor=principal().name, if_match=request.headers.get("If-Match"))
    system = services.settings.get(SYSTEM_SCOPE) if scope != SYSTEM_SCOPE else None
    return json_response(services.settings.view(stored, inherited_from=system), headers={"ETag": stored.etag})


@bp.get("/v1/smtp")
@requires("admin", "reader")
def get_system() -> Response:
    return _level_response(SYSTEM_SCOPE)


@bp.put("/v1/smtp")
@requires("admin")
def put_system() -> Response:
    return _put(SYSTEM_SCOPE, None)


@bp.get("/v1/tenants/<tenant>/smtp")
@requires("admin", "reader")
def get_tenant(tenant: str) -> Response:
    return _level_response(tenant_scope(tenant))


@bp.put("/v1/tenants/<tenant>/smtp")
@requires("admin")
def put_tenant(tenant: str) -> Response:
    return _put(tenant_scope(tenant), tenant)


@bp.delete("/v1/tenants/<tenant>/smtp")
@requires("admin")
def delete_tenant(tenant: str) -> Response:
    _services().settings_writer.delete(tenant_scope(tenant), actor=principal().name, if_match=request.headers.get("If-Match"))
    return Response(status=204)


def _effective(tenant: str | None) -> Response:
    status, headers, body = effective.answer(_services(), request.environ, tenant, principal())
    return Response(body, status=status, headers=headers)


@bp.get(effective.SYSTEM_RULE)
@requires(*effective.ROLES)
def effective_system() -> Response:
    return _effective(None)


@bp.get(effective.TENANT_RULE)
@requires(*effective.ROLES)
def effective_tenant(tenant: str) -> Response:
    return _effective(tenant)


def _check(tenant: str | None, send: bool) -> Response:
    if tenant is not None:
        tenant_scope(tenant)
    result = _services().checks.run(tenant, json_body(optional=True), caller=principal().name, send=send)
    return json_response(result, headers={"Cache-Control": "no-store"})


@bp.post("/v1/smtp/validate")
@requires("admin")
def validate_system() -> Response:
    return _check(None, send=False)


@bp.post("/v1/tenants/<tenant>/smtp/validate")
@requires("admin")
def validate_tenant(tenant: str) -> Response:
    return _check(tenant, send=False)


@bp.post("/v1/smtp/test-connection")
@requires("admin")
def test_system() -> Response:
    return _check(None, send=True)


@bp.post("/v1/tenants/<tenant>/smtp/test-connection")
@requires("admin")
def test_tenant(tenant: str) -> Response:
    return _check(tenant, send=True)


@bp.get("/v1/notification-types")
@requires()
def notification_types() -> Response:
    return json_response({"items": [{"name": name} for name in NOTIFICATION_TYPES]})
