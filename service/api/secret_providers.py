"""Secret-manager connections, installed provider types and the secret cache."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from service.api import json_body, json_response, principal, requires
from service.connections import view
from service.errors import ValidationFailed

bp = Blueprint("secret_providers", __name__)
MAX_PROVIDER_NAME = 128


def _secrets() -> Any:
    return current_app.extensions["smtpconf"].secrets


@bp.get("/v1/secret-providers")
@requires("security", "admin")
def list_connections() -> Response:
    records = _secrets().connections.all()
    return json_response({"items": [view(record) for record in records.values()]})


@bp.get("/v1/secret-providers/<name>")
@requires("security", "admin")
def get_connection(name: str) -> Response:
    record = _secrets().connections.get(name)
    return json_response(view(record), headers={"ETag": record["etag"]})


@bp.put("/v1/secret-providers/<name>")
@requires("security")
def put_connection(name: str) -> Response:
    record, created = _secrets().connections.put(
        name, json_body(), actor=principal().name, if_match=request.headers.get("If-Match")
    )
    return json_response(view(record), status=201 if created else 200, headers={"ETag": record["etag"]})


@bp.delete("/v1/secret-providers/<name>")
@requires("security")
def delete_connection(name: str) -> Response:
    _secrets().connections.delete(name, actor=principal().name, if_match=request.headers.get("If-Match"))
    return Response(status=204)


@bp.post("/v1/secret-providers/<name>/check")
@requires("security")
def check_connection(name: str) -> Response:
    return json_response(_secrets().check_connection(name))


@bp.get("/v1/secret-provider-types")
@requires()
def provider_types() -> Response:
    return json_response({"items": current_app.extensions["smtpconf"].registry.describe()})


@bp.post("/v1/secret-cache/invalidate")
@requires("security")
def invalidate_cache() -> Response:
    body = json_body(optional=True)
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise ValidationFailed(errors={"_schema": ['The body is {"provider": ..., "secret": ...} or empty.']})
    errors = {k: ["Unknown field."] for k in body if k not in ("provider", "secret")}
    errors.update({k: ["Must be a non-empty string."] for k in ("provider", "secret") if k in body and not (isinstance(body[k], str) and body[k])})
    if "provider" not in errors and len(body.get("provider") or "") > MAX_PROVIDER_NAME:
        errors["provider"] = [f"At most {MAX_PROVIDER_NAME} characters (a connection name)."]
    if errors:
        raise ValidationFailed(errors=errors)
    return json_response(_secrets().invalidate(body.get("provider"), body.get("secret"), actor=principal().name))
