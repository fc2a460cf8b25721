"""OAuth2 for SMTP end to end: settings, token endpoints (Entra ID, Google, RFC 6749) and bearer-verifying SMTP servers."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from service.rotation import rotate_master_key
from service.smtp_check.auth import xoauth2_encode

from tests.conftest import MASTER_KEY, Tokens
from tests.fixtures.oauth_servers import (
    CC_CLIENT_ID,
    CC_SECRET,
    CERT_CLIENT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    TENANT,
    OAuthLab,
)


@pytest.fixture
def lab(make_app, oauth: OAuthLab):
    """An app whose destination policy admits the loopback SMTP servers; it trusts the stand-in through REQUESTS_CA_BUNDLE."""
    ports = [s.port for s in oauth.smtp_servers]
    app = make_app(smtp_allowed_ports=",".join(map(str, [587, *ports])), rate_limit_per_minute=1000)
    return app, app.test_client(), Tokens(app)


def settings(oauth: OAuthLab, server: Any, auth: dict[str, Any], smtp_ca_pem: str) -> dict[str, Any]:
    return {
        "host": "localhost", "port": server.port, "security": "starttls", "ca_certificate_pem": smtp_ca_pem,
        "from_email": MAILBOX, "username": MAILBOX, "auth": auth, "timeout_seconds": 10,
    }


def microsoft(oauth: OAuthLab, secret: str = CLIENT_SECRET) -> dict[str, Any]:
    return {
        "method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CLIENT_ID,
        "client_secret": {"source": "plaintext", "value": secret}, "authority_host": oauth.tokens.base_url,
    }


def microsoft_certificate(oauth: OAuthLab) -> dict[str, Any]:
    return {
        "method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CERT_CLIENT_ID,
        "client_certificate": {"source": "plaintext", "value": oauth.certificate_pem}, "authority_host": oauth.tokens.base_url,
    }


def google(oauth: OAuthLab) -> dict[str, Any]:
    return {"method": "oauth2", "flow": "google", "service_account_key": {"source": "plaintext", "value": json.dumps(oauth.service_account_key)}}


def client_credentials(oauth: OAuthLab) -> dict[str, Any]:
    return {
        "method": "oauth2", "flow": "client_credentials", "token_url": oauth.tokens.token_url, "client_id": CC_CLIENT_ID,
        "client_secret": {"source": "plaintext", "value": CC_SECRET}, "scope": "smtp.send",
    }


FLOWS = {"microsoft": microsoft, "microsoft_certificate": microsoft_certificate, "google": google, "client_credentials": client_credentials}


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_each_flow_validates_sends_and_serves_a_token(lab, oauth, smtp_ca_pem, flow):
    app, client, tokens = lab
    document = settings(oauth, oauth.xoauth2, FLOWS[flow](oauth), smtp_ca_pem)
    assert client.put("/v1/smtp", json=document, headers=tokens.headers("admin")).status_code == 200

    validated = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
    assert validated["ok"] is True, validated
    assert validated["token"]["flow"] == flow.split("_certificate")[0] and validated["token"]["refreshed"] is False
    assert "C: AUTH XOAUTH2" in validated["transcript"]

    sent = client.post("/v1/smtp/test-connection", json={"to": "ops@example.com"}, headers=tokens.headers("admin")).json
    assert sent["ok"] is True, sent
    assert len(oauth.xoauth2.messages) == 1

    effective = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader")).json
    assert effective["password"] is None and effective["sasl_mechanism"] == "XOAUTH2"
    assert effective["access_token"] in oauth.tokens.endpoint.issued
    assert [c.ok for c in oauth.xoauth2.handler.bearer_checks] == [True, True]
    assert oauth.tokens.endpoint.count() == 1  # validate, test-connection and effective share one token


def test_a_wrong_client_secret_is_token_unavailable_with_the_endpoints_error(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    document = settings(oauth, oauth.xoauth2, microsoft(oauth, secret="not-the-secret"), smtp_ca_pem)

    result = client.post("/v1/smtp/validate", json={"settings": document}, headers=tokens.headers("admin")).json

    assert result["ok"] is False and result["stage"] == "token"
    assert result["error"]["code"] == "token_unavailable"
    assert result["error"]["oauth_error"] == "invalid_client"
    assert "AADSTS7000215" in result["error"]["message"]
    assert result["server"]["address"] is None  # no SMTP connection was made
    assert oauth.xoauth2.handler.bearer_checks == []


def test_effective_with_a_token_that_cannot_be_had_is_503_token_unavailable(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, microsoft(oauth, secret="wrong"), smtp_ca_pem), headers=tokens.headers("admin"))

    response = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))

    assert response.status_code == 503
    assert response.json["code"] == "token_unavailable" and response.json["oauth_error"] == "invalid_client"
    assert "wrong" not in response.get_data(as_text=True)


def test_a_token_revoked_by_the_server_is_refreshed_once_and_the_check_passes(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, microsoft(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    assert client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json["ok"] is True
    oauth.xoauth2.handler.revoked.update(oauth.tokens.endpoint.issued)

    result = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json

    assert result["ok"] is True, result
    assert result["token"]["refreshed"] is True
    assert [c.reason for c in oauth.xoauth2.handler.bearer_checks] == ["", "revoked", ""]
    assert oauth.tokens.endpoint.count() == 2
    assert result["transcript"].count("C: AUTH XOAUTH2") == 2


def test_an_expiring_token_is_renewed_before_use_without_a_failed_attempt(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    oauth.tokens.endpoint.expires_in = 2
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, client_credentials(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    first = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
    assert first["ok"] is True
    expires = datetime.fromisoformat(first["token"]["expires_at"]).timestamp()
    deadline = time.monotonic() + 10
    while time.time() < expires + 0.2 and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting on the wall clock itself: the token must have expired

    second = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json

    assert second["ok"] is True and second["token"]["refreshed"] is False
    assert [c.ok for c in oauth.xoauth2.handler.bearer_checks] == [True, True]
    assert oauth.tokens.endpoint.count() == 2


def test_twenty_concurrent_validations_make_one_token_request(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    oauth.tokens.endpoint.delay = 0.3  # the first request is still in flight when the others ask
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, microsoft(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    headers = tokens.headers("admin")
    start = threading.Barrier(20)

    def validate(_: int) -> dict[str, Any]:
        own = app.test_client()
        start.wait(timeout=10)
        return own.post("/v1/smtp/validate", headers=headers).json

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(validate, range(20)))

    assert all(r["ok"] for r in results), [r["error"] for r in results if not r["ok"]]
    assert oauth.tokens.endpoint.count() == 1
    assert len(oauth.xoauth2.handler.bearer_checks) == 20


def test_only_oauthbearer_offered_is_used(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    document = settings(oauth, oauth.oauthbearer, google(oauth), smtp_ca_pem)

    result = client.post("/v1/smtp/validate", json={"settings": document}, headers=tokens.headers("admin")).json

    assert result["ok"] is True, result
    assert [(c.mechanism, c.user, c.ok) for c in oauth.oauthbearer.handler.bearer_checks] == [("OAUTHBEARER", MAILBOX, True)]


def test_a_3_kb_token_passes_a_512_byte_command_limit_in_the_two_step_form(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    oauth.tokens.endpoint.padding = 2400
    document = settings(oauth, oauth.short_lines, client_credentials(oauth), smtp_ca_pem)

    result = client.post("/v1/smtp/validate", json={"settings": document}, headers=tokens.headers("admin")).json

    assert result["ok"] is True, result
    token = oauth.tokens.endpoint.issued[-1]
    assert len(token) > 3000
    assert [(c.ok, c.two_step) for c in oauth.short_lines.handler.bearer_checks] == [(True, True)]
    assert "C: AUTH XOAUTH2" in result["transcript"] and "C: ********" in result["transcript"]
    # The one-line form of the same token is what the server refuses.
    with smtplib.SMTP("127.0.0.1", oauth.short_lines.port, timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cadata=smtp_ca_pem))
        smtp.ehlo()
        code, _ = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_encode(MAILBOX, token))
    assert code == 500


def test_exchanges_basic_auth_refusal_is_basic_auth_disabled(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    document = {
        **settings(oauth, oauth.basic_disabled, {"method": "password"}, smtp_ca_pem),
        "password": {"source": "plaintext", "value": "a-password"},
    }

    result = client.post("/v1/smtp/validate", json={"settings": document}, headers=tokens.headers("admin")).json

    assert result["error"]["code"] == "basic_auth_disabled"
    assert result["error"]["smtp_code"] == 535 and "5.7.139" in result["error"]["smtp_message"]
    assert "oauth2" in result["error"]["message"]


def test_the_etag_of_effective_settings_moves_when_the_token_changes(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, microsoft(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    sender = tokens.headers("secret-reader")
    first = client.get("/v1/smtp/effective?include_password=true", headers=sender)
    again = client.get("/v1/smtp/effective?include_password=true", headers={**sender, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    app.extensions["smtpconf"].credentials.tokens.clear()

    renewed = client.get("/v1/smtp/effective?include_password=true", headers={**sender, "If-None-Match": first.headers["ETag"]})

    assert renewed.status_code == 200
    assert renewed.json["access_token"] != first.json["access_token"]
    assert renewed.headers["ETag"] != first.headers["ETag"]
    assert renewed.headers["Cache-Control"] == "no-store"
    assert renewed.json["auth"]["client_secret"] == {"source": "plaintext", "value_set": True}
    assert CLIENT_SECRET not in renewed.get_data(as_text=True)


def test_a_token_endpoint_in_a_denied_network_is_refused(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    auth = {**client_credentials(oauth), "token_url": "https://169.254.169.254/oauth/token"}

    result = client.post("/v1/smtp/validate", json={"settings": settings(oauth, oauth.xoauth2, auth, smtp_ca_pem)}, headers=tokens.headers("admin")).json

    # Refused as an SMTP server in a denied network is: a policy refusal, not an outage.
    assert result["error"]["code"] == "destination_not_allowed"
    assert result["stage"] == "token"
    assert "denied network" in result["error"]["message"]
    assert oauth.tokens.endpoint.requests == []


def test_an_effective_read_says_a_denied_token_endpoint_is_a_policy_refusal(make_app, oauth, smtp_ca_pem):
    # 127.0.0.0/8 denied: the loopback token endpoint itself is refused, whatever its name resolves to.
    app = make_app(smtp_denied_networks="127.0.0.0/8,169.254.0.0/16")
    client, tokens = app.test_client(), Tokens(app)
    auth = client_credentials(oauth)
    assert client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, auth, smtp_ca_pem), headers=tokens.headers("admin")).status_code == 200

    response = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))

    assert response.status_code == 503
    assert response.json["code"] == "token_unavailable"  # what senders key on, as the contract fixes it
    assert response.json["reason"] == "destination_not_allowed"
    assert "Retry-After" not in response.headers
    assert "denied network" in response.json["detail"]
    assert oauth.tokens.endpoint.requests == []


def test_token_requests_and_failures_are_counted(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.post("/v1/smtp/validate", json={"settings": settings(oauth, oauth.xoauth2, microsoft(oauth, "bad"), smtp_ca_pem)}, headers=tokens.headers("admin"))
    client.post("/v1/smtp/validate", json={"settings": settings(oauth, oauth.xoauth2, microsoft(oauth), smtp_ca_pem)}, headers=tokens.headers("admin"))

    text = client.get("/metrics").get_data(as_text=True)

    assert 'smtpconf_oauth_token_requests_total{flow="microsoft",outcome="invalid_client"}' in text
    assert 'smtpconf_oauth_token_requests_total{flow="microsoft",outcome="ok"}' in text


def test_a_hung_token_endpoint_costs_no_more_than_the_checks_timeout(lab, oauth, smtp_ca_pem, silent_server):
    app, client, tokens = lab
    auth = {**client_credentials(oauth), "token_url": f"https://127.0.0.1:{silent_server.port}/oauth/token"}
    document = {**settings(oauth, oauth.xoauth2, auth, smtp_ca_pem), "timeout_seconds": 2}
    started = time.monotonic()

    result = client.post("/v1/smtp/validate", json={"settings": document}, headers=tokens.headers("admin")).json

    assert time.monotonic() - started < 5
    assert result["error"]["code"] == "token_unavailable" and result["stage"] == "token"
    assert "in time" in result["error"]["message"]


def test_a_token_still_valid_is_served_while_its_renewal_fails(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, client_credentials(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    sender = tokens.headers("secret-reader")
    first = client.get("/v1/smtp/effective?include_password=true", headers=sender).json
    service = app.extensions["smtpconf"].credentials.tokens
    # Renewal comes due (the clock moves past the renewal margin, not past expiry) while the endpoint refuses.
    service.clock = lambda: time.time() + 3600 - 30
    oauth.tokens.endpoint.client_secrets[CC_CLIENT_ID] = "rotated-elsewhere"
    try:
        second = client.get("/v1/smtp/effective?include_password=true", headers=sender)
    finally:
        oauth.tokens.endpoint.client_secrets[CC_CLIENT_ID] = CC_SECRET

    assert second.status_code == 200 and second.json["access_token"] == first["access_token"]
    assert oauth.tokens.endpoint.count(outcome="invalid_client") == 1


def test_a_rotated_client_secret_is_used_at_once(lab, oauth, smtp_ca_pem):
    app, client, tokens = lab
    security = tokens.headers("security")
    client.put("/v1/secrets/smtp/relay-client", json={"value": CC_SECRET}, headers=security)
    auth = {**client_credentials(oauth), "client_secret": {"source": "internal", "secret": "smtp/relay-client"}}
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, auth, smtp_ca_pem), headers=tokens.headers("admin"))
    assert client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json["ok"] is True
    oauth.tokens.endpoint.client_secrets[CC_CLIENT_ID] = "relay-secret-rotated"
    try:
        client.put("/v1/secrets/smtp/relay-client", json={"value": "relay-secret-rotated"}, headers=security)
        result = client.post("/v1/smtp/validate", headers=tokens.headers("admin")).json
    finally:
        oauth.tokens.endpoint.client_secrets[CC_CLIENT_ID] = CC_SECRET

    assert result["ok"] is True
    assert oauth.tokens.endpoint.count() == 2  # the new secret is not served a token cached for the old one


def test_master_key_rotation_reseals_oauth2_secrets(lab, make_app, oauth, smtp_ca_pem):
    app, client, tokens = lab
    client.put("/v1/smtp", json=settings(oauth, oauth.xoauth2, microsoft(oauth), smtp_ca_pem), headers=tokens.headers("admin"))
    new_key = base64.b64encode(os.urandom(32)).decode()
    both = make_app(master_key=f"{new_key},{MASTER_KEY}")

    assert rotate_master_key(both.extensions["smtpconf"].db, both.extensions["smtpconf"].keyring) == {"secrets": 0, "passwords": 1}

    only_new = make_app(master_key=new_key)
    response = only_new.test_client().get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))
    assert response.status_code == 200, response.json
    assert response.json["access_token"] in oauth.tokens.endpoint.issued
