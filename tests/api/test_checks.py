"""Validate and test-connection through the API, against real loopback SMTP servers."""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import Tokens
from tests.fixtures.smtp_servers import PASSWORD, USERNAME

CANARY = "canary-smtp-3b8e1d-do-not-leak"


@pytest.fixture
def lab(make_app, plain_smtp_server, starttls_smtp_server, stripping_smtp_server, silent_server):
    """An app whose destination policy admits the loopback test servers' ports."""
    ports = [s.port for s in (plain_smtp_server, starttls_smtp_server, stripping_smtp_server, silent_server)]
    app = make_app(smtp_allowed_ports=",".join(map(str, [25, 465, 587, 2525, *ports])), rate_limit_per_minute=1000)
    return app, app.test_client(), Tokens(app)


def starttls_settings(server, ca_pem, password=PASSWORD):
    return {
        "host": "localhost", "port": server.port, "security": "starttls", "ca_certificate_pem": ca_pem,
        "from_email": "noreply@example.com", "from_name": "Example Alerts", "reply_to": "help@example.com",
        "username": USERNAME, "password": {"source": "plaintext", "value": password},
        "cc": ["audit@example.com"], "bcc": ["hidden@example.com"], "timeout_seconds": 5,
    }


def test_validate_saved_settings_sends_no_mail(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=starttls_settings(starttls_smtp_server, smtp_ca_pem), headers=tokens.headers("admin"))
    result = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
    assert result["ok"] is True and result["stage"] == "done", result
    assert result["server"]["tls_version"].startswith("TLS")
    assert "STARTTLS" in result["server"]["extensions"] or any("AUTH" in e for e in result["server"]["extensions"])
    assert result["secret"]["source"] == "plaintext"
    assert starttls_smtp_server.messages == []
    assert not any(c.startswith(("MAIL", "RCPT", "DATA")) for c in starttls_smtp_server.commands)


def test_test_connection_delivers_exactly_one_well_formed_mail(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/tenants/acme/smtp", json=starttls_settings(starttls_smtp_server, smtp_ca_pem), headers=tokens.headers("admin"))
    response = client.post(
        "/v1/tenants/acme/smtp/test-connection", json={"to": "ops@example.com", "include_cc_bcc": True},
        headers=tokens.headers("admin"),
    )
    result = response.json
    assert result["ok"] is True, result
    assert len(starttls_smtp_server.messages) == 1
    received = starttls_smtp_server.messages[0]
    assert received.mail_from == "noreply@example.com"
    assert sorted(received.rcpt_tos) == ["audit@example.com", "hidden@example.com", "ops@example.com"]
    message = received.message
    assert message["To"] == "ops@example.com"
    assert message["Cc"] == "audit@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert message["From"] == "Example Alerts <noreply@example.com>"
    assert message["Message-ID"] == result["message_id"]
    assert message["Date"]
    assert "acme" in message["Subject"] or "acme" in message.get_content()
    assert b"hidden@example.com" not in received.content


def test_test_connection_without_to_mails_the_from_address(lab, plain_smtp_server):
    app, client, tokens = lab
    settings = {"host": "127.0.0.1", "port": plain_smtp_server.port, "security": "none", "from_email": "me@example.com"}
    result = client.post("/v1/smtp/test-connection", json={"settings": settings}, headers=tokens.headers("admin")).json
    assert result["ok"] is True
    assert plain_smtp_server.messages[0].rcpt_tos == ["me@example.com"]
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).status_code == 404  # candidate not saved


