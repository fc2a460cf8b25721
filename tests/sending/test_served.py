"""Sending through ``smtpconf serve`` with two workers: one key sends once, metrics add up, the credential never leaks."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.smtp_check.auth import auth_plain_encode
from tests.conftest import MASTER_KEY
from tests.fixtures.server import RunningService, service_env
from tests.fixtures.smtp_servers import REFUSED_RECIPIENT, USERNAME, start_starttls_smtp_server
from tests.sending.conftest import MESSAGE, settings_for

CANARY = "canary-send-7e41b9-do-not-leak"


def _serve(tmp_path, *servers, **env):
    ports = ",".join(str(s.port) for s in servers)
    return RunningService(
        service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, SMTPCONF_SMTP_ALLOWED_PORTS=ports, **env),
        workers=2, log_path=tmp_path / "server.log",
    )


def _bearer(server, name, *roles, tenants=()):
    args = ["token", "create", "--name", name]
    for role in roles:
        args += ["--role", role]
    for tenant in tenants:
        args += ["--tenant", tenant]
    return {"Authorization": f"Bearer {server.cli(*args).strip().splitlines()[-1]}"}


def test_twenty_concurrent_requests_with_one_key_send_one_mail(tmp_path, slow_smtp_server):
    with _serve(tmp_path, slow_smtp_server) as server:
        admin = _bearer(server, "ops", "admin")
        assert requests.put(server.url + "/v1/smtp", json=settings_for(slow_smtp_server), headers=admin, timeout=10).status_code == 200
        headers = {**_bearer(server, "mailer", "sender"), "Idempotency-Key": "invoice-2026-0042"}

        def post(_: int) -> requests.Response:
            return requests.post(server.url + "/v1/messages", json=MESSAGE, headers=headers, timeout=30)

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(post, range(20)))
        after = post(0)

    assert len(slow_smtp_server.messages) == 1
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 409}, codes
    assert 409 in codes  # some arrived while the first was being sent
    assert all(a.json()["code"] == "idempotency_in_progress" for a in answers if a.status_code == 409)
    ids = {a.json()["id"] for a in answers if a.status_code == 200} | {after.json()["id"]}
    assert after.status_code == 200 and len(ids) == 1


def test_metrics_count_messages_by_channel_and_outcome_across_workers(tmp_path, recipient_refusing_smtp_server):
    with _serve(tmp_path, recipient_refusing_smtp_server) as server:
        admin = _bearer(server, "ops", "admin")
        settings = settings_for(recipient_refusing_smtp_server)
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
        sender = _bearer(server, "mailer", "sender")
        with requests.Session() as session:
            for _ in range(6):
                assert session.post(server.url + "/v1/messages", json=MESSAGE, headers=sender, timeout=10).status_code == 200
            for _ in range(2):
                refused = {**MESSAGE, "to": [REFUSED_RECIPIENT]}
                assert session.post(server.url + "/v1/messages", json=refused, headers=sender, timeout=10).status_code == 502
        text = requests.get(server.url + "/metrics", timeout=10).text

    def count(outcome: str) -> float:
        pattern = rf'^smtpconf_messages_total\{{channel="http",outcome="{outcome}"\}} (\S+)$'
        return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))

    assert count("sent") == 6 and count("rejected") == 2


def test_token_create_restricts_to_tenants_and_prints_the_token_last(tmp_path, plain_smtp_server):
    with _serve(tmp_path, plain_smtp_server) as server:
        out = server.cli("token", "create", "--name", "acme-mailer", "--role", "sender", "--tenant", "acme", "--tenant", "beta")
        token = out.strip().splitlines()[-1]
        assert re.fullmatch(r"smtpconf_[A-Za-z0-9_-]{40,}", token)
        whoami = requests.get(server.url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert whoami == {"name": "acme-mailer", "roles": ["sender"], "tenants": ["acme", "beta"]}


@pytest.fixture
def canary_server(smtp_server_pool, smtp_ca):
    return smtp_server_pool.add(start_starttls_smtp_server(smtp_ca, {USERNAME: CANARY}))


def test_canary_the_credential_never_appears_in_a_response_a_log_line_the_delivery_log_or_the_database(
    tmp_path, canary_server, smtp_ca_pem
):
    forms = [CANARY, base64.b64encode(CANARY.encode()).decode(), auth_plain_encode(USERNAME, CANARY)]
    bodies: list[bytes] = []
    with _serve(tmp_path, canary_server) as server:
        admin = _bearer(server, "ops", "admin")
        security = _bearer(server, "sec", "security")
        sender = _bearer(server, "mailer", "sender")
        stored = requests.put(server.url + "/v1/secrets/smtp/canary", json={"value": CANARY}, headers=security, timeout=10)
        assert stored.status_code in (200, 201)
        reference = {"source": "internal", "secret": "smtp/canary"}
        settings = settings_for(canary_server, smtp_ca_pem, password=reference)
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
        with requests.Session() as session:
            calls = [
                ("post", "/v1/messages", MESSAGE, sender, 200),
                ("post", "/v1/messages", {**MESSAGE, "notification": "password_recovery"}, sender, 200),
                ("post", "/v1/messages", {**MESSAGE, "to": ["no-such-domain@invalid.invalid"]}, sender, 200),
                ("post", "/v1/messages", {**MESSAGE, "headers": {"From": "x@example.com"}}, sender, 422),
                ("get", "/v1/messages", None, admin, 200),
                ("get", "/v1/messages/1", None, security, 200),
            ]
            for method, path, body, headers, status in calls:
                response = session.request(method, server.url + path, json=body, headers=headers, timeout=10)
                assert response.status_code == status, (path, response.status_code, response.text)
                bodies.append(response.content)
            # A wrong password makes the server refuse the next new session; its reply is reported, never the value.
            canary_server.handler.credentials[USERNAME] = "changed-elsewhere"
            requests.post(server.url + "/v1/secret-cache/invalidate", json={}, headers=security, timeout=10)
            requests.put(server.url + "/v1/secrets/smtp/canary", json={"value": CANARY + "-2"}, headers=security, timeout=10)
            refused = session.post(server.url + "/v1/messages", json=MESSAGE, headers=sender, timeout=10)
            assert refused.status_code == 502 and refused.json()["smtp_code"] == 535
            bodies.append(refused.content)
            bodies.append(session.get(server.url + "/v1/messages?limit=500", headers=admin, timeout=10).content)
            bodies.append(session.get(server.url + "/metrics", timeout=10).content)
    log = (tmp_path / "server.log").read_bytes()
    database = b"".join(path.read_bytes() for path in tmp_path.glob("smtpconf.db*") if path.is_file())
    assert len(canary_server.messages) == 3
    for form in forms:
        needle = form.encode()
        assert needle not in log, form
        assert needle not in database, form
        for body in bodies:
            assert needle not in body, form
