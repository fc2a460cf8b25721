"""Real clients (smtplib, swaks, msmtp) over STARTTLS and implicit TLS, relayed with a password from OpenBao and
with XOAUTH2 against the loopback token endpoint; rotation; and the canary: neither the token nor the upstream
credential in a reply, a log line, the delivery log or the database bytes."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.oauth_servers import CLIENT_ID, CLIENT_SECRET, MAILBOX, TENANT
from tests.fixtures.smtp_servers import USERNAME, start_starttls_smtp_server
from tests.submission.harness import LOOPBACK, connect
from tests.submission.test_relay import legacy_message

UPSTREAM_PASSWORD = "canary-upstream-7f31c2-do-not-leak"
ROTATED_PASSWORD = "canary-rotated-2b9e44-do-not-leak"


@pytest.fixture(scope="module")
def vaulted_server(smtp_server_pool, smtp_ca) -> Any:
    """A STARTTLS server of this module's own, whose password the tests rotate."""
    return smtp_server_pool.add(start_starttls_smtp_server(smtp_ca, {USERNAME: UPSTREAM_PASSWORD}))


@pytest.fixture(scope="module")
def smtp_upstreams(vaulted_server, oauth_lab) -> list[Any]:
    return [vaulted_server, oauth_lab.xoauth2]


@pytest.fixture(scope="module")
def vault_env(openbao) -> Iterator[dict[str, str]]:
    mount = f"kv-submission-{int(time.time() * 1000) % 100000}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/smtp", {"password": UPSTREAM_PASSWORD})
    token = openbao.create_token([openbao.kv_read_policy(f"{mount}-read", mount, version=2)])
    saved = os.environ.get("SMTPCONF_TEST_VAULT_TOKEN")
    os.environ["SMTPCONF_TEST_VAULT_TOKEN"] = token
    yield {"mount": mount, "SMTPCONF_TEST_VAULT_TOKEN": token}
    if saved is None:
        os.environ.pop("SMTPCONF_TEST_VAULT_TOKEN", None)
    else:
        os.environ["SMTPCONF_TEST_VAULT_TOKEN"] = saved


@pytest.fixture(scope="module")
def tenants(lab, openbao, vault_env, vaulted_server, oauth_lab, smtp_ca_pem) -> dict[str, str]:
    """A tenant whose password comes from OpenBao, and one that authenticates with XOAUTH2."""
    from service.tokens import create_token

    security = {"Authorization": f"Bearer {create_token(lab.services.db, 'lab-security', ['security'])}"}
    connection = {
        "type": "hashicorp_vault", "url": openbao.url, "mount": vault_env["mount"], "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "SMTPCONF_TEST_VAULT_TOKEN"}},
        "allowed_secrets": ["mail/*"], "cache_ttl_seconds": 300, "max_stale_seconds": 86400, "timeout_seconds": 2,
    }
    created = lab.client.put("/v1/secret-providers/corp-vault", json=connection, headers=security)
    assert created.status_code in (200, 201), created.json
    vaulted = lab.tenant({
        "host": "localhost", "port": vaulted_server.port, "security": "starttls", "ca_certificate_pem": smtp_ca_pem,
        "from_email": "noreply@example.com", "username": USERNAME, "timeout_seconds": 5,
        "password": {"source": "hashicorp_vault", "provider": "corp-vault", "path": "mail/smtp", "key": "password"},
    })
    oauth = lab.tenant({
        "host": "localhost", "port": oauth_lab.xoauth2.port, "ca_certificate_pem": smtp_ca_pem, "from_email": MAILBOX,
        "username": MAILBOX, "timeout_seconds": 5, "auth": {
            "method": "oauth2", "flow": "microsoft", "tenant_id": TENANT, "client_id": CLIENT_ID,
            "authority_host": oauth_lab.tokens.base_url, "client_secret": {"source": "plaintext", "value": CLIENT_SECRET},
        },
    })
    return {"vault": vaulted, "oauth": oauth}


@pytest.fixture(scope="module")
def servers(lab, vault_env, oauth_lab) -> dict[str, Any]:
    env = {"SMTPCONF_TEST_VAULT_TOKEN": vault_env["SMTPCONF_TEST_VAULT_TOKEN"], "REQUESTS_CA_BUNDLE": str(oauth_lab.ca_bundle)}
    return {"starttls": lab.start(**env), "implicit": lab.start(implicit_tls=True, **env)}


TOKENS: list[str] = []
ISSUED: list[str] = []


@pytest.fixture
def upstream(request, vaulted_server, oauth_lab) -> Any:
    ISSUED.extend(oauth_lab.tokens.endpoint.issued)
    oauth_lab.tokens.endpoint.clear()
    for handler in oauth_lab.handlers():
        handler.clear()
    return {"vault": vaulted_server, "oauth": oauth_lab.xoauth2}


def sender_token(lab, tenant: str) -> str:
    token = lab.token("sender", tenants=[tenant])
    TOKENS.append(token)
    return token


def send_with_smtplib(server, lab, tenant, token, subject) -> tuple[int, bytes]:
    client = connect(server, lab.ca)
    try:
        client.login(tenant, token)
        client.mail("scanner@legacy.example")
        client.rcpt("ada@example.com")
        return client.data(legacy_message(Subject=subject).as_string())
    finally:
        client.quit()


