"""Request ids, JSON logs and Prometheus metrics (correct under several gunicorn workers)."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

HTTP_REQUESTS = Counter(
    "smtpconf_http_requests_total", "HTTP requests served", ["method", "endpoint", "status"]
)
HTTP_LATENCY = Histogram(
    "smtpconf_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SECRET_FETCHES = Counter(
    "smtpconf_secret_fetches_total", "Reads from secret managers", ["source", "outcome"]
)
SMTP_CHECKS = Counter("smtpconf_smtp_checks_total", "SMTP validations and test mails", ["kind", "outcome"])
MESSAGES = Counter(
    "smtpconf_messages_total",
    "Messages sent through the service (channel: http or smtp; outcome: sent, rejected, unavailable, "
    "credential_unavailable, failed)",
    ["channel", "outcome"],
)
TOKEN_REQUESTS = Counter(
    "smtpconf_oauth_token_requests_total",
    "OAuth2 token requests to token endpoints (outcome: ok, the endpoint's error code, or failed)",
    ["flow", "outcome"],
)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token:
    return _request_id.set(value)


def accept_request_id(header: str | None) -> str:
    """Honour a caller's ``X-Request-ID`` when it is sane; otherwise make one."""
    if header and _REQUEST_ID_OK.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self.RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the service's own loggers."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("smtpconf", "service", "providers"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = True


def metrics_payload() -> tuple[bytes, str]:
    """The exposition text: every worker's samples when several gunicorn workers run."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
