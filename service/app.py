"""The application factory."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import flask
from flask import Flask
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.routing import Rule
from werkzeug.utils import cached_property

from providers.registry import ProviderRegistry
from service.api import parse_query, register_error_handlers
from service.api.effective import EffectiveReads
from service.body_drain import DrainUnreadBody
from service.checks import CheckService
from service.config import Config, ConfigError
from service.credentials import CredentialPath
from service.crypto import KeyRing
from service.db import Database
from service.board import Board, board_path, private_board_path
from service.propagation import Propagator
from service.readiness import HealthBoard, Readiness
from service.observability import ENDPOINT_KEY, Observed, configure_logging
from service.rotation_events import RotationEvents
from service.oauth import TokenService
from service.token_store import SharedTokens
from service.secrets import SecretsService
from service.settings import SettingsService
from service.settings_writes import SettingsWriter
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
        return parse_query(self.query_string)

    @property
    def url_rule(self) -> Rule | None:
        return self.__dict__.get("url_rule")

    @url_rule.setter
    def url_rule(self, rule: Rule | None) -> None:
        # Flask sets the matched rule here: the request log (``Observed``) names it as the endpoint.
        self.__dict__["url_rule"] = rule
        if rule is not None:
            self.environ[ENDPOINT_KEY] = rule.rule


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
    settings_writer: SettingsWriter
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
    settings = SettingsService(db, propagator)
    writer = SettingsWriter(db, keyring, fips_mode=config.fips_mode, check_reference=secrets.check_reference)
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
        credentials, Readiness(secrets, HealthBoard(f"{path}.health")), writer, sending=sending,
    )


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the service from ``SMTPCONF_*`` variables, then ``overrides`` (tests)."""
    config = Config.load(overrides)
    configure_logging(config.log_level)
    app = Flask(__name__, static_folder=None)
    app.request_class = Request
    # "//" in a path is part of a name (then refused as one), never a redirect to another resource.
    app.url_map.merge_slashes = False
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, TESTING=config.testing)
    services = app.extensions["smtpconf"] = build_services(config)
    app.wsgi_app = ClientOrigin(  # type: ignore[method-assign]
        Observed(DrainUnreadBody(EffectiveReads(app.wsgi_app, services))), parse_networks(config.trusted_proxies)
    )
    register_error_handlers(app)

    from service.api import console, messages, ops, secret_providers, secrets, smtp, tenants

    app.register_blueprint(ops.bp)
    app.register_blueprint(smtp.bp)
    app.register_blueprint(secret_providers.bp)
    app.register_blueprint(secrets.bp)
    app.register_blueprint(tenants.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(console.bp)
    return app