def send_with_swaks(server, lab, tenant, token, subject) -> tuple[int, bytes]:
    tls = ["--tls-on-connect"] if server.implicit_tls else ["--tls"]
    done = subprocess.run(
        ["swaks", "--server", LOOPBACK, "--port", str(server.port), *tls, "--tls-verify", "--tls-ca-path",
         str(lab.directory / "ca.pem"), "--auth", "PLAIN", "--auth-user", tenant, "--auth-password", token,
         "--from", "scanner@legacy.example", "--to", "ada@example.com", "--header", f"Subject: {subject}",
         "--body", "Sent by swaks", "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # swaks exits 0 only after a 250 to the data; what the server said is on the lines marked <- or <~.
    server_lines = [line for line in done.stdout.splitlines() if line.lstrip().startswith(("<-", "<~"))]
    return 250, "\n".join(server_lines).encode()


def send_with_msmtp(server, lab, tenant, token, subject) -> tuple[int, bytes]:
    config = lab.directory / f"msmtprc-{subject.replace(' ', '-')}"
    config.write_text(
        f"account default\nhost {LOOPBACK}\nport {server.port}\ntls on\n"
        f"tls_starttls {'off' if server.implicit_tls else 'on'}\ntls_trust_file {lab.directory / 'ca.pem'}\n"
        f"auth plain\nuser {tenant}\npassword {token}\nfrom scanner@legacy.example\n"
    )
    config.chmod(0o600)
    message = f"From: scanner@legacy.example\nTo: ada@example.com\nSubject: {subject}\n\nSent by msmtp\n"
    done = subprocess.run(["msmtp", "-C", str(config), "ada@example.com"], input=message, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return 250, (done.stdout + done.stderr).encode()


CLIENTS = {"smtplib": send_with_smtplib, "swaks": send_with_swaks, "msmtp": send_with_msmtp}


@pytest.fixture(scope="module", autouse=True)
def ca_file(lab) -> None:
    (lab.directory / "ca.pem").write_bytes(lab.ca.cert_pem.bytes())


@pytest.mark.parametrize("credential", ["vault", "oauth"])
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
@pytest.mark.parametrize("program", list(CLIENTS))
def test_a_real_client_sends_through_the_submission_server(lab, tenants, servers, upstream, program, tls, credential):
    if program != "smtplib" and shutil.which(program) is None:
        pytest.fail(f"{program} is not installed (Debian package {program})")
    subject = f"{program} {tls} {credential}"
    tenant = tenants[credential]
    code, _ = CLIENTS[program](servers[tls], lab, tenant, sender_token(lab, tenant), subject)
    assert code == 250
    received = upstream[credential].messages
    assert [m.message["Subject"] for m in received] == [subject]
    assert received[0].mail_from == ("noreply@example.com" if credential == "vault" else MAILBOX)
    assert received[0].rcpt_tos == ["ada@example.com"]
    # The XOAUTH2 server takes nothing without a valid bearer token: delivery there proves the token path.


def test_a_rotated_password_is_used_at_the_next_message(lab, openbao, vault_env, tenants, servers, vaulted_server):
    token = sender_token(lab, tenants["vault"])
    assert send_with_smtplib(servers["starttls"], lab, tenants["vault"], token, "before")[0] == 250
    vaulted_server.handler.credentials[USERNAME] = ROTATED_PASSWORD
    openbao.write_secret(vault_env["mount"], "mail/smtp", {"password": ROTATED_PASSWORD})
    try:
        assert send_with_smtplib(servers["starttls"], lab, tenants["vault"], token, "after")[0] == 250
    finally:
        vaulted_server.handler.credentials[USERNAME] = UPSTREAM_PASSWORD
        openbao.write_secret(vault_env["mount"], "mail/smtp", {"password": UPSTREAM_PASSWORD})
    assert [m.message["Subject"] for m in vaulted_server.messages] == ["before", "after"]


def test_canary_neither_token_nor_upstream_credential_leaves_anywhere(lab, tenants, servers, upstream, oauth_lab):
    replies: list[bytes] = []
    for tls in ("starttls", "implicit"):
        for credential in ("vault", "oauth"):
            token = sender_token(lab, tenants[credential])
            replies.append(send_with_smtplib(servers[tls], lab, tenants[credential], token, "canary")[1])
            client = connect(servers[tls], lab.ca)
            try:
                with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                    client.login("another-tenant", token)
                replies.append(refused.value.smtp_error)
            finally:
                client.quit()
    issued = ISSUED + oauth_lab.tokens.endpoint.issued
    assert issued, "no access token was issued: the XOAUTH2 path did not run"
    secrets = [UPSTREAM_PASSWORD, ROTATED_PASSWORD, CLIENT_SECRET, *TOKENS, *issued]
    # The database files, and what sits beside them (the generation board, access tokens sealed for the workers).
    database = b"".join(p.read_bytes() for p in Path(lab.directory).rglob("smtpconf.db*") if p.is_file())
    database += b"".join(p.read_bytes() for d in Path(lab.directory).glob("smtpconf.db*") if d.is_dir()
                         for p in d.rglob("*") if p.is_file())
    delivery_log = repr([lab.services.sending.deliveries.page(tenant=t, before=None, limit=500) for t in tenants.values()])
    assert "'channel': 'smtp'" in delivery_log
    logs = lab.logs()
    for secret in secrets:
        raw = secret.encode()
        assert not any(raw in reply for reply in replies), secret
        assert raw not in logs, secret
        assert raw not in database, secret
        assert secret not in delivery_log, secret
    assert b"submission" in logs  # the processes did log their messages
