"""POST /v1/messages against real loopback mail servers: the message, the envelope, the answers and the delivery log."""

from __future__ import annotations

import base64
import os

from tests.fixtures.smtp_servers import REFUSED_RECIPIENT, USERNAME
from tests.sending.conftest import MESSAGE, settings_for

TENANT_SETTINGS = {"reply_to": "help@example.com", "cc": ["audit@example.com"], "bcc": ["hidden@example.com"],
                   "preferred_notifications": ["password_recovery"]}


def _configure(client, tokens, settings, tenant=None):
    path = "/v1/smtp" if tenant is None else f"/v1/tenants/{tenant}/smtp"
    response = client.put(path, json=settings, headers=tokens.headers("admin"))
    assert response.status_code == 200, response.json


def _log(client, tokens, row_id):
    return client.get(f"/v1/messages/{row_id}", headers=tokens.headers("admin")).json


def test_a_message_with_a_preferred_notification_reaches_the_server_as_the_contract_builds_it(
    sending, starttls_smtp_server, smtp_ca_pem
):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem, envelope_from="bounces@example.com", **TENANT_SETTINGS))
    payload = {**MESSAGE, "cc": ["bob@example.com"], "bcc": ["eve@example.com"], "notification": "password_recovery",
               "headers": {"X-Campaign": "q4"}}
    response = client.post("/v1/messages", json=payload, headers=tokens.headers("sender"))

    assert response.status_code == 200, response.json
    body = response.json
    assert body["smtp"] == {"code": 250, "message": "2.0.0 Message accepted"}
    received = starttls_smtp_server.messages[0]
    assert received.mail_from == "bounces@example.com"
    assert sorted(received.rcpt_tos) == sorted(
        ["ada@example.com", "bob@example.com", "eve@example.com", "audit@example.com", "hidden@example.com"]
    )
    assert sorted(body["accepted"]) == sorted(received.rcpt_tos)
    message = received.message
    assert message["From"] == "Example Alerts <noreply@example.com>"
    assert message["Reply-To"] == "help@example.com"
    assert message["To"] == "ada@example.com"
    assert message["Cc"] == "bob@example.com, audit@example.com"
    assert message["Bcc"] is None
    assert b"eve@example.com" not in received.content and b"hidden@example.com" not in received.content
    assert message["Message-ID"] == body["message_id"] and body["message_id"].endswith("@example.com>")
    assert message["Date"] and message["X-Campaign"] == "q4"
    assert message.get_content().strip() == "Follow the link."
    assert starttls_smtp_server.commands[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]

    row = _log(client, tokens, body["id"])
    assert row["outcome"] == "sent" and row["channel"] == "http" and row["tenant"] is None
    assert row["token_name"] == "test-sender" and row["recipient_count"] == 5
    assert row["recipient_domains"] == ["example.com"] and row["notification"] == "password_recovery"
    assert row["smtp"]["code"] == 250 and row["message_id"] == body["message_id"]


def test_without_a_preferred_notification_no_copies_are_added(sending, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem, **TENANT_SETTINGS))
    for notification in (None, "job_alerts"):
        starttls_smtp_server.handler.clear()
        payload = {**MESSAGE, "notification": notification, "reply_to": "me@example.com"}
        assert client.post("/v1/messages", json=payload, headers=tokens.headers("sender")).status_code == 200
        received = starttls_smtp_server.messages[0]
        assert received.rcpt_tos == ["ada@example.com"]
        assert received.message["Cc"] is None
        assert received.message["Reply-To"] == "me@example.com"
        assert received.mail_from == "noreply@example.com"


