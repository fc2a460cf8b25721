"""The ``auth`` object of the settings document: per-flow validation, secrets as references, the round trip, tenant override, warnings."""

from __future__ import annotations

from typing import Any

import pytest

BASE: dict[str, Any] = {"host": "smtp.office365.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer@example.com"}


def microsoft(**overrides: Any) -> dict[str, Any]:
    return {
        "method": "oauth2", "flow": "microsoft", "tenant_id": "contoso.onmicrosoft.com",
        "client_id": "00000000-0000-0000-0000-000000000000",
        "client_secret": {"source": "plaintext", "value": "entra-secret-value"}, **overrides,
    }


def put(client, tokens, document: dict[str, Any], path: str = "/v1/smtp"):
    return client.put(path, json=document, headers=tokens.headers("admin"))


@pytest.mark.parametrize(
    ("auth", "errors"),
    [
        ({"method": "kerberos"}, {"method": ["Must be one of: password, oauth2."]}),
        ({"method": "oauth2", "flow": "yahoo"}, {"flow": ["Must be one of: microsoft, google, client_credentials."]}),
        ({"method": "oauth2", "flow": "microsoft", "client_secret": {"source": "plaintext", "value": "x"}},
         {"tenant_id": ["Missing data for required field."], "client_id": ["Missing data for required field."]}),
        (microsoft(client_secret=None) | {"client_secret": {"source": "plaintext", "value": "x"}, "client_certificate": {"source": "plaintext", "value": "y"}},
         {"client_secret": ["Give client_secret or client_certificate (one of them)."], "client_certificate": ["Give client_secret or client_certificate (one of them)."]}),
        (microsoft(authority_host="http://login.example.test"), {"authority_host": ["Must be an https:// URL with a host name (and no user information)."]}),
        ({"method": "oauth2", "flow": "google"}, {"service_account_key": ["Missing data for required field."]}),
        ({"method": "oauth2", "flow": "client_credentials", "client_id": "c", "client_secret": {"source": "plaintext", "value": "s"}},
         {"token_url": ["Missing data for required field."]}),
        (microsoft(extra=1), {"extra": ["Unknown field."]}),
        (microsoft(client_secret={"source": "plaintext"}), {"client_secret": {"value": ['Give "value", or "value_set": true to keep the stored one.']}}),
        ({"method": "password", "flow": "microsoft"}, {"flow": ["Unknown field."]}),
    ],
)
def test_each_flow_is_validated_field_by_field(client, tokens, auth, errors):
    response = put(client, tokens, {**BASE, "auth": auth})
    assert response.status_code == 422
    assert response.json["code"] == "validation_failed"
    assert response.json["errors"] == {"auth": errors}
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).status_code == 404


def test_oauth2_needs_a_username_and_no_password(client, tokens):
    no_user = put(client, tokens, {**BASE, "username": None, "auth": microsoft()})
    assert no_user.status_code == 422 and "username" in no_user.json["errors"]
    with_password = put(client, tokens, {**BASE, "password": {"source": "plaintext", "value": "p"}, "auth": microsoft()})
    assert with_password.status_code == 422 and "password" in with_password.json["errors"]


def test_a_plaintext_client_secret_is_sealed_and_read_back_as_value_set(client, tokens, app, database_url):
    response = put(client, tokens, {**BASE, "auth": microsoft()})
    assert response.status_code == 200, response.json
    body = client.get("/v1/smtp", headers=tokens.headers("admin")).json
    assert body["auth"]["client_secret"] == {"source": "plaintext", "value_set": True}
    assert body["auth"]["flow"] == "microsoft" and body["password"] is None
    assert "entra-secret-value" not in response.get_data(as_text=True)
    stored = app.extensions["smtpconf"].settings.get("system").document["auth"]["client_secret"]
    assert set(stored) == {"source", "ciphertext", "version"}


