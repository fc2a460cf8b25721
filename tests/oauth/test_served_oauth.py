"""OAuth2 through ``smtpconf serve``: the worker processes trust a private CA through REQUESTS_CA_BUNDLE, as an operator would set it."""

from __future__ import annotations

import requests

from tests.conftest import MASTER_KEY
from tests.fixtures.oauth_servers import CLIENT_ID, CLIENT_SECRET, MAILBOX, TENANT, OAuthLab
from tests.fixtures.server import RunningService, service_env


def test_served_workers_get_tokens_from_a_private_ca_endpoint(tmp_path, oauth: OAuthLab, smtp_ca_pem):
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY,
        SMTPCONF_SMTP_ALLOWED_PORTS=str(oauth.xoauth2.port), REQUESTS_CA_BUNDLE=str(oauth.ca_bundle),
    )
    settings = {
        "host": "localhost", "port": oauth.xoauth2.port, "ca_certificate_pem": smtp_ca_pem, "from_email": MAILBOX,
        "username": MAILBOX, "auth": {
            "method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CLIENT_ID,
            "authority_host": oauth.tokens.base_url, "client_secret": {"source": "plaintext", "value": CLIENT_SECRET},
        },
    }
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('ops-admin', 'admin')}"}
        sender = {"Authorization": f"Bearer {server.token('mailer', 'secret-reader')}"}
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200

        sent = requests.post(server.url + "/v1/smtp/test-connection", json={}, headers=admin, timeout=20).json()
        effective = requests.get(server.url + "/v1/smtp/effective?include_password=true", headers=sender, timeout=20).json()

    assert sent["ok"] is True, sent
    assert sent["token"]["flow"] == "microsoft"
    assert effective["access_token"] in oauth.tokens.endpoint.issued
    assert effective["sasl_mechanism"] == "XOAUTH2" and effective["password"] is None
    assert len(oauth.xoauth2.messages) == 1
    log = (tmp_path / "server.log").read_bytes()
    assert CLIENT_SECRET.encode() not in log
    assert not any(token.encode() in log for token in oauth.tokens.endpoint.issued)
