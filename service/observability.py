"""Request ids, JSON logs and Prometheus metrics (correct under several gunicorn workers)."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Iterable

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


#: Where the routing and the authentication leave, in the WSGI environ, what the request log names.
ENDPOINT_KEY = "smtpconf.endpoint"
PRINCIPAL_KEY = "smtpconf.principal"
log = logging.getLogger("smtpconf.http")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token:
    return _request_id.set(value)


def accept_request_id(header: str | None) -> str:
    """Honour a caller's ``X-Request-ID`` when it is sane; otherwise make one (128 random bits in hex)."""
    if header and _REQUEST_ID_OK.match(header):
        return header
    return os.urandom(16).hex()  # as unique as a uuid4, for a fifth of its cost


#: The request log line's own fields, in the order the line shows them.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "principal", "client")


def _request_record(fields: dict[str, Any]) -> logging.LogRecord:
    """The request log line's record, made without the caller lookup and checks of ``Logger.info``.

    Its fixed attributes come from one record made the ordinary way; the time,
    thread and process are its own. ``_fields`` names its own fields for
    ``JsonFormatter``.
    """
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(_REQUEST_TEMPLATE)
    created = time.time()
    attributes["created"] = created
    attributes["msecs"] = int((created - int(created)) * 1000) + 0.0
    attributes["relativeCreated"] = (created - _LOGGING_STARTED) * 1000
    attributes["thread"] = threading.get_ident()
    attributes["threadName"] = threading.current_thread().name
    attributes["process"] = os.getpid()
    attributes.update(fields)
    return record


class Observed:
    """WSGI middleware: the request id, the request's metrics and its log line.

    Outside Flask's request context on purpose: everything it needs is in the
    environ and the status line, which costs a fraction of Flask's hooks on the
    cheapest reads.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._latencies: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = accept_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = _request_id.set(request_id)
        statuses: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
            statuses.append(status)
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            self._record(environ, statuses[-1][:3] if statuses else "500", time.perf_counter() - started)
            _request_id.reset(token)

    def _record(self, environ: dict[str, Any], status: str, elapsed: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        endpoint = environ.get(ENDPOINT_KEY, "unmatched")
        key = (method, endpoint, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = HTTP_REQUESTS.labels(method, endpoint, status)
        counter.inc()
        latency = self._latencies.get(endpoint)
        if latency is None:
            latency = self._latencies[endpoint] = HTTP_LATENCY.labels(endpoint)
        latency.observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.handle(_request_record({
                "method": method, "path": environ.get("PATH_INFO", ""), "status": int(status),
                "duration_ms": round(elapsed * 1000, 2), "principal": environ.get(PRINCIPAL_KEY),
                "client": environ.get("REMOTE_ADDR"),
            }))


_LOGGING_STARTED: float = logging._startTime  # type: ignore[attr-defined]
_REQUEST_LINE = Observed._record.__code__.co_firstlineno
_REQUEST_TEMPLATE = {
    **vars(log.makeRecord(log.name, logging.INFO, __file__, _REQUEST_LINE, "request", None, None)),
    "funcName": "_record",
    "_fields": REQUEST_FIELDS,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    #: One encoder for every line (``json.dumps`` with ``default`` builds a new one per call).
    ENCODER = json.JSONEncoder(default=str)
    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # the date part changes once a second, not once a line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        attributes = vars(record)
        own = attributes.get("_fields")
        if own is not None:  # a record that names its own fields (the request log line's)
            for key in own:
                entry[key] = attributes[key]
        else:
            reserved = self.RESERVED
            for key, value in attributes.items():
                if key not in reserved and not key.startswith("_"):
                    entry[key] = value
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return self.ENCODER.encode(entry)


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
