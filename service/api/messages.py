"""Sending mail through the service, and the delivery log."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, request

from service.api import int_query, json_body, json_response, principal, require_tenant, requires
from service.errors import NotFound, ValidationFailed
from service.settings import TENANT_ID, tenant_scope

bp = Blueprint("messages", __name__)
_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
MAX_ID = 2**62


def _services() -> Any:
    return current_app.extensions["smtpconf"]


def _send(tenant: str | None) -> Response:
    services = _services()
    if tenant is not None:
        tenant_scope(tenant)
    # The one family of routes whose bodies carry attachments; every other route keeps 64 KiB.
    request.max_content_length = services.config.message_max_bytes
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(errors={"Idempotency-Key": ["At most 255 printable ASCII characters."]})
    delivery = services.sending.send(json_body(), tenant=tenant, principal=principal(), idempotency_key=key)
    return json_response(delivery.answer(), headers={"Cache-Control": "no-store"})


@bp.post("/v1/messages")
@requires("sender")
def send_system() -> Response:
    return _send(None)


@bp.post("/v1/tenants/<tenant>/messages")
@requires("sender")
def send_tenant(tenant: str) -> Response:
    return _send(tenant)


@bp.get("/v1/messages")
@requires("admin", "security", checks_tenant=True)
def delivery_log() -> Response:
    errors: dict[str, list[str]] = {}
    limit = int_query("limit", 50, 1, 500, errors)
    before = int_query("before", None, 1, MAX_ID, errors)
    tenant = request.args.get("tenant")
    if tenant is not None and not TENANT_ID.match(tenant):
        errors["tenant"] = ["Must be a tenant id: letters, digits, '.', '_' and '-'."]
    if errors:
        raise ValidationFailed(errors=errors)
    caller = principal()
    if caller.tenants is not None:
        # A restricted token reads its own tenants' messages only, one tenant at a time.
        require_tenant(caller, tenant)
    items, next_before = _services().sending.deliveries.page(tenant=tenant, before=before, limit=limit)
    return json_response({"items": items, "next_before": next_before})


@bp.get("/v1/messages/<int:id>")
@requires("admin", "security", checks_tenant=True)
def delivery(id: int) -> Response:  # noqa: A002 -- the path parameter is called id
    found = _services().sending.deliveries.get(id) if id <= MAX_ID else None
    if found is None:
        raise NotFound("No such message in the delivery log.")
    require_tenant(principal(), found["tenant"])
    return json_response(found)