def test_private_domain_addresses_are_saved_validated_and_mailed(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    settings = {
        **starttls_settings(starttls_smtp_server, smtp_ca_pem),
        "from_email": "noreply@corp.local", "reply_to": "help@host.internal", "envelope_from": "bounces@corp.local",
        "cc": ["audit@example.lan"], "bcc": ["hidden@mail.test"],
    }
    saved = client.put("/v1/smtp", json=settings, headers=tokens.headers("admin"))
    assert saved.status_code == 200, saved.json
    validated = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
    assert validated["ok"] is True, validated
    sent = client.post(
        "/v1/smtp/test-connection", json={"to": "someone@mail.test", "include_cc_bcc": True}, headers=tokens.headers("admin")
    ).json
    assert sent["ok"] is True, sent
    received = starttls_smtp_server.messages[-1]
    assert received.mail_from == "bounces@corp.local"
    assert sorted(received.rcpt_tos) == ["audit@example.lan", "hidden@mail.test", "someone@mail.test"]
    assert received.message["From"] == "Example Alerts <noreply@corp.local>"


def test_no_credential_in_transcript_response_or_log(lab, starttls_smtp_server, smtp_ca_pem, caplog):
    app, client, tokens = lab
    caplog.set_level(logging.DEBUG)
    settings = starttls_settings(starttls_smtp_server, smtp_ca_pem, password=CANARY)
    response = client.post("/v1/smtp/validate", json={"settings": settings}, headers=tokens.headers("admin"))
    result = response.json
    assert result["ok"] is False and result["error"]["code"] == "auth_failed" and result["stage"] == "auth"
    assert any("AUTH" in line and "********" in line for line in result["transcript"])
    assert CANARY not in response.get_data(as_text=True)
    assert CANARY not in caplog.text


def test_starttls_stripping_server_gets_no_auth(lab, stripping_smtp_server):
    app, client, tokens = lab
    settings = {
        "host": "127.0.0.1", "port": stripping_smtp_server.port, "security": "starttls", "from_email": "a@example.com",
        "username": USERNAME, "password": {"source": "plaintext", "value": PASSWORD},
    }
    result = client.post("/v1/smtp/validate", json={"settings": settings}, headers=tokens.headers("admin")).json
    assert result["ok"] is False
    assert result["error"]["code"] == "starttls_unsupported" and result["stage"] == "starttls"
    assert not any(c.startswith("AUTH") for c in stripping_smtp_server.commands)


def test_silent_server_times_out_within_the_timeout(lab, silent_server):
    app, client, tokens = lab
    settings = {"host": "127.0.0.1", "port": silent_server.port, "security": "none", "from_email": "a@example.com", "timeout_seconds": 1}
    started = time.monotonic()
    result = client.post("/v1/smtp/validate", json={"settings": settings}, headers=tokens.headers("admin")).json
    assert time.monotonic() - started < 1.5
    assert result["error"]["code"] == "timeout" and result["stage"] == "greeting"


@pytest.mark.parametrize("host,port", [("169.254.169.254", 25), ("169.254.10.1", 587), ("fe80::1", 25), ("127.0.0.1", 22)])
def test_forbidden_destinations_are_refused_without_connecting(lab, host, port):
    app, client, tokens = lab
    settings = {"host": host, "port": port, "security": "none", "from_email": "a@example.com"}
    result = client.post("/v1/smtp/test-connection", json={"settings": settings}, headers=tokens.headers("admin")).json
    assert result["ok"] is False
    assert result["error"]["code"] == "destination_not_allowed"
    assert not any(line.startswith("S:") for line in result["transcript"])


def test_candidate_reuses_the_stored_password_only_for_the_same_destination(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=starttls_settings(starttls_smtp_server, smtp_ca_pem), headers=tokens.headers("admin"))
    same = {**starttls_settings(starttls_smtp_server, smtp_ca_pem), "password": {"source": "plaintext", "value_set": True}}
    same["from_name"] = "Another Name"
    result = client.post("/v1/smtp/validate", json={"settings": same}, headers=tokens.headers("admin")).json
    assert result["ok"] is True, result
    moved = {**same, "host": "127.0.0.1"}
    refused = client.post("/v1/smtp/validate", json={"settings": moved}, headers=tokens.headers("admin"))
    assert refused.status_code == 422 and refused.json["code"] == "password_required"


def test_invalid_candidate_settings_are_422(lab):
    app, client, tokens = lab
    response = client.post("/v1/smtp/validate", json={"settings": {"host": "x", "port": 0}}, headers=tokens.headers("admin"))
    assert response.status_code == 422 and "settings" in response.json["errors"]
    response = client.post("/v1/smtp/test-connection", json={"to": "bad\r\naddress@example.com"}, headers=tokens.headers("admin"))
    assert response.status_code == 422 and "to" in response.json["errors"]
    response = client.post("/v1/smtp/validate", json={"to": "a@example.com"}, headers=tokens.headers("admin"))
    assert response.status_code == 422 and "to" in response.json["errors"]


def test_put_with_validate_saves_only_when_the_check_passes(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    bad = starttls_settings(starttls_smtp_server, smtp_ca_pem, password="wrong-password")
    refused = client.put("/v1/smtp?validate=true", json=bad, headers=tokens.headers("admin"))
    assert refused.status_code == 422
    assert refused.json["code"] == "validation_failed"
    assert refused.json["result"]["error"]["code"] == "auth_failed"
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).status_code == 404
    good = starttls_settings(starttls_smtp_server, smtp_ca_pem)
    saved = client.put("/v1/smtp?validate=true", json=good, headers=tokens.headers("admin"))
    assert saved.status_code == 200 and saved.json["version"] == 1
    assert starttls_smtp_server.messages == []


def test_rotated_password_is_picked_up_by_the_retry_after_535(lab, starttls_smtp_server, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/secrets/smtp/relay", json={"value": PASSWORD}, headers=tokens.headers("security"))
    settings = {**starttls_settings(starttls_smtp_server, smtp_ca_pem), "password": {"source": "internal", "secret": "smtp/relay"}}
    client.put("/v1/smtp", json=settings, headers=tokens.headers("admin"))
    assert client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json["ok"] is True  # now cached
    # Rotate on the server and in the store without telling the workers (the
    # board is not bumped), as with a rotation made in an external manager.
    starttls_smtp_server.handler.credentials[USERNAME] = "rotated-password"
    db = app.extensions["smtpconf"].db
    try:
        db.on_commit, announced = None, db.on_commit
        try:
            app.extensions["smtpconf"].secrets.store.put("smtp/relay", {"value": "rotated-password"}, actor="rotation")
        finally:
            db.on_commit = announced
        result = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
        assert result["ok"] is True, result
        assert result["secret"]["refreshed"] is True and result["secret"]["version"] == "2"
    finally:
        starttls_smtp_server.handler.credentials[USERNAME] = PASSWORD


def test_checks_are_rate_limited_per_token(make_app, plain_smtp_server):
    app = make_app(smtp_allowed_ports=str(plain_smtp_server.port), rate_limit_per_minute=2)
    client, tokens = app.test_client(), Tokens(app)
    settings = {"settings": {"host": "127.0.0.1", "port": plain_smtp_server.port, "security": "none", "from_email": "a@example.com"}}
    assert [client.post("/v1/smtp/validate", json=settings, headers=tokens.headers("admin")).status_code for _ in range(2)] == [200, 200]
    limited = client.post("/v1/smtp/validate", json=settings, headers=tokens.headers("admin"))
    assert limited.status_code == 429
    assert limited.content_type == "application/problem+json" and limited.json["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    other = client.post("/v1/smtp/validate", json=settings, headers=tokens.headers("admin", "reader"))
    assert other.status_code == 200


def test_candidate_with_a_username_and_no_password_is_422(lab, plain_smtp_server):
    app, client, tokens = lab
    system = {"host": "127.0.0.1", "port": plain_smtp_server.port, "security": "none", "from_email": "a@example.com",
              "username": "u", "password": {"source": "plaintext", "value": "p"}}
    client.put("/v1/smtp", json=system, headers=tokens.headers("admin"))
    response = client.post("/v1/tenants/t1/smtp/validate", json={"settings": {"password": None}}, headers=tokens.headers("admin"))
    assert response.status_code == 422
    assert "password" in response.json["errors"]["settings"]
