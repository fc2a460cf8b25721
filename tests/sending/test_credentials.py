"""The credential a send uses: a password from a real OpenBao, an XOAUTH2 token from the loopback endpoints, rotations and outages."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.fixtures.oauth_servers import CLIENT_ID, CLIENT_SECRET, MAILBOX, TENANT
from tests.fixtures.smtp_servers import USERNAME, start_starttls_smtp_server
from tests.sending.conftest import MESSAGE, settings_for

_names = itertools.count()


@pytest.fixture
def vault(openbao, monkeypatch):
    """A fresh KV v2 mount with a read-only token, exposed to the service through an env reference."""
    mount = f"kv-send-{next(_names)}-{int(time.time() * 1000) % 100000}"
    openbao.enable_kv(mount, version=2)
    policy = openbao.kv_read_policy(f"{mount}-read", mount, version=2)
    monkeypatch.setenv("SMTPCONF_TEST_VAULT_TOKEN", openbao.create_token([policy]))
    return mount


@pytest.fixture
def rotating_server(smtp_server_pool, smtp_ca):
    """A STARTTLS server of its own, whose password a test may change."""
    return smtp_server_pool.add(start_starttls_smtp_server(smtp_ca, {USERNAME: "vault-password-1"}))


def _vault_lab(sending, openbao, vault, server, ca_pem, *, max_stale=86400, path="mail/smtp"):
    app, client, tokens = sending(server)
    connection = {
        "type": "hashicorp_vault", "url": openbao.url, "mount": vault, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "SMTPCONF_TEST_VAULT_TOKEN"}},
        "allowed_secrets": ["mail/*"], "cache_ttl_seconds": 300, "max_stale_seconds": max_stale, "timeout_seconds": 2,
    }
    assert client.put("/v1/secret-providers/corp-vault", json=connection, headers=tokens.headers("security")).status_code in (200, 201)
    reference = {"source": "hashicorp_vault", "provider": "corp-vault", "path": path, "key": "password"}
    settings = settings_for(server, ca_pem, password=reference)
    assert client.put("/v1/smtp", json=settings, headers=tokens.headers("admin")).status_code == 200
    return app, client, tokens


def _send(client, tokens):
    return client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender"))


def _invalidate(client, tokens):
    body = {"provider": "corp-vault", "secret": "mail/smtp"}
    assert client.post("/v1/secret-cache/invalidate", json=body, headers=tokens.headers("security")).status_code == 200


def test_a_password_from_openbao_sends_and_the_rotation_is_used_at_the_next_message(
    sending, openbao, vault, rotating_server, smtp_ca_pem
):
    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-1"})
    app, client, tokens = _vault_lab(sending, openbao, vault, rotating_server, smtp_ca_pem)
    assert _send(client, tokens).status_code == 200

    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-2"})
    rotating_server.handler.credentials[USERNAME] = "vault-password-2"
    _invalidate(client, tokens)  # what a rotation event or the security role does
    response = _send(client, tokens)

    assert response.status_code == 200, response.json
    assert len(rotating_server.messages) == 2
    # The new credential opened a new session and the one authenticated with the old one was closed.
    assert rotating_server.commands.count("AUTH") == 2 and rotating_server.commands.count("QUIT") == 1


def test_a_password_rotated_without_notice_is_fetched_afresh_after_the_server_refuses_it(
    sending, openbao, vault, rotating_server, smtp_ca_pem
):
    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-1"})
    app, client, tokens = _vault_lab(sending, openbao, vault, rotating_server, smtp_ca_pem)
    assert _send(client, tokens).status_code == 200
    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-2"})
    rotating_server.handler.credentials[USERNAME] = "vault-password-2"
    app.extensions["smtpconf"].sending.pool.close()  # the server dropped the idle session meanwhile

    response = _send(client, tokens)

    assert response.status_code == 200, response.json
    assert len(rotating_server.messages) == 2
    assert rotating_server.commands.count("AUTH") == 3  # the first session, the cached password, the fresh one
    assert openbao.kv_reads(vault, "mail/smtp") == 2


def test_with_the_manager_down_a_stale_password_still_sends(sending, openbao, vault, rotating_server, smtp_ca_pem):
    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-1"})
    app, client, tokens = _vault_lab(sending, openbao, vault, rotating_server, smtp_ca_pem)
    assert _send(client, tokens).status_code == 200
    with openbao.outage():
        _invalidate(client, tokens)
        response = _send(client, tokens)
    assert response.status_code == 200, response.json
    rows = client.get("/v1/messages", headers=tokens.headers("admin")).json["items"]
    assert [row["outcome"] for row in rows] == ["sent", "sent"]


def test_with_the_manager_down_and_nothing_stale_allowed_the_answer_is_503_password_unavailable(
    sending, openbao, vault, rotating_server, smtp_ca_pem
):
    openbao.write_secret(vault, "mail/smtp", {"password": "vault-password-1"})
    app, client, tokens = _vault_lab(sending, openbao, vault, rotating_server, smtp_ca_pem, max_stale=0)
    assert _send(client, tokens).status_code == 200
    with openbao.outage():
        _invalidate(client, tokens)
        started = time.monotonic()
        response = _send(client, tokens)
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.json["code"] == "password_unavailable"
    assert "Retry-After" in response.headers and elapsed < 5
    assert len(rotating_server.messages) == 1
    row = client.get("/v1/messages?limit=1", headers=tokens.headers("admin")).json["items"][0]
    assert (row["outcome"], row["error_code"], row["smtp"]["code"]) == ("credential_unavailable", "password_unavailable", None)


def test_a_password_that_cannot_be_had_is_503_and_no_session_is_opened(sending, openbao, vault, rotating_server, smtp_ca_pem):
    app, client, tokens = _vault_lab(sending, openbao, vault, rotating_server, smtp_ca_pem, path="mail/missing")
    response = _send(client, tokens)
    assert response.status_code == 503 and response.json["code"] == "password_unavailable"
    assert rotating_server.commands == []
    assert client.get("/v1/messages/1", headers=tokens.headers("admin")).json["outcome"] == "credential_unavailable"


def _oauth_settings(oauth, ca_pem, secret=CLIENT_SECRET):
    return {
        "host": "localhost", "port": oauth.xoauth2.port, "ca_certificate_pem": ca_pem, "from_email": MAILBOX,
        "username": MAILBOX, "timeout_seconds": 5, "auth": {
            "method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CLIENT_ID,
            "authority_host": oauth.tokens.base_url, "client_secret": {"source": "plaintext", "value": secret},
        },
    }


def test_an_xoauth2_token_sends_and_a_refused_token_is_replaced_once(sending, oauth, smtp_ca_pem):
    app, client, tokens = sending(oauth.xoauth2)
    assert client.put("/v1/smtp", json=_oauth_settings(oauth, smtp_ca_pem), headers=tokens.headers("admin")).status_code == 200
    first = _send(client, tokens)
    assert first.status_code == 200, first.json
    checks = oauth.xoauth2.handler.bearer_checks
    assert [(c.mechanism, c.user, c.ok) for c in checks] == [("XOAUTH2", MAILBOX, True)]
    assert len(oauth.xoauth2.messages) == 1 and oauth.xoauth2.messages[0].mail_from == MAILBOX

    oauth.xoauth2.handler.revoked.update(oauth.tokens.endpoint.issued)
    app.extensions["smtpconf"].sending.pool.close()
    second = _send(client, tokens)
    assert second.status_code == 200, second.json
    assert [c.ok for c in checks] == [True, False, True]
    assert len(oauth.tokens.endpoint.issued) == 2
    for token in oauth.tokens.endpoint.issued:
        assert token not in first.get_data(as_text=True) + second.get_data(as_text=True)


def test_a_token_that_cannot_be_had_is_503_token_unavailable(sending, oauth, smtp_ca_pem):
    app, client, tokens = sending(oauth.xoauth2)
    settings = _oauth_settings(oauth, smtp_ca_pem, secret="wrong-client-secret")
    assert client.put("/v1/smtp", json=settings, headers=tokens.headers("admin")).status_code == 200
    response = _send(client, tokens)
    assert response.status_code == 503 and response.json["code"] == "token_unavailable"
    assert response.json["oauth_error"] == "invalid_client"
    assert oauth.xoauth2.handler.commands == []
    assert client.get("/v1/messages/1", headers=tokens.headers("admin")).json["outcome"] == "credential_unavailable"