def test_attachments_and_both_bodies_arrive_intact(sending, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    binary = os.urandom(300_000) + b"\r\n.\r\n" + b"\n.\n" + bytes(range(256))
    text = "line one\r\n.\r\nafter a lone dot\n.leading dot\nÜnïcödé"
    payload = {
        **MESSAGE, "text": text, "html": "<p>Hello <b>there</b></p>",
        "attachments": [
            {"filename": "invoice.pdf", "content_type": "application/pdf", "content_base64": base64.b64encode(binary).decode()},
            {"filename": "notes.txt", "content_type": "text/plain", "content_base64": base64.b64encode(b"plain\n.\n").decode()},
        ],
    }
    response = client.post("/v1/messages", json=payload, headers=tokens.headers("sender"))
    assert response.status_code == 200, response.json

    message = starttls_smtp_server.messages[0].message
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(preferencelist=("plain",))
    assert body.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n") + "\n"
    assert "<b>there</b>" in message.get_body(preferencelist=("html",)).get_content()
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert attachments["invoice.pdf"].get_content_type() == "application/pdf"
    assert attachments["invoice.pdf"].get_payload(decode=True) == binary
    assert attachments["notes.txt"].get_payload(decode=True) == b"plain\n.\n"


def test_a_body_larger_than_64_kib_is_taken_on_the_message_routes_only(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server, message_max_bytes=512 * 1024)
    _configure(client, tokens, settings_for(plain_smtp_server))
    big = {**MESSAGE, "attachments": [{"filename": "a.bin", "content_base64": base64.b64encode(os.urandom(200_000)).decode()}]}
    assert client.post("/v1/messages", json=big, headers=tokens.headers("sender")).status_code == 200
    too_big = {**MESSAGE, "attachments": [{"filename": "a.bin", "content_base64": "A" * 600_000}]}
    response = client.post("/v1/messages", json=too_big, headers=tokens.headers("sender"))
    assert response.status_code == 413 and response.json["code"] == "payload_too_large"
    assert str(512 * 1024) in response.json["detail"]
    padded = {**settings_for(plain_smtp_server), "from_name": "x" * 100, "padding": "y" * 70_000}
    assert client.put("/v1/smtp", json=padded, headers=tokens.headers("admin")).status_code == 413
    assert len(plain_smtp_server.messages) == 1


def test_bad_messages_get_stable_codes_and_per_field_errors(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server)
    _configure(client, tokens, settings_for(plain_smtp_server))
    cases = [
        ({"subject": "x", "text": "y"}, "validation_failed", "to"),
        ({"to": ["ada@example.com"], "subject": "x"}, "validation_failed", "text"),
        ({**MESSAGE, "to": ["not an address"]}, "validation_failed", "to"),
        ({**MESSAGE, "to": ["ada@example.com\r\nBcc: x@example.com"]}, "validation_failed", "to"),
        ({**MESSAGE, "subject": "a\r\nBcc: x@example.com"}, "validation_failed", "subject"),
        ({**MESSAGE, "notification": "no_such_type"}, "validation_failed", "notification"),
        ({**MESSAGE, "headers": {"From": "boss@example.com"}}, "header_not_allowed", "headers"),
        ({**MESSAGE, "headers": {"content-type": "text/html"}}, "header_not_allowed", "headers"),
        ({**MESSAGE, "headers": {"X-Ok": "a\nb"}}, "validation_failed", "headers"),
        ({**MESSAGE, "headers": {"Bad Name": "x"}}, "validation_failed", "headers"),
        ({**MESSAGE, "attachments": [{"filename": "a", "content_base64": "not base64!"}]}, "validation_failed", "attachments"),
        ({**MESSAGE, "unknown": 1}, "validation_failed", "unknown"),
    ]
    for payload, code, field in cases:
        response = client.post("/v1/messages", json=payload, headers=tokens.headers("sender"))
        assert response.status_code == 422, (payload, response.status_code, response.json)
        assert response.content_type == "application/problem+json"
        assert response.json["code"] == code and field in response.json["errors"], (payload, response.json)
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender", **{"Idempotency-Key": "é" * 3}))
    assert response.status_code == 422 and "Idempotency-Key" in response.json["errors"]
    assert client.post("/v1/messages", data="{", headers=tokens.headers("sender")).json["code"] == "invalid_json"
    assert plain_smtp_server.messages == []


def test_one_refused_recipient_is_reported_and_the_others_get_the_message(sending, recipient_refusing_smtp_server):
    app, client, tokens = sending(recipient_refusing_smtp_server)
    _configure(client, tokens, settings_for(recipient_refusing_smtp_server))
    payload = {**MESSAGE, "to": ["ada@example.com", REFUSED_RECIPIENT]}
    response = client.post("/v1/messages", json=payload, headers=tokens.headers("sender"))

    assert response.status_code == 200, response.json
    assert response.json["accepted"] == ["ada@example.com"]
    assert response.json["rejected"] == {REFUSED_RECIPIENT: {"code": 550, "message": "5.1.1 Mailbox unavailable"}}
    assert recipient_refusing_smtp_server.messages[0].rcpt_tos == ["ada@example.com"]
    row = _log(client, tokens, response.json["id"])
    assert (row["outcome"], row["accepted_count"], row["rejected_count"]) == ("sent", 1, 1)


def test_a_550_for_the_only_recipient_is_502_upstream_rejected(sending, recipient_refusing_smtp_server):
    app, client, tokens = sending(recipient_refusing_smtp_server)
    _configure(client, tokens, settings_for(recipient_refusing_smtp_server))
    response = client.post("/v1/messages", json={**MESSAGE, "to": [REFUSED_RECIPIENT]}, headers=tokens.headers("sender"))

    assert response.status_code == 502
    problem = response.json
    assert problem["code"] == "upstream_rejected"
    assert (problem["smtp_code"], problem["smtp_enhanced_code"]) == (550, "5.1.1")
    assert problem["smtp_message"] == "5.1.1 Mailbox unavailable"
    assert problem["rejected"] == {REFUSED_RECIPIENT: {"code": 550, "message": "5.1.1 Mailbox unavailable"}}
    assert recipient_refusing_smtp_server.messages == []
    # The session survives a refusal: the next message goes over it after RSET.
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert recipient_refusing_smtp_server.commands.count("EHLO") == 1 and "RSET" in recipient_refusing_smtp_server.commands
    rows = client.get("/v1/messages", headers=tokens.headers("security")).json["items"]
    assert [(r["outcome"], r["error_code"], r["smtp"]["code"]) for r in rows] == [
        ("sent", None, 250), ("rejected", "upstream_rejected", 550),
    ]


def test_a_message_refused_after_data_is_502(sending, data_refusing_smtp_server):
    app, client, tokens = sending(data_refusing_smtp_server)
    _configure(client, tokens, settings_for(data_refusing_smtp_server))
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))
    assert response.status_code == 502
    assert (response.json["smtp_code"], response.json["smtp_enhanced_code"]) == (554, "5.6.0")
    assert _log(client, tokens, 1)["outcome"] == "rejected"


