"""What the front writes itself: response heads, and the problems it answers without the application."""

from __future__ import annotations

import email.utils
import json
import time

from service.errors import PROBLEM_TYPE_BASE, RETRY_AFTER_SECONDS

#: Statuses whose responses never carry a body (nor a Content-Length the front would add).
_NO_BODY = frozenset((204, 304))
#: Response headers the front decides itself: the connection's fate and the body's framing.
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding"))


class Clock:
    """The ``Date`` header line, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self.line = ""
        self.tick()

    def tick(self) -> None:
        self.line = f"Date: {email.utils.formatdate(time.time(), usegmt=True)}\r\n"


def head(
    status: str, headers: list[tuple[str, str]], body_length: int, *, close: bool, date: str
) -> tuple[bytes, bool, bool]:
    """The bytes of a response head; whether the connection closes after it, and whether a body may follow.

    The application's own ``Connection: close`` is honoured (``service.body_drain``
    asks for it when a large body was left unread); otherwise the connection is
    kept, and says so.
    """
    code = int(status[:3])
    lines = ["HTTP/1.1 ", status, "\r\n", date]
    has_length = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _HOP_BY_HOP:
            if lowered == "connection" and "close" in value.lower():
                close = True
            continue
        if lowered == "content-length":
            has_length = True
        lines += (name, ": ", value, "\r\n")
    with_body = code >= 200 and code not in _NO_BODY
    if with_body and not has_length:
        lines += ("Content-Length: ", str(body_length), "\r\n")
    lines.append("Connection: close\r\n\r\n" if close else "Connection: keep-alive\r\n\r\n")
    return "".join(lines).encode("latin-1"), close, with_body


def problem(status: int, code: str, title: str, *, close: bool = True) -> bytes:
    """A whole problem+json response, built once at start for each case the front answers itself."""
    body = json.dumps(
        {"type": PROBLEM_TYPE_BASE + code, "title": title, "status": status, "detail": title, "code": code}
    ).encode()
    retry = f"Retry-After: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else ""
    reason = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
              431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n{retry}"
        f"Content-Length: {len(body)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
    ).encode() + body


BAD_REQUEST = problem(400, "bad_request", "The request is not valid HTTP/1.1")
TOO_SLOW = problem(408, "client_too_slow", "The request's headers or body arrived too slowly")
TOO_LARGE = problem(413, "payload_too_large", "Request body too large")
HEADERS_TOO_LARGE = problem(431, "headers_too_large", "The request's headers are too large")
TOO_MANY_CONNECTIONS = problem(503, "too_many_connections", "The instance holds as many connections as it may")
SERVER_BUSY = problem(503, "server_busy", "The instance holds as many request bodies in memory as it may")
#: A request past the time bound: its body was read whole, so the connection stays usable.
REQUEST_TOO_LONG = problem(503, "request_time_exceeded", "The request took longer than allowed", close=False)
