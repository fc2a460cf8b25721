"""One canary password through every source and every endpoint: it surfaces only where it is meant to."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.conftest import MASTER_KEY
from tests.faults import audit_events
from tests.fixtures.server import RunningService, service_env
from tests.fixtures.smtp_servers import USERNAME, RecordingHandler, SmtpServer, start_smtp_server

# Letters, digits and '-' only: no encoding on the way (JSON, URL, repr) can disguise it from a byte search.
CANARY = f"canary-{uuid.uuid4().hex}"
NEEDLES = [
    CANARY.encode(),
    base64.b64encode(CANARY.encode()),  # AUTH LOGIN
    base64.b64encode(f"\0{USERNAME}\0{CANARY}".encode()),  # AUTH PLAIN
]
ROLES = ("admin", "reader", "secret-reader", "security", "sender")
VAULT = "canary-vault"


class PasswordRecordingHandler(RecordingHandler):
    """Refuses every login, noting which mechanism carried which password."""

    def __init__(self) -> None:
        super().__init__(credentials={USERNAME: "the-real-password"})
        self.presented: list[tuple[str, str]] = []

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        self.presented.append((mechanism, auth_data.password.decode("utf-8", "replace")))
        return super().authenticate(server, session, envelope, mechanism, auth_data)


def _smtp_server(ca: Any, **options: Any) -> SmtpServer:
    handler = PasswordRecordingHandler()
    return start_smtp_server(
        handler, ca=ca, require_starttls=True, auth_required=True, authenticator=handler.authenticate, **options
    )


def _leaks(data: bytes) -> list[bytes]:
    return [needle for needle in NEEDLES if needle in data]


def _database_bytes(path: Path) -> bytes:
    """The SQLite database with its write-ahead log and shared-memory index."""
    return b"".join(f.read_bytes() for p in sorted(path.parent.glob(path.name + "*")) for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file())


class Session:
    """Sends each request once per role (and once without a token) and keeps every exchange."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self.callers: dict[str, dict[str, str]] = {"anonymous": {}}
        self.callers.update({role: {"Authorization": f"Bearer {token}"} for role, token in tokens.items()})
        self.exchanges: list[tuple[str, str, str, requests.Response]] = []

    def as_role(self, role: str, method: str, path: str, body: Any = None, raw: str | None = None) -> requests.Response:
        headers = dict(self.callers[role])
        if raw is not None:
            headers["Content-Type"] = "application/json"
        response = requests.request(
            method, self.url + path, json=body if raw is None else None, data=raw, headers=headers, timeout=30
        )
        self.exchanges.append((role, method, path, response))
        return response

    def every_role(self, method: str, path: str, body: Any = None, raw: str | None = None) -> dict[str, requests.Response]:
        return {role: self.as_role(role, method, path, body, raw) for role in self.callers}


