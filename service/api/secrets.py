"""The internal secret store: names and metadata out, values only in."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from service.api import json_body, json_response, principal, requires

bp = Blueprint("secrets", __name__)


def _secrets() -> Any:
    return current_app.extensions["smtpconf"].secrets


@bp.get("/v1/secrets")
@requires("security")
def list_secrets() -> Response:
    return json_response({"items": _secrets().store.list()})


@bp.get("/v1/secrets/<path:name>")
@requires("security")
def get_secret(name: str) -> Response:
    return json_response(_secrets().store.get(name))


@bp.put("/v1/secrets/<path:name>")
@requires("security")
def put_secret(name: str) -> Response:
    meta, created = _secrets().store.put(name, json_body(), actor=principal().name)
    return json_response(meta, status=201 if created else 200)


@bp.delete("/v1/secrets/<path:name>")
@requires("security")
def delete_secret(name: str) -> Response:
    _secrets().store.delete(name, actor=principal().name)
    return Response(status=204)
