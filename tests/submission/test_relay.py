"""Relaying through the sending core: smtplib over STARTTLS and implicit TLS, the rewritten envelope and headers,
the delivery log, and who may send (never an open relay)."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import pytest
import sqlalchemy as sa

from service.db import ApiToken
from service.tokens import hash_token

from tests.fixtures.smtp_servers import PASSWORD, USERNAME
from tests.submission.harness import LOOPBACK, Raw, connect


def starttls_settings(server, ca_pem, **extra):
    return {
        "host": "localhost", "port": server.port, "security": "starttls", "ca_certificate_pem": ca_pem,
        "from_email": "noreply@example.com", "from_name": "Example Alerts",
        "username": USERNAME, "password": {"source": "plaintext", "value": PASSWORD},
        "cc": ["audit@example.com"], "bcc": ["hidden@example.com"],
        "preferred_notifications": ["password_recovery"], "timeout_seconds": 5, **extra,
    }


def legacy_message(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = headers.pop("From", "Printer <printer@legacy.example>")
    message["To"] = headers.pop("To", "ada@example.com")
    message["Subject"] = headers.pop("Subject", "Scan complete")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Your scan is attached.\n.leading dot line\n")
    return message


@pytest.fixture
def tenant(lab, starttls_smtp_server, smtp_ca_pem):
    return lab.tenant(starttls_settings(starttls_smtp_server, smtp_ca_pem))


def send(server, lab, tenant, token, message, recipients, **kwargs):
    client = connect(server, lab.ca, **kwargs)
    try:
        client.login(tenant, token)
        return client.send_message(message, to_addrs=recipients)
    finally:
        client.quit()


def test_a_legacy_program_sends_over_starttls_and_the_mail_server_gets_the_rewritten_message(
    submission, lab, tenant, starttls_smtp_server
):
    token = lab.token("sender", tenants=[tenant])
    message = legacy_message(Bcc="secret-copy@example.com", X_Notification_Type="password_recovery")
    refused = send(submission, lab, tenant, token, message, ["ada@example.com", "secret-copy@example.com"])

    assert refused == {}
    assert len(starttls_smtp_server.messages) == 1
    received = starttls_smtp_server.messages[0]
    assert received.mail_from == "noreply@example.com"
    assert sorted(received.rcpt_tos) == [
        "ada@example.com", "audit@example.com", "hidden@example.com", "secret-copy@example.com",
    ]
    relayed = received.message
    assert relayed["From"] == "Example Alerts <noreply@example.com>"
    assert "printer@legacy.example" in relayed["Reply-To"]
    assert relayed["Cc"] == "audit@example.com"
    assert relayed["Bcc"] is None and relayed["X-Notification-Type"] is None
    assert relayed["Subject"] == "Scan complete"
    assert received.content.endswith(b"\r\n\r\nYour scan is attached.\r\n.leading dot line\r\n")
    assert b"\r\n" in received.content and b"\n" not in received.content.replace(b"\r\n", b"")
    assert starttls_smtp_server.logins == [("PLAIN", USERNAME)] or starttls_smtp_server.logins[-1][1] == USERNAME

    # The server process writes its delivery log in batches, a moment after the reply.
    deadline = time.monotonic() + 10
    while not (entries := lab.services.sending.deliveries.page(tenant=tenant, before=None, limit=10)[0]):
        assert time.monotonic() < deadline, "no delivery log row"
        time.sleep(0.1)
    assert [(e["channel"], e["outcome"]) for e in entries] == [("smtp", "sent")]


def test_the_reply_to_data_is_250_with_the_mail_servers_reply(submission, lab, tenant):
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    try:
        client.login(tenant, token)
        assert client.mail("anyone@legacy.example")[0] == 250
        assert client.rcpt("ada@example.com")[0] == 250
        code, text = client.data(legacy_message().as_string())
    finally:
        client.quit()
    assert code == 250
    assert text.startswith(b"2.0.0 Message accepted (delivery ")


def test_implicit_tls_relays_the_same_way(lab, tenant, starttls_smtp_server):
    server = lab.start(implicit_tls=True)
    token = lab.token("sender", tenants=[tenant])
    send(server, lab, tenant, token, legacy_message(), ["ada@example.com"])
    assert [m.rcpt_tos for m in starttls_smtp_server.messages] == [["ada@example.com"]]


def test_the_system_level_is_named_by_a_star(submission, lab, starttls_smtp_server, smtp_ca_pem):
    lab.client.put("/v1/smtp", json=starttls_settings(starttls_smtp_server, smtp_ca_pem, from_email="system@example.com"),
                   headers=lab.admin)
    token = lab.token("sender")
    send(submission, lab, "*", token, legacy_message(), ["ada@example.com"])
    assert starttls_smtp_server.messages[0].mail_from == "system@example.com"


@pytest.mark.parametrize(
    ("roles", "restricted_to", "expected"),
    [
        (["reader"], None, "5.7.1"),
        (["sender"], ["another-tenant"], "5.7.1"),
        (None, None, "5.7.8"),
    ],
    ids=["reader-token", "sender-for-another-tenant", "unknown-token"],
)
def test_no_open_relay_auth_refused(submission, lab, tenant, starttls_smtp_server, roles, restricted_to, expected):
    token = lab.token(*roles, tenants=restricted_to) if roles else "smtpconf_" + "x" * 43
    source = {"5.7.1": "127.0.0.21", "5.7.8": "127.0.0.22"}[expected] if roles else "127.0.0.23"
    client = connect(submission, lab.ca, source=source)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(tenant, token)
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error.startswith(expected.encode())
        assert client.mail("a@example.com")[0] == 530
    finally:
        client.quit()
    assert starttls_smtp_server.messages == []


def test_five_auth_failures_in_a_minute_close_the_connection_and_keep_the_address_out(submission, lab):
    source = "127.0.0.31"
    raw = Raw(LOOPBACK, submission.port, source=source)
    raw.reply()
    raw.command("EHLO client.example.test")
    for _ in range(4):
        assert raw.command("AUTH PLAIN AHQxAHNtdHBjb25mX3dyb25n").startswith("535 5.7.8")
    assert raw.command("AUTH PLAIN AHQxAHNtdHBjb25mX3dyb25n").startswith("421 4.7.0")
    assert raw.closed()
    again = Raw(LOOPBACK, submission.port, source=source)
    again.reply()
    again.command("EHLO client.example.test")
    assert again.command("AUTH PLAIN AHQxAHNtdHBjb25mX3dyb25n").startswith("421 4.7.0")
    assert again.closed()
    other = connect(submission, lab.ca, source="127.0.0.32")
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            other.login("t1", "smtpconf_wrong")
    finally:
        other.quit()


def test_auth_login_is_accepted_too(submission, lab, tenant, starttls_smtp_server):
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    try:
        client.user, client.password = tenant, token
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
    finally:
        client.quit()
    assert len(starttls_smtp_server.messages) == 1


def test_a_token_removed_after_auth_sends_no_more(submission, lab, tenant, starttls_smtp_server):
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    refused = None
    try:
        client.login(tenant, token)
        with lab.services.db.transaction() as session:
            session.execute(sa.delete(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        # A process trusts a token it found in the database for a few seconds at most.
        deadline = time.monotonic() + 15
        while refused is None and time.monotonic() < deadline:
            client.mail("a@example.com")
            client.rcpt("ada@example.com")
            code, text = client.data(legacy_message().as_string())
            if code != 250:
                refused = (code, text)
            else:
                time.sleep(0.5)
    finally:
        client.quit()
    assert refused is not None and refused[0] == 550 and refused[1].startswith(b"5.7.8")


def test_a_message_with_no_headers_at_all_gets_the_settings_from(submission, lab, tenant, starttls_smtp_server):
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    try:
        client.login(tenant, token)
        client.sendmail("cron@legacy.example", ["ada@example.com"], "\r\njust a body from a cron job\r\n")
    finally:
        client.quit()
    relayed = starttls_smtp_server.messages[0].message
    assert relayed["From"] == "Example Alerts <noreply@example.com>"
    assert relayed["Message-ID"] and relayed["Date"]


def test_a_settings_change_made_elsewhere_applies_from_the_next_message(submission, lab, starttls_smtp_server, smtp_ca_pem):
    settings = starttls_settings(starttls_smtp_server, smtp_ca_pem)
    tenant = lab.tenant(settings)
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    try:
        client.login(tenant, token)
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
        # Another process (here the test's own app) changes the settings: no restart, no cache to wait out.
        changed = lab.client.put(f"/v1/tenants/{tenant}/smtp", json={**settings, "from_email": "alerts@example.com"},
                                 headers=lab.admin)
        assert changed.status_code == 200
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
    finally:
        client.quit()
    assert [m.mail_from for m in starttls_smtp_server.messages] == ["noreply@example.com", "alerts@example.com"]


def test_an_8bit_utf8_message_is_taken_and_relayed(submission, lab, tenant, starttls_smtp_server):
    token = lab.token("sender", tenants=[tenant])
    client = connect(submission, lab.ca)
    try:
        client.login(tenant, token)
        assert "smtputf8" in client.esmtp_features and "8bitmime" in client.esmtp_features
        assert client.mail("drücker@legacy.example", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("ada@example.com")[0] == 250
        content = "Subject: Größenänderung fertig\r\nContent-Type: text/plain; charset=utf-8\r\n" \
                  "Content-Transfer-Encoding: 8bit\r\n\r\nDer Scan ist fertig: Grüße\r\n"
        code, _ = client.data(content.encode("utf-8"))
    finally:
        client.quit()
    assert code == 250
    relayed = starttls_smtp_server.messages[0].message
    assert str(relayed["Subject"]) == "Größenänderung fertig"
    assert "Grüße" in relayed.get_content()
