"""Operations endpoints: liveness, readiness, metrics, the API description, the audit trail."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app

from service import audit
from service.api import int_query, json_response, principal, requires
from service.errors import ValidationFailed

bp = Blueprint("ops", __name__)
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    services = current_app.extensions["smtpconf"]
    report = services.readiness()
    return json_response(report, status=200 if report["status"] != "down" else 503)


@bp.get("/metrics")
def metrics() -> Response:
    from service.observability import metrics_payload

    payload, content_type = metrics_payload()
    return Response(payload, mimetype=content_type.split(";")[0], content_type=content_type)


@bp.get("/openapi.yaml")
def openapi() -> Response:
    return Response(OPENAPI_PATH.read_bytes(), mimetype="application/yaml")


@bp.get("/v1/whoami")
@requires()
def whoami() -> Response:
    caller = principal()
    tenants = None if caller.tenants is None else list(caller.tenants)
    return json_response({"name": caller.name, "roles": sorted(caller.roles), "tenants": tenants})


@bp.get("/v1/audit")
@requires("admin", "security")
def audit_trail() -> Response:
    errors: dict[str, list[str]] = {}
    limit = int_query("limit", 50, 1, 500, errors)
    before = int_query("before", None, 1, 2**62, errors)
    if errors:
        raise ValidationFailed(errors=errors)
    with current_app.extensions["smtpconf"].db.read() as session:
        items, next_cursor = audit.page(session, limit=limit, before_id=before)
    return json_response({"items": items, "next_before": next_cursor})
