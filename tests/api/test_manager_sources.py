"""Passwords from Azure Key Vault (real SDK, mocked transport) and CyberArk (loopback mTLS CCP)
through GET .../effective?include_password=true."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.fixtures.cyberark_ccp import APP_ID
from tests.providers.test_azure_key_vault import client_secret_credential, connection as azure_connection
from tests.providers.test_azure_key_vault import vault as azure_vault  # noqa: F401  (fixture)

CANARY = "canary-managers-0a7f3e-do-not-leak"


def settings_with(password: dict) -> dict:
    return {
        "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
        "password": password,
    }


def effective(client, tokens):
    return client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))


def test_password_resolved_from_azure_key_vault(client, tokens, azure_vault):
    version = azure_vault.store("smtp-password", CANARY)
    document = azure_connection(azure_vault.url, client_secret_credential())
    assert client.put("/v1/secret-providers/corp-kv", json=document, headers=tokens.headers("security")).status_code == 201
    reference = {"source": "azure_key_vault", "provider": "corp-kv", "secret": "smtp-password", "version": None}
    assert client.put("/v1/smtp", json=settings_with(reference), headers=tokens.headers("admin")).status_code == 200
    body = effective(client, tokens).json
    assert body["password"] == CANARY and body["password_version"] == version
    assert "password_expires_soon" not in body["warnings"]


def test_azure_secret_expiring_within_14_days_warns(client, tokens, azure_vault):
    azure_vault.store("smtp-password", "expiring", expires_on=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3))
    client.put("/v1/secret-providers/corp-kv", json=azure_connection(azure_vault.url), headers=tokens.headers("security"))
    reference = {"source": "azure_key_vault", "provider": "corp-kv", "secret": "smtp-password"}
    client.put("/v1/smtp", json=settings_with(reference), headers=tokens.headers("admin"))
    body = effective(client, tokens).json
    assert body["password"] == "expiring"
    assert "password_expires_soon" in body["warnings"]


def test_azure_secret_outside_allowed_secrets_is_refused(client, tokens, azure_vault):
    client.put("/v1/secret-providers/corp-kv", json=azure_connection(azure_vault.url), headers=tokens.headers("security"))
    reference = {"source": "azure_key_vault", "provider": "corp-kv", "secret": "db-root-password"}
    response = client.put("/v1/smtp", json=settings_with(reference), headers=tokens.headers("admin"))
    assert response.status_code == 422 and response.json["code"] == "secret_not_allowed"


@pytest.fixture
def ccp_connection(cyberark_ccp, tmp_path):
    pem = tmp_path / "ccp-client.pem"
    pem.write_text(cyberark_ccp.client_certificate_pem)
    return {
        "type": "cyberark", "url": cyberark_ccp.url, "app_id": APP_ID,
        "client_certificate": {"file": str(pem)}, "ca_certificate_pem": cyberark_ccp.ca_pem,
        "allowed_secrets": ["SMTP/*"], "timeout_seconds": 5,
    }


def test_password_resolved_from_cyberark(client, tokens, cyberark_ccp, ccp_connection):
    cyberark_ccp.store("SMTP", "relay", CANARY)
    assert client.put("/v1/secret-providers/ccp", json=ccp_connection, headers=tokens.headers("security")).status_code == 201
    reference = {"source": "cyberark", "provider": "ccp", "safe": "SMTP", "object": "relay"}
    assert client.put("/v1/smtp", json=settings_with(reference), headers=tokens.headers("admin")).status_code == 200
    response = effective(client, tokens)
    assert response.json["password"] == CANARY
    assert client.post("/v1/secret-providers/ccp/check", headers=tokens.headers("security")).json["ok"] is True
    listing = client.get("/v1/secret-providers/ccp", headers=tokens.headers("admin"))
    assert CANARY not in listing.get_data(as_text=True)


def test_cyberark_object_outside_allowed_secrets_is_refused(client, tokens, cyberark_ccp, ccp_connection):
    client.put("/v1/secret-providers/ccp", json=ccp_connection, headers=tokens.headers("security"))
    reference = {"source": "cyberark", "provider": "ccp", "safe": "Infra", "object": "root"}
    response = client.put("/v1/smtp", json=settings_with(reference), headers=tokens.headers("admin"))
    assert response.status_code == 422 and response.json["code"] == "secret_not_allowed"


def test_inline_credentials_in_a_connection_are_refused(client, tokens, cyberark_ccp):
    document = {"type": "cyberark", "url": cyberark_ccp.url, "app_id": APP_ID, "client_certificate": "-----BEGIN..."}
    response = client.put("/v1/secret-providers/ccp", json=document, headers=tokens.headers("security"))
    assert response.status_code == 422 and "client_certificate" in response.json["errors"]
