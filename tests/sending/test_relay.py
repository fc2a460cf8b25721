"""SendingCore.relay: a submitted message rewritten to the settings, as the SMTP submission server hands it over."""

from __future__ import annotations

import pytest

from service.errors import ValidationFailed
from service.sending.errors import TenantNotAllowed
from service.tokens import Principal
from tests.sending.conftest import settings_for

SENDER = Principal("relay-mailer", frozenset({"sender"}))
SUBMITTED = (
    b"From: Legacy App <app@legacy.example>\r\n"
    b"To: ada@example.com\r\n"
    b"Bcc: secret@example.com\r\n"
    b"Subject: Nightly report\r\n"
    b"X-Notification-Type: job_alerts\r\n"
    b"\r\n"
    b"Report body\r\n.leading dot\r\n"
)


def _core(sending, server, **settings):
    app, client, tokens = sending(server)
    document = settings_for(server, cc=["audit@example.com"], bcc=["archive@example.com"],
                            preferred_notifications=["job_alerts"], **settings)
    assert client.put("/v1/smtp", json=document, headers=tokens.headers("admin")).status_code == 200
    return app.extensions["smtpconf"].sending, client, tokens


def test_relay_rewrites_from_keeps_the_original_as_reply_to_and_applies_the_notification(sending, plain_smtp_server):
    core, client, tokens = _core(sending, plain_smtp_server)
    delivery = core.relay(tenant=None, principal=SENDER, recipients=["ada@example.com", "secret@example.com"], content=SUBMITTED)

    received = plain_smtp_server.messages[0]
    assert received.mail_from == "noreply@example.com"
    assert sorted(received.rcpt_tos) == ["ada@example.com", "archive@example.com", "audit@example.com", "secret@example.com"]
    message = received.message
    assert message["From"] == "Example Alerts <noreply@example.com>"
    assert message["Reply-To"] == "app@legacy.example"
    assert message["Cc"] == "audit@example.com"
    assert message["Bcc"] is None and message["X-Notification-Type"] is None
    assert b"secret@example.com" not in received.content and b"archive@example.com" not in received.content
    assert message["Message-ID"] == delivery.message_id and message["Date"]
    assert message.get_content().replace("\r\n", "\n") == "Report body\n.leading dot\n"
    row = client.get(f"/v1/messages/{delivery.id}", headers=tokens.headers("admin")).json
    assert (row["channel"], row["notification"], row["token_name"]) == ("smtp", "job_alerts", "relay-mailer")


def test_relay_keeps_a_from_that_is_already_the_settings_and_an_existing_reply_to(sending, plain_smtp_server):
    core, _client, _tokens = _core(sending, plain_smtp_server)
    raw = b"From: noreply@example.com\r\nReply-To: desk@example.com\r\nTo: ada@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    core.relay(tenant=None, principal=SENDER, recipients=["ada@example.com"], content=raw)
    message = plain_smtp_server.messages[0].message
    assert message["From"] == "noreply@example.com" and message["Reply-To"] == "desk@example.com"
    assert plain_smtp_server.messages[0].rcpt_tos == ["ada@example.com"]


def test_relay_refuses_an_unknown_notification_type_and_a_foreign_tenant(sending, plain_smtp_server):
    core, _client, _tokens = _core(sending, plain_smtp_server)
    with pytest.raises(ValidationFailed):
        core.relay(tenant=None, principal=SENDER, recipients=["ada@example.com"],
                   content=SUBMITTED.replace(b"job_alerts", b"nonsense"))
    restricted = Principal("acme-only", frozenset({"sender"}), tenants=("acme",))
    with pytest.raises(TenantNotAllowed):
        core.relay(tenant="beta", principal=restricted, recipients=["ada@example.com"], content=SUBMITTED)
    assert plain_smtp_server.messages == []