def test_canary_password_appears_only_in_the_authorised_response(openbao, smtp_ca, smtp_ca_pem, tmp_path):
    mount = f"kv-canary-{time.time_ns() % 10**9}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/canary", {"password": CANARY})
    policy = openbao.kv_read_policy(f"{mount}-read", mount, version=2)
    plain_and_login = _smtp_server(smtp_ca)
    login_only = _smtp_server(smtp_ca, auth_exclude_mechanism=["PLAIN"])
    database = tmp_path / "smtpconf.db"
    log = tmp_path / "server.log"
    env = service_env(
        f"sqlite:///{database}", MASTER_KEY,
        CANARY_VAULT_TOKEN=openbao.create_token([policy]),
        SMTPCONF_SMTP_ALLOWED_PORTS=f"{plain_and_login.port},{login_only.port}",
        SMTPCONF_RATE_LIMIT_PER_MINUTE="1000",
        SMTPCONF_LOG_LEVEL="DEBUG",
    )
    try:
        with RunningService(env, workers=2, log_path=log) as server:
            api = Session(server.url, {role: server.token(f"canary-{role}", role) for role in ROLES})
            _drive_every_endpoint(api, openbao, mount, plain_and_login, login_only, smtp_ca_pem)
            events = audit_events(server.url, api.callers["security"])
            database_while_running = _database_bytes(database)
    finally:
        plain_and_login.stop()
        login_only.stop()

    authorised = [
        response for role, _, path, response in api.exchanges
        if role == "secret-reader" and "include_password=true" in path
    ]
    assert len(authorised) == 4
    assert all(response.status_code == 200 and response.json()["password"] == CANARY for response in authorised)

    for role, method, path, response in api.exchanges:
        where = f"{method} {path} as {role} ({response.status_code})"
        sending = path.endswith("/messages") and method == "POST"
        assert response.status_code < 500 or (sending and response.status_code in (502, 503)), where
        assert not _leaks(json.dumps(dict(response.headers)).encode()), where
        if not any(response is allowed for allowed in authorised):
            assert not _leaks(response.content), where

    sent = [
        response for role, method, path, response in api.exchanges
        if role == "sender" and method == "POST" and path.endswith("/messages")
    ]
    assert sent and all(r.status_code == 502 and r.json()["smtp_code"] == 535 for r in sent if r.status_code != 422)

    # The canary really went out in AUTH PLAIN and AUTH LOGIN, and every transcript masked it.
    presented = plain_and_login.handler.presented + login_only.handler.presented
    assert {("PLAIN", CANARY), ("LOGIN", CANARY)} <= set(presented)
    checks = [
        response.json() for role, method, path, response in api.exchanges
        if role == "admin" and path.endswith(("/validate", "/test-connection"))
    ]
    assert checks and all(check["error"]["code"] == "auth_failed" for check in checks)
    transcripts = "\n".join(line for check in checks for line in check["transcript"])
    assert "C: AUTH PLAIN ********" in transcripts and "C: AUTH LOGIN" in transcripts
    assert not _leaks(transcripts.encode())

    trail = json.dumps(events).encode()
    actions = {event["action"] for event in events}
    assert {"smtp_settings.put", "smtp_settings.delete", "secret.create", "secret_provider.put"} <= actions
    assert not _leaks(trail)

    assert b"smtp_settings" in database_while_running
    assert not _leaks(database_while_running)
    assert not _leaks(_database_bytes(database))

    output = log.read_bytes()
    assert b'"message": "request"' in output
    assert b"C: AUTH PLAIN ********" in output and b"C: AUTH LOGIN" in output, "the transcript is logged at DEBUG"
    assert not _leaks(output)
    statuses = sorted({response.status_code for *_, response in api.exchanges})
    print(f"\n{len(api.exchanges)} exchanges, {len(checks)} SMTP checks, {len(events)} audit events scanned; statuses {statuses}")


