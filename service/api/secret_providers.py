"""Secret-manager connections, installed provider types and the secret cache."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from service.api import json_body, json_response, principal, require_secure_transport, requires
from service.connections import check_name, view
from service.errors import ApiError, ValidationFailed
from service.rotation_events import CONTENT_TYPES, SUBSCRIPTION_VALIDATION, parse

bp = Blueprint("secret_providers", __name__)
MAX_PROVIDER_NAME = 128
MAX_PREFIX = 512


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
    return json_response(current_app.extensions["smtpconf"].health.check_connection(name))


@bp.get("/v1/secret-providers/<name>/secrets")
@requires("security", "admin")
def list_secret_names(name: str) -> Response:
    prefix = request.args.get("prefix", "")
    if len(prefix) > MAX_PREFIX or any(ord(c) < 0x20 or c in "\x7f\ufffd" for c in prefix):
        raise ValidationFailed(errors={"prefix": [f"At most {MAX_PREFIX} printable characters."]})
    return json_response(_secrets().list_names(name, prefix), headers={"Cache-Control": "no-store"})


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


@bp.post("/v1/secret-providers/<name>/event-key")
@requires("security")
def create_event_key(name: str) -> Response:
    require_secure_transport()
    key = current_app.extensions["smtpconf"].events.create_key(check_name(name), actor=principal().name)
    body = {"key": key, "path": f"/v1/secret-providers/{name}/events?key={key}"}
    return json_response(body, headers={"Cache-Control": "no-store"})


@bp.route("/v1/secret-providers/<name>/events", methods=["POST", "OPTIONS"], provide_automatic_options=False)
def receive_events(name: str) -> Response:
    # No bearer token: Event Grid authenticates with the key in the URL it was given.
    events = current_app.extensions["smtpconf"].events
    record = events.authenticate(name, request.args.get("key"))
    if request.method == "OPTIONS":
        origin = request.headers.get("WebHook-Request-Origin", "").strip()
        if not origin:
            raise ValidationFailed(errors={"WebHook-Request-Origin": ["Required for the CloudEvents webhook handshake."]})
        events.handshake(name, origin)
        response = Response(status=200)
        response.headers["WebHook-Allowed-Origin"] = origin
        response.headers["WebHook-Allowed-Rate"] = "*"
        response.headers["Allow"] = "POST, OPTIONS"
        return response
    content_type = request.mimetype or "application/json"
    if content_type not in CONTENT_TYPES:
        raise ApiError(
            f"Events are sent as {', '.join(CONTENT_TYPES)}.", status=415, code="unsupported_media_type", title="Unsupported media type"
        )
    delivered = parse(json_body(), content_type)
    validation = next((event for event in delivered if event.type == SUBSCRIPTION_VALIDATION), None)
    if validation is not None:
        return json_response(events.validated(name, validation))
    return json_response(events.deliver(name, record, delivered))
