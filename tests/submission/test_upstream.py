"""What the mail server answers, as the submission client hears it: 5xx as 550/554, and a 4xx, a hung server
or a credential that cannot be had as 451, so the client's retry delivers the message exactly once."""

from __future__ import annotations

import smtplib
import time
from typing import Any, Iterator

import pytest

from tests.fixtures.smtp_servers import REFUSED_RECIPIENT, USERNAME, RecordingHandler, start_smtp_server
from tests.submission.harness import connect
from tests.submission.test_relay import legacy_message


class FlakyHandler(RecordingHandler):
    """Answers the next ``failures`` DATA (or MAIL) commands with a temporary refusal, then accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = {"DATA": 0, "MAIL": 0}

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.failures["MAIL"]:
            self.failures["MAIL"] -= 1
            return "421 4.3.2 System shutting down, try again"
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.failures["DATA"]:
            self.failures["DATA"] -= 1
            return "451 4.3.0 Temporary local problem, try again"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="module")
def flaky_server(smtp_server_pool) -> Any:
    return smtp_server_pool.add(start_smtp_server(FlakyHandler()))


@pytest.fixture(scope="module")
def smtp_upstreams(flaky_server, recipient_refusing_smtp_server, data_refusing_smtp_server, _silent_listener,
                   starttls_smtp_server) -> list[Any]:
    return [flaky_server, recipient_refusing_smtp_server, data_refusing_smtp_server, _silent_listener, starttls_smtp_server]


def plain_settings(server: Any, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "security": "none", "from_email": "noreply@example.com",
            "timeout_seconds": 2, **extra}


@pytest.fixture
def sending(lab, submission) -> Iterator[Any]:
    """``sending(server)``: an authenticated smtplib client for a new tenant whose settings name ``server``."""
    clients = []

    def open_for(server: Any, **extra: Any) -> smtplib.SMTP:
        tenant = lab.tenant(plain_settings(server, **extra))
        client = connect(submission, lab.ca)
        client.login(tenant, lab.token("sender", tenants=[tenant]))
        clients.append(client)
        return client

    yield open_for
    for client in clients:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def attempt(client: smtplib.SMTP, recipients: list[str]) -> tuple[int, bytes]:
    assert client.mail("printer@legacy.example")[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250
    return client.data(legacy_message().as_string())


def test_a_recipient_the_mail_server_refuses_gets_550_with_its_enhanced_code(sending, recipient_refusing_smtp_server):
    code, text = attempt(sending(recipient_refusing_smtp_server), [REFUSED_RECIPIENT])
    assert (code, text[:5]) == (550, b"5.1.1")
    assert recipient_refusing_smtp_server.messages == []


def test_a_message_the_mail_server_refuses_gets_554_with_its_enhanced_code(sending, data_refusing_smtp_server):
    code, text = attempt(sending(data_refusing_smtp_server), ["ada@example.com"])
    assert (code, text[:5]) == (554, b"5.6.0")
    assert b"content filter" in text


@pytest.mark.parametrize("stage", ["MAIL", "DATA"])
def test_a_4xx_is_451_and_the_clients_retry_arrives_exactly_once(sending, flaky_server, stage):
    flaky_server.handler.failures[stage] = 1
    client = sending(flaky_server)
    code, text = attempt(client, ["ada@example.com"])
    assert code == 451 and text[:2] == b"4."
    assert flaky_server.messages == []
    assert client.rset()[0] == 250
    assert attempt(client, ["ada@example.com"])[0] == 250
    assert len(flaky_server.messages) == 1


def test_a_hung_mail_server_is_451_4_4_x_within_its_timeout(sending, _silent_listener):
    client = sending(_silent_listener)
    started = time.monotonic()
    code, text = attempt(client, ["ada@example.com"])
    assert code == 451 and text[:4] == b"4.4."
    assert time.monotonic() - started < 25


def test_a_credential_that_cannot_be_had_is_451_4_7_0(sending, flaky_server):
    client = sending(flaky_server, username="mailer", password={"source": "internal", "secret": "smtp/never-stored"})
    code, text = attempt(client, ["ada@example.com"])
    assert (code, text[:5]) == (451, b"4.7.0")
    assert flaky_server.messages == []


def test_a_credential_the_mail_server_refuses_is_451_so_the_message_waits_for_a_fix(
    sending, starttls_smtp_server, smtp_ca_pem
):
    client = sending(
        starttls_smtp_server, host="localhost", security="starttls", ca_certificate_pem=smtp_ca_pem,
        username=USERNAME, password={"source": "plaintext", "value": "not-the-password"},
    )
    code, text = attempt(client, ["ada@example.com"])
    assert (code, text[:5]) == (451, b"4.7.0")
    assert b"not-the-password" not in text
    assert starttls_smtp_server.messages == []
