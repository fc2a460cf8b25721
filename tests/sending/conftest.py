"""What the sending tests share: an app whose destination policy admits the loopback servers, and servers that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import Tokens
from tests.fixtures.smtp_servers import PASSWORD, USERNAME, RecordingHandler, SmtpServer, start_smtp_server

MESSAGE = {"to": ["ada@example.com"], "subject": "Reset your password", "text": "Follow the link."}


def settings_for(server: SmtpServer | Any, ca_pem: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Settings for a loopback server: STARTTLS with the test CA when ``ca_pem`` is given, else plaintext."""
    settings: dict[str, Any] = {
        "host": "localhost" if ca_pem else "127.0.0.1", "port": server.port,
        "security": "starttls" if ca_pem else "none", "from_email": "noreply@example.com",
        "from_name": "Example Alerts", "timeout_seconds": 5,
    }
    if ca_pem:
        settings.update(ca_certificate_pem=ca_pem, username=USERNAME, password={"source": "plaintext", "value": PASSWORD})
    settings.update(overrides)
    return settings


@pytest.fixture
def sending(make_app: Callable[..., Any]) -> Callable[..., tuple[Any, Any, Tokens]]:
    """An app admitting the given servers' ports: (app, client, tokens)."""

    def make(*servers: Any, **overrides: Any) -> tuple[Any, Any, Tokens]:
        ports = ",".join(str(port) for port in [25, 587, *(s.port for s in servers)])
        app = make_app(smtp_allowed_ports=ports, **overrides)
        return app, app.test_client(), Tokens(app)

    return make


class StallingHandler(RecordingHandler):
    """Takes the envelope and the data, then never gives the final reply (until released at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.release.clear()
        try:
            await asyncio.wait_for(self.release.wait(), timeout=30)
        except asyncio.TimeoutError:
            pass
        return "250 2.0.0 Too late"


class ClosingHandler(RecordingHandler):
    """Answers DATA's end with 421, as a server shutting down in the middle of a transaction does."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "421 4.3.2 Service shutting down, closing transmission channel"


class TemporaryRecipientHandler(RecordingHandler):
    """Answers every recipient with 450 (mailbox busy): nothing can be sent now."""

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        return "450 4.2.1 Mailbox busy, try again later"


@pytest.fixture(scope="session")
def stalling_smtp_server(smtp_server_pool: Any) -> Iterator[SmtpServer]:
    server = smtp_server_pool.add(start_smtp_server(StallingHandler()))
    yield server
    server.controller.loop.call_soon_threadsafe(server.handler.release.set)


@pytest.fixture(scope="session")
def closing_smtp_server(smtp_server_pool: Any) -> SmtpServer:
    return smtp_server_pool.add(start_smtp_server(ClosingHandler()))


@pytest.fixture(scope="session")
def busy_smtp_server(smtp_server_pool: Any) -> SmtpServer:
    return smtp_server_pool.add(start_smtp_server(TemporaryRecipientHandler()))


class SlowHandler(RecordingHandler):
    """Takes half a second to accept each message, so that concurrent requests overlap."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.5)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="session")
def slow_smtp_server(smtp_server_pool: Any) -> SmtpServer:
    return smtp_server_pool.add(start_smtp_server(SlowHandler()))
