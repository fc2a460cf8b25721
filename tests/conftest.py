"""Shared fixtures: the app on each database, a client, and tokens per role."""

from __future__ import annotations

import base64
import os
from typing import Any, Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.tokens import create_token

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.openbao",
    "tests.fixtures.cyberark_ccp",
    "tests.fixtures.smtp_servers",
    "tests.fixtures.oauth_servers",
]

MASTER_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Each API test runs on the embedded default and on PostgreSQL (a database of its own, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'smtpconf.db'}"
        return
    databases = request.getfixturevalue("postgres")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'smtpconf.db'}"


@pytest.fixture
def app_config(database_url: str) -> dict[str, Any]:
    return {"database_url": database_url, "master_key": MASTER_KEY, "testing": True}


@pytest.fixture
def make_app(app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """Build an app (several may share one database, like instances behind a balancer)."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app({**app_config, **overrides})
        app.extensions["smtpconf"].db.upgrade()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["smtpconf"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Tokens:
    """Bearer headers for each role, created on first use."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._tokens: dict[str, str] = {}

    def token(self, *roles: str) -> str:
        key = ",".join(sorted(roles))
        if key not in self._tokens:
            self._tokens[key] = create_token(self.app.extensions["smtpconf"].db, f"test-{key}", list(roles))
        return self._tokens[key]

    def headers(self, *roles: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles)}", **extra}


@pytest.fixture
def tokens(app: Flask) -> Tokens:
    return Tokens(app)


@pytest.fixture
def as_admin(tokens: Tokens) -> dict[str, str]:
    return tokens.headers("admin")


SYSTEM_SETTINGS: dict[str, Any] = {
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "from_email": "noreply@example.com",
    "from_name": "Example Alerts",
    "username": "mailer@example.com",
    "password": {"source": "plaintext", "value": "initial-password"},
    "cc": ["audit@example.com"],
    "preferred_notifications": ["password_recovery", "license_status"],
    "timeout_seconds": 10,
}


@pytest.fixture
def system_settings() -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in SYSTEM_SETTINGS.items()}


def pytest_report_header(config: pytest.Config) -> str:
    return f"postgres: {os.environ.get('SMTPCONF_TEST_POSTGRES_URL') or 'throwaway cluster if binaries exist'}"