def test_a_421_in_the_middle_of_the_transaction_is_503_and_the_next_message_reconnects(sending, closing_smtp_server):
    app, client, tokens = sending(closing_smtp_server)
    _configure(client, tokens, settings_for(closing_smtp_server))
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))

    assert response.status_code == 503
    assert response.json["code"] == "upstream_unavailable" and response.json["reason"] == "temporary"
    assert response.json["smtp_code"] == 421 and response.headers["Retry-After"].isdigit()
    assert app.extensions["smtpconf"].sending.pool.idle_count() == 0
    row = _log(client, tokens, response.json.get("id", 1))
    assert (row["outcome"], row["error_code"], row["smtp"]["code"]) == ("unavailable", "upstream_unavailable", 421)


def test_a_4xx_for_every_recipient_is_503_temporary(sending, busy_smtp_server):
    app, client, tokens = sending(busy_smtp_server)
    _configure(client, tokens, settings_for(busy_smtp_server))
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))
    assert response.status_code == 503 and response.json["reason"] == "temporary"
    assert response.json["smtp_code"] == 450 and "Retry-After" in response.headers


def test_a_server_that_never_answers_data_is_503_timeout_within_the_settings_timeout(sending, stalling_smtp_server):
    import time

    app, client, tokens = sending(stalling_smtp_server)
    _configure(client, tokens, settings_for(stalling_smtp_server, timeout_seconds=1))
    started = time.monotonic()
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))
    elapsed = time.monotonic() - started

    assert response.status_code == 503, response.json
    assert response.json["code"] == "upstream_unavailable" and response.json["reason"] == "timeout"
    assert response.json["stage"] == "data"
    assert elapsed < 5
    assert _log(client, tokens, 1)["outcome"] == "unavailable"


def test_an_unreachable_server_is_503_unreachable(sending, closed_port):
    class Closed:
        port = closed_port

    app, client, tokens = sending(Closed)
    _configure(client, tokens, settings_for(Closed))
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))
    assert response.status_code == 503 and response.json["reason"] == "unreachable"


