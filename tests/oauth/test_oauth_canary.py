"""Canary OAuth2 secrets (a client secret, a certificate key, a service-account key) and the access tokens issued with them surface nowhere but the one response meant to carry a token."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from tests.api.test_secret_canary import _database_text
from tests.conftest import Tokens
from tests.fixtures.oauth_servers import CERT_CLIENT_ID, CLIENT_ID, MAILBOX, TENANT, OAuthLab
from service.smtp_check.auth import xoauth2_encode

CANARY_SECRET = "canary-entra-5d0c7a-never-leak"


def _key_lines(pem: str) -> list[bytes]:
    """The base64 lines of a PEM's private key: any of them in the open means the key leaked."""
    body = pem.split("-----BEGIN PRIVATE KEY-----")[1].split("-----END PRIVATE KEY-----")[0]
    return [line.encode() for line in body.split() if len(line) >= 40]


def test_oauth_secrets_and_tokens_never_leak(make_app, oauth: OAuthLab, smtp_ca_pem, database_url, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    endpoint = oauth.tokens.endpoint
    real_secret = endpoint.client_secrets[CLIENT_ID]
    endpoint.client_secrets[CLIENT_ID] = CANARY_SECRET
    try:
        app = make_app(smtp_allowed_ports=str(oauth.xoauth2.port), rate_limit_per_minute=1000)
        client, tokens = app.test_client(), Tokens(app)
        admin, reader, sender, security = (tokens.headers(r) for r in ("admin", "reader", "secret-reader", "security"))
        key_json = json.dumps(oauth.service_account_key)
        common = {"host": "localhost", "port": oauth.xoauth2.port, "ca_certificate_pem": smtp_ca_pem, "from_email": MAILBOX, "username": MAILBOX}
        authority = oauth.tokens.base_url
        system = {**common, "auth": {"method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CLIENT_ID,
                                     "authority_host": authority, "client_secret": {"source": "plaintext", "value": CANARY_SECRET}}}
        google = {"auth": {"method": "oauth2", "flow": "google", "service_account_key": {"source": "plaintext", "value": key_json}}}
        certificate = {"auth": {"method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CERT_CLIENT_ID,
                                "authority_host": authority, "client_certificate": {"source": "plaintext", "value": oauth.certificate_pem}}}
        wrong = {**system, "auth": {**system["auth"], "client_secret": {"source": "plaintext", "value": CANARY_SECRET + "-x"}}}
        shown: list[Any] = [
            client.put("/v1/smtp", json=system, headers=admin),
            client.put("/v1/tenants/g/smtp", json=google, headers=admin),
            client.put("/v1/tenants/c/smtp", json=certificate, headers=admin),
            client.put("/v1/smtp", json={**system, "auth": {**system["auth"], "tenant_id": ""}}, headers=admin),
            client.get("/v1/smtp", headers=admin),
            client.get("/v1/tenants/g/smtp", headers=reader),
            client.get("/v1/tenants/c/smtp/effective", headers=reader),
            client.post("/v1/smtp/validate", headers=admin),
            client.post("/v1/tenants/g/smtp/validate", headers=admin),
            client.post("/v1/tenants/c/smtp/test-connection", json={"to": "ops@example.com"}, headers=admin),
            client.post("/v1/smtp/validate", json={"settings": wrong}, headers=admin),
            client.get("/v1/audit", headers=security),
            client.get("/metrics"),
        ]
        authorised = [client.get(f"{path}/effective?include_password=true", headers=sender) for path in ("/v1/smtp", "/v1/tenants/g/smtp", "/v1/tenants/c/smtp")]
    finally:
        endpoint.client_secrets[CLIENT_ID] = real_secret

    assert all(r.status_code in (200, 422) for r in shown), [(r.status_code, r.json) for r in shown]
    assert [r.json["ok"] for r in shown[7:10]] == [True, True, True], [r.json for r in shown[7:10]]
    issued = list(endpoint.issued)
    assert len(issued) == 3
    secrets = [CANARY_SECRET.encode(), base64.b64encode(CANARY_SECRET.encode())]
    secrets += _key_lines(oauth.service_account_key["private_key"]) + _key_lines(oauth.certificate_pem)
    token_needles = [t.encode() for t in issued] + [xoauth2_encode(MAILBOX, t).encode() for t in issued]

    for response in authorised:
        body = response.get_data()
        assert response.json["access_token"] in issued and response.headers["Cache-Control"] == "no-store"
        assert not [s for s in secrets if s in body]
    everywhere = b"\n".join(r.get_data() for r in shown)
    everywhere += "\n".join(record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records).encode()
    out, err = capfd.readouterr()
    everywhere += (out + err).encode()
    everywhere += _database_text(app, database_url)
    leaks = [needle[:24] for needle in secrets + token_needles if needle in everywhere]
    assert leaks == []
