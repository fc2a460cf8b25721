"""The tenants that have an override, for clients and the console to page through."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from service.api import int_query, json_response, requires
from service.errors import ValidationFailed
from service.settings_model import TENANT_ID

bp = Blueprint("tenants", __name__)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@bp.get("/v1/tenants")
@requires("admin", "reader")
def list_tenants() -> Response:
    errors: dict[str, list[str]] = {}
    limit = int_query("limit", DEFAULT_LIMIT, 1, MAX_LIMIT, errors)
    after = request.args.get("after")
    if after is not None and not TENANT_ID.match(after):
        errors["after"] = ["Must be a tenant id: letters, digits, '.', '_' and '-' (the previous page's next_after)."]
    if errors:
        raise ValidationFailed(errors=errors)
    items, next_after = current_app.extensions["smtpconf"].settings.tenants(after=after, limit=limit)
    return json_response({"tenants": items, "next_after": next_after})