def _drive_every_endpoint(
    api: Session, openbao: Any, mount: str, plain_and_login: SmtpServer, login_only: SmtpServer, ca_pem: str
) -> None:
    """Every path and method of the contract, each with every role's token and with none."""
    connection = {
        "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "CANARY_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
        "cache_ttl_seconds": 300, "max_stale_seconds": 3600, "timeout_seconds": 5,
    }
    system = {
        "host": "localhost", "port": plain_and_login.port, "security": "starttls", "ca_certificate_pem": ca_pem,
        "from_email": "noreply@example.com", "username": USERNAME, "timeout_seconds": 5,
        "password": {"source": "plaintext", "value": CANARY},
    }
    tenants = {
        "plain-t": {"from_name": "Plain", "password": {"source": "plaintext", "value": CANARY}},
        "internal-t": {"password": {"source": "internal", "secret": "smtp/canary"}},
        "vault-t": {
            "port": login_only.port,
            "password": {"source": "hashicorp_vault", "provider": VAULT, "path": "mail/canary", "key": "password"},
        },
    }
    assert api.as_role("security", "PUT", f"/v1/secret-providers/{VAULT}", connection).status_code == 201
    assert api.as_role("security", "PUT", "/v1/secrets/smtp/canary", {"value": CANARY}).status_code == 201
    assert api.as_role("admin", "PUT", "/v1/smtp", system).status_code == 200
    for tenant, override in tenants.items():
        assert api.as_role("admin", "PUT", f"/v1/tenants/{tenant}/smtp", override).status_code == 200

    for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml", "/v1/notification-types", "/v1/secret-provider-types"):
        api.every_role("GET", path)

    api.every_role("GET", "/v1/smtp")
    api.every_role("PUT", "/v1/smtp", {**system, "port": 0})
    api.every_role("PUT", "/v1/smtp", {**system, "password": {"source": "plaintext", "value": CANARY, "version": CANARY}})
    api.every_role("PUT", "/v1/smtp", {**system, "password": {"source": "plaintext", "value": CANARY * 400}})
    api.every_role("PUT", "/v1/smtp", {**system, "host": "other.example", "password": {"source": "plaintext", "value_set": True}})
    api.every_role("PUT", "/v1/smtp", raw=json.dumps(system)[:-10])
    api.every_role("PUT", "/v1/smtp?validate=true", system)
    api.every_role("PUT", "/v1/smtp", system)
    for tenant, override in tenants.items():
        api.every_role("GET", f"/v1/tenants/{tenant}/smtp")
        api.every_role("PUT", f"/v1/tenants/{tenant}/smtp", override)
    api.every_role("PUT", "/v1/tenants/gone-t/smtp", tenants["plain-t"])
    api.every_role("DELETE", "/v1/tenants/gone-t/smtp")

    for prefix in ("/v1/smtp", *(f"/v1/tenants/{tenant}/smtp" for tenant in tenants)):
        api.every_role("GET", f"{prefix}/effective")
        api.every_role("GET", f"{prefix}/effective?include_password=true")
        api.every_role("POST", f"{prefix}/validate")
        api.every_role("POST", f"{prefix}/test-connection", {"to": "ops@example.com", "include_cc_bcc": True})
    api.every_role("POST", "/v1/smtp/validate", {"settings": system})
    api.every_role("POST", "/v1/smtp/test-connection", {"settings": {**system, "port": login_only.port}})
    api.every_role("POST", "/v1/tenants/plain-t/smtp/validate", {"settings": tenants["plain-t"]})
    # Sending: every login is refused, so each answer carries the server's refusal, never the password.
    message = {"to": ["ops@example.com"], "subject": CANARY, "text": CANARY, "notification": "password_recovery"}
    for path in ("/v1/messages", *(f"/v1/tenants/{tenant}/messages" for tenant in tenants)):
        api.every_role("POST", path, message)
    api.every_role("POST", "/v1/messages", {**message, "headers": {"X-Canary": CANARY, "From": CANARY}})
    api.every_role("GET", "/v1/messages?limit=500")
    api.every_role("GET", "/v1/messages/1")

    api.every_role("GET", "/v1/secret-providers")
    api.every_role("GET", f"/v1/secret-providers/{VAULT}")
    api.every_role("POST", f"/v1/secret-providers/{VAULT}/check")
    api.every_role("PUT", "/v1/secret-providers/scratch-vault", connection)
    api.every_role("DELETE", "/v1/secret-providers/scratch-vault")
    api.every_role("DELETE", f"/v1/secret-providers/{VAULT}")
    api.every_role("POST", "/v1/secret-cache/invalidate", {"provider": VAULT, "secret": "mail/canary"})
    api.every_role("POST", "/v1/secret-cache/invalidate")

    api.every_role("GET", "/v1/secrets")
    api.every_role("GET", "/v1/secrets/smtp/canary")
    api.every_role("PUT", "/v1/secrets/smtp/canary", {"value": CANARY})
    api.every_role("PUT", "/v1/secrets/smtp/scratch", {"value": CANARY, "note": CANARY})
    api.every_role("PUT", "/v1/secrets/smtp/scratch", {"value": CANARY})
    api.every_role("DELETE", "/v1/secrets/smtp/scratch")
    api.every_role("DELETE", "/v1/secrets/smtp/canary")

    api.every_role("GET", "/v1/audit?limit=500")
    api.every_role("GET", "/v1/no-such-route")
    api.every_role("DELETE", "/v1/smtp")
