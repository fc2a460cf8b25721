"""The application factory."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Mapping
from urllib.parse import parse_qsl

import flask
from flask import Flask, Response, g, request
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.utils import cached_property

from providers.registry import ProviderRegistry
from service.api import register_error_handlers
from service.body_drain import DrainUnreadBody
from service.checks import CheckService
from service.config import Config, ConfigError
from service.credentials import CredentialPath
from service.crypto import KeyRing
from service.db import Database
from service.propagation import Board, Propagator, board_path, private_board_path
from service.readiness import HealthBoard, Readiness
from service.observability import (
    HTTP_LATENCY,
    HTTP_REQUESTS,
    accept_request_id,
    configure_logging,
    set_request_id,
)
from service.rotation_events import RotationEvents
from service.oauth import TokenService
from service.token_store import SharedTokens
from service.secrets import SecretsService
from service.settings import SettingsService
from service import smtp_check
from service.sending import DeliveryLog, Pool, SendingCore
from service.smtp_check import DestinationPolicy
from service.tokens import Authenticator
from service.transport import ClientOrigin, parse_networks

MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("smtpconf.http")


class Request(flask.Request):
    """Flask's request, with query strings parsed once per distinct string.

    Senders poll the same URL over and over; parsing its query string
    again each time is a measurable part of the cheapest reads.
    """

    @cached_property
    def args(self) -> ImmutableMultiDict[str, str]:
        return _parse_query(self.query_string)


@functools.lru_cache(maxsize=256)
def _parse_query(raw: bytes) -> ImmutableMultiDict[str, str]:
    # As Werkzeug parses it; immutable, so one result serves every request.
    # A raw byte that is not UTF-8 (a client may send one) becomes U+FFFD, so it
    # fails validation as a bad value instead of failing the request.
    text = raw.decode("utf-8", "replace")
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"))


@dataclasses.dataclass
class Services:
    """What the views use, built once per process."""

    config: Config
    db: Database
    keyring: KeyRing
    registry: ProviderRegistry
    settings: SettingsService
    secrets: SecretsService
    checks: CheckService
    authenticate: Authenticator
    events: RotationEvents
    propagator: Propagator
    credentials: CredentialPath
    health: Readiness
    sending: SendingCore

    def close(self) -> None:
        self.sending.pool.close()
        self.sending.deliveries.close()
        self.secrets.close()
        self.health.board.close()
        self.propagator.close()
        self.db.close()

    def warm(self) -> None:
        """Read what the first requests would otherwise read at once: the settings table, the
        connections and the system password (which loads its manager's client library)."""
        try:
            self.secrets.sync()
            getter = self.credentials.password_getter(self.settings.effective(None))
            if getter is not None:
                getter(False)
        except Exception as exc:  # a cold start is only slower; requests will say what is wrong
            log.info("warm-up incomplete", extra={"error": type(exc).__name__})

    def readiness(self) -> dict[str, Any]:
        """Database and secret managers. With the database down, an instance that
        holds settings in memory still serves senders: ``degraded``, not ``down``."""
        try:
            self.db.ping()
        except Exception as exc:
            log.error("database not reachable", extra={"error": type(exc).__name__})
            serving = self.settings.holds_settings()
            return {"status": "degraded" if serving else "down", "database": "down", "providers": {}}
        database = "ok" if self.db.writable() else "read_only"
        providers = self.health.report()
        degraded = database != "ok" or any(p["status"] != "ok" for p in providers.values())
        return {"status": "degraded" if degraded else "ok", "database": database, "providers": providers}


def build_services(config: Config) -> Services:
    db = Database(config.database_url, timeout=config.database_timeout_seconds)
    keyring = KeyRing.from_config(config)
    registry = ProviderRegistry.from_entry_points()
    path, own_board = board_path(config.generations_file, config.database_url)
    try:
        board = Board(path)
    except OSError as exc:
        # Next to a database file that cannot be used (read-only directory, a bad
        # path): the service still starts, answers 503 for what needs the database
        # and says so in /readyz; other processes on that file are not told of changes.
        log.warning("generation board not usable; using a private one", extra={"error": type(exc).__name__})
        path, own_board = private_board_path(), True
        board = Board(path)
    propagator = Propagator(db, board, poll_interval=config.secret_sync_interval_seconds, own_board=own_board)
    secrets = SecretsService(db, keyring, registry, propagator=propagator)
    settings = SettingsService(
        db, keyring, fips_mode=config.fips_mode, check_reference=secrets.check_reference, sync=secrets.sync
    )
    secrets.on_settings_change(settings.forget)
    try:
        policy = DestinationPolicy.from_strings(config.smtp_allowed_ports, config.smtp_denied_networks)
    except ValueError as exc:
        raise ConfigError(f"SMTPCONF_SMTP_ALLOWED_PORTS / SMTPCONF_SMTP_DENIED_NETWORKS: {exc}") from None
    # Token endpoints are held to the SMTP destination policy's denied networks (any HTTPS port).
    tokens = TokenService(policy, shared=SharedTokens(f"{path}.tokens", keyring))
    credentials = CredentialPath(secrets, keyring, tokens)
    checks = CheckService(
        settings, secrets, credentials, policy, fips_mode=config.fips_mode, rate_limit=config.rate_limit_per_minute
    )
    authenticate = Authenticator(db, outage_grace=config.token_outage_grace_seconds)
    sending = SendingCore(
        settings,
        credentials,
        Pool(policy, smtp_check.default_resolver, fips_mode=config.fips_mode),
        DeliveryLog(db, retention_days=config.delivery_log_days),
    )
    propagator.start()
    db.watch()
    return Services(
        config, db, keyring, registry, settings, secrets, checks, authenticate, RotationEvents(db, secrets), propagator,
        credentials, Readiness(secrets, HealthBoard(f"{path}.health")), sending=sending,
    )


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the service from ``SMTPCONF_*`` variables, then ``overrides`` (tests)."""
    config = Config.load(overrides)
    configure_logging(config.log_level)
    app = Flask(__name__, static_folder=None)
    app.request_class = Request
    app.wsgi_app = ClientOrigin(DrainUnreadBody(app.wsgi_app), parse_networks(config.trusted_proxies))  # type: ignore[method-assign]
    # "//" in a path is part of a name (then refused as one), never a redirect to another resource.
    app.url_map.merge_slashes = False
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, TESTING=config.testing)
    app.extensions["smtpconf"] = build_services(config)
    register_error_handlers(app)
    _register_request_hooks(app)

    from service.api import console, messages, ops, secret_providers, secrets, smtp, tenants

    app.register_blueprint(ops.bp)
    app.register_blueprint(smtp.bp)
    app.register_blueprint(secret_providers.bp)
    app.register_blueprint(secrets.bp)
    app.register_blueprint(tenants.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(console.bp)
    return app


def _register_request_hooks(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = accept_request_id(request.headers.get("X-Request-ID"))
        g.request_id_token = set_request_id(g.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        HTTP_LATENCY.labels(endpoint).observe(elapsed)
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "principal": getattr(g.get("principal"), "name", None),
                "client": request.remote_addr,
            },
        )
        return response

    @app.teardown_request
    def _clear(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            set_request_id(None)
