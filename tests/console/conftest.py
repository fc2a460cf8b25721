"""Fixtures for the console tests: one Chromium per session, the app on a free loopback port per test."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from flask import Flask

from tests.conftest import Tokens
from tests.console.harness import Page, ServedApp, browser_available, start_browser, stop_browser


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    # The browser tests exercise the page; the API's database behaviour is covered on both databases elsewhere.
    return f"sqlite:///{tmp_path / 'smtpconf.db'}"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not browser_available():
        pytest.fail("Debian's chromium and chromium-driver are needed: scripts/test installs them as root")
    driver, profile = start_browser()
    yield driver
    stop_browser(driver, profile)


@pytest.fixture
def make_console(
    make_app: Callable[..., Flask], starttls_smtp_server: Any, markup_smtp_server: Any, silent_server: Any, chromium: Any
) -> Iterator[Callable[..., "Console"]]:
    """The console served on a free loopback port, its destination policy open to the test servers (and ``ports``)."""
    served: list[ServedApp] = []

    def make(ports: list[int] = ()) -> Console:
        allowed = [25, 465, 587, 2525, starttls_smtp_server.port, markup_smtp_server.port, silent_server.port, *ports]
        app = make_app(smtp_allowed_ports=",".join(map(str, allowed)), rate_limit_per_minute=1000)
        served.append(ServedApp(app))
        return Console(app, served[-1], Page(chromium, served[-1].url))

    chromium.delete_all_cookies()
    chromium.get_log("browser")  # what earlier tests left
    yield make
    # Failed requests (a 404 the page expects) are logged too; anything else is a script error.
    errors = [e["message"] for e in chromium.get_log("browser") if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    # A fresh origin per test (a new port) starts with empty sessionStorage; leave the page so nothing polls.
    chromium.get("about:blank")
    for server in served:
        server.stop()
    assert not errors, errors


@pytest.fixture
def console(make_console: Callable[..., "Console"]) -> "Console":
    return make_console()


class Console:
    def __init__(self, app: Flask, served: ServedApp, page: Page) -> None:
        self.app = app
        self.url = served.url
        self.page = page
        self.client = app.test_client()
        self.tokens = Tokens(app)

    def token(self, *roles: str) -> str:
        return self.tokens.token(*roles)


#: A server whose every reply carries markup: what it says must reach the page as text.
MARKUP = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="session")
def markup_smtp_server() -> Iterator[Any]:
    from tests.fixtures.smtp_servers import ScriptedServer

    server = ScriptedServer(
        f"220 {MARKUP} ESMTP\r\n".encode(),
        {"EHLO": f"554 5.7.1 {MARKUP} go away\r\n".encode(), "HELO": f"554 5.7.1 {MARKUP} go away\r\n".encode(), "QUIT": b"221 bye\r\n"},
    )
    yield server
    server.close()