def test_messages_reuse_one_authenticated_connection_until_the_settings_change(sending, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    for _ in range(3):
        assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert starttls_smtp_server.commands.count("AUTH") == 1 and starttls_smtp_server.commands.count("DATA") == 3
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem, from_name="Changed", timeout_seconds=6))
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert starttls_smtp_server.commands.count("AUTH") == 2
    assert starttls_smtp_server.commands.count("QUIT") == 1  # the old session was closed
    assert starttls_smtp_server.messages[-1].message["From"] == "Changed <noreply@example.com>"


def test_idle_sessions_are_closed(sending, starttls_smtp_server, smtp_ca_pem):
    import time

    app, client, tokens = sending(starttls_smtp_server)
    pool = app.extensions["smtpconf"].sending.pool
    pool.idle_seconds = 0.2
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    deadline = time.monotonic() + 5
    while pool.idle_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.idle_count() == 0
    while "QUIT" not in starttls_smtp_server.commands and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "QUIT" in starttls_smtp_server.commands


def test_a_server_that_dropped_an_idle_session_gets_a_new_one_without_an_error(sending, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    pool = app.extensions["smtpconf"].sending.pool
    for _key, sessions in pool._idle.values():
        for session in sessions:
            session._connection._sock.close()  # as a server closing an idle client looks from here
    response = client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))
    assert response.status_code == 200, response.json
    assert len(starttls_smtp_server.messages) == 2


def test_tenant_settings_apply_and_the_log_filters_by_tenant(sending, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    _configure(client, tokens, {"from_email": "acme@example.com", "from_name": "Acme"}, tenant="acme")
    assert client.post("/v1/tenants/acme/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert starttls_smtp_server.messages[0].message["From"] == "Acme <acme@example.com>"
    assert starttls_smtp_server.messages[0].mail_from == "acme@example.com"
    acme = client.get("/v1/messages?tenant=acme", headers=tokens.headers("admin")).json
    assert [row["tenant"] for row in acme["items"]] == ["acme"] and acme["next_before"] is None
    everything = client.get("/v1/messages?limit=1", headers=tokens.headers("admin")).json
    assert everything["items"][0]["tenant"] is None and everything["next_before"] == everything["items"][0]["id"]
    older = client.get(f"/v1/messages?limit=1&before={everything['next_before']}", headers=tokens.headers("admin")).json
    assert older["items"][0]["tenant"] == "acme"
    assert client.get("/v1/messages?limit=0", headers=tokens.headers("admin")).status_code == 422
    assert client.post("/v1/tenants/nobody/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    assert USERNAME  # every level authenticates as the system level's mailbox here


def test_a_restricted_sender_sends_for_its_tenant_only(sending, starttls_smtp_server, smtp_ca_pem):
    from service.tokens import create_token

    app, client, tokens = sending(starttls_smtp_server)
    _configure(client, tokens, settings_for(starttls_smtp_server, smtp_ca_pem))
    token = create_token(app.extensions["smtpconf"].db, "acme-sender", ["sender"], tenants=["acme"])
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/tenants/acme/messages", json=MESSAGE, headers=headers).status_code == 200
    for path in ("/v1/tenants/beta/messages", "/v1/messages"):
        response = client.post(path, json=MESSAGE, headers=headers)
        assert response.status_code == 403 and response.json["code"] == "tenant_not_allowed"
    assert len(starttls_smtp_server.messages) == 1
    assert client.get("/v1/tenants/acme/smtp", headers=headers).json["code"] == "forbidden"


def test_non_ascii_names_and_subjects_are_encoded_and_long_recipient_lists_folded(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server)
    _configure(client, tokens, settings_for(plain_smtp_server, from_name='Zürich "Alerts", Inc.'))
    recipients = [f"user{i}@example.com" for i in range(30)]
    payload = {**MESSAGE, "to": recipients, "subject": "Grüße aus Zürich", "headers": {"X-Note": "ä"}}
    assert client.post("/v1/messages", json=payload, headers=tokens.headers("sender")).status_code == 200
    received = plain_smtp_server.messages[0]
    assert received.content.isascii()
    assert all(len(line) <= 998 for line in received.content.split(b"\r\n"))
    message = received.message
    assert message["From"].addresses[0].display_name == 'Zürich "Alerts", Inc.'
    assert message["From"].addresses[0].addr_spec == "noreply@example.com"
    assert message["Subject"] == "Grüße aus Zürich" and message["X-Note"] == "ä"
    assert [a.addr_spec for a in message["To"].addresses] == recipients
