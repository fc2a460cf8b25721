"""OAuth2 for SMTP end to end: settings, token endpoints (Entra ID, Google, RFC 6749) and bearer-verifying SMTP servers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import Tokens
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
    import json

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
