"""The web console: static files from the package, served with a strict Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory

bp = Blueprint("console", __name__)
STATIC = Path(__file__).resolve().parent.parent / "console" / "static"
#: Only the service's own files: no inline script or style, no other origin, never framed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
MIME_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # Revalidated on each load, so an upgrade never leaves a page on old modules.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def root() -> Response:
    return _harden(redirect("/console/", code=302))


@bp.get("/console/")
def index() -> Response:
    return console_file("index.html")


@bp.get("/console/<path:filename>")
def console_file(filename: str) -> Response:
    # send_from_directory refuses paths that leave STATIC (404, as for a missing file).
    response = send_from_directory(STATIC, filename, mimetype=MIME_TYPES.get(Path(filename).suffix))
    return _harden(response)