def test_the_stored_client_secret_is_kept_only_while_the_endpoint_and_client_are_unchanged(client, tokens):
    put(client, tokens, {**BASE, "auth": microsoft()})
    kept = {**BASE, "from_name": "Renamed", "auth": microsoft(client_secret={"source": "plaintext", "value_set": True})}
    assert put(client, tokens, kept).status_code == 200
    for change in ({"client_id": "11111111-0000-0000-0000-000000000000"}, {"tenant_id": "fabrikam.onmicrosoft.com"},
                   {"authority_host": "https://login.microsoftonline.us"}):
        moved = put(client, tokens, {**BASE, "auth": microsoft(client_secret={"source": "plaintext", "value_set": True}, **change)})
        assert moved.status_code == 422 and moved.json["code"] == "password_required", change
        assert list(moved.json["errors"]["auth"]) == ["client_secret"]


def test_candidate_settings_never_send_the_stored_client_secret_to_another_endpoint(client, tokens):
    put(client, tokens, {**BASE, "auth": microsoft()})
    candidate = {**BASE, "auth": microsoft(client_secret={"source": "plaintext", "value_set": True}, tenant_id="evil.example")}

    response = client.post("/v1/smtp/validate", json={"settings": candidate}, headers=tokens.headers("admin"))

    assert response.status_code == 422 and response.json["code"] == "password_required"


def test_secrets_in_auth_obey_the_connections_allow_list(client, tokens):
    outside = microsoft(client_secret={"source": "internal", "secret": "vault-credentials/approle"})
    response = put(client, tokens, {**BASE, "auth": outside})
    assert response.status_code == 422
    assert response.json["code"] == "secret_not_allowed"
    assert list(response.json["errors"]["auth"]) == ["client_secret"]
    inside = microsoft(client_secret={"source": "internal", "secret": "smtp/entra-client-secret"})
    assert put(client, tokens, {**BASE, "auth": inside}).status_code == 200


def test_a_tenant_overrides_auth_as_one_field(client, tokens):
    put(client, tokens, {**BASE, "host": "smtp.example.com", "password": {"source": "plaintext", "value": "system-pass"}})
    response = put(client, tokens, {"auth": microsoft()}, "/v1/tenants/acme/smtp")
    assert response.status_code == 200, response.json

    acme = client.get("/v1/tenants/acme/smtp/effective", headers=tokens.headers("reader")).json
    assert acme["auth"]["flow"] == "microsoft" and "auth" not in acme["inherited"]
    assert acme["password"] is None  # the system password is set aside under OAuth2
    other = client.get("/v1/tenants/other/smtp/effective", headers=tokens.headers("reader")).json
    assert other["auth"] == {"method": "password"}
    back = put(client, tokens, {"auth": None}, "/v1/tenants/acme/smtp")
    assert back.status_code == 200
    assert client.get("/v1/tenants/acme/smtp/effective", headers=tokens.headers("reader")).json["auth"] == {"method": "password"}


@pytest.mark.parametrize("host", ["smtp.office365.com", "SMTP-MAIL.OUTLOOK.COM"])
def test_password_auth_against_a_host_that_retired_it_is_warned(client, tokens, host):
    put(client, tokens, {**BASE, "host": host, "password": {"source": "plaintext", "value": "p"}})
    assert "basic_auth_retiring" in client.get("/v1/smtp", headers=tokens.headers("admin")).json["warnings"]
    put(client, tokens, {**BASE, "host": host, "auth": microsoft()})
    assert "basic_auth_retiring" not in client.get("/v1/smtp", headers=tokens.headers("admin")).json["warnings"]


def test_the_audit_trail_shows_auth_without_its_secret(client, tokens):
    put(client, tokens, {**BASE, "auth": microsoft()})
    events = client.get("/v1/audit", headers=tokens.headers("security")).get_data(as_text=True)
    assert "entra-secret-value" not in events
    assert '"value_set": true' in events
