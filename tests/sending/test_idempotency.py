"""Idempotency-Key: stored before sending, so a retry never mails twice."""

from __future__ import annotations

from tests.fixtures.smtp_servers import REFUSED_RECIPIENT
from tests.sending.conftest import MESSAGE, settings_for


def _lab(sending, server):
    app, client, tokens = sending(server)
    assert client.put("/v1/smtp", json=settings_for(server), headers=tokens.headers("admin")).status_code == 200
    return app, client, tokens


def test_the_same_key_twice_sends_one_mail_and_answers_the_same(sending, plain_smtp_server):
    app, client, tokens = _lab(sending, plain_smtp_server)
    headers = tokens.headers("sender", **{"Idempotency-Key": "order-42-reset"})
    first = client.post("/v1/messages", json=MESSAGE, headers=headers)
    second = client.post("/v1/messages", json=MESSAGE, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json == second.json
    assert len(plain_smtp_server.messages) == 1
    assert len(client.get("/v1/messages", headers=tokens.headers("admin")).json["items"]) == 1


def test_the_same_key_with_another_body_is_422_and_sends_nothing(sending, plain_smtp_server):
    app, client, tokens = _lab(sending, plain_smtp_server)
    headers = tokens.headers("sender", **{"Idempotency-Key": "k1"})
    assert client.post("/v1/messages", json=MESSAGE, headers=headers).status_code == 200
    other = client.post("/v1/messages", json={**MESSAGE, "subject": "Another"}, headers=headers)
    assert other.status_code == 422 and other.json["code"] == "idempotency_key_reused"
    assert len(plain_smtp_server.messages) == 1


def test_keys_belong_to_their_token_and_their_level(sending, plain_smtp_server):
    app, client, tokens = _lab(sending, plain_smtp_server)
    key = {"Idempotency-Key": "shared"}
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender", **key)).status_code == 200
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender", "reader", **key)).status_code == 200
    reused = client.post("/v1/tenants/acme/messages", json=MESSAGE, headers=tokens.headers("sender", **key))
    assert reused.status_code == 422 and reused.json["code"] == "idempotency_key_reused"
    assert len(plain_smtp_server.messages) == 2


def test_a_permanent_refusal_is_answered_again_without_asking_the_server(sending, recipient_refusing_smtp_server):
    app, client, tokens = _lab(sending, recipient_refusing_smtp_server)
    headers = tokens.headers("sender", **{"Idempotency-Key": "refused-once"})
    payload = {**MESSAGE, "to": [REFUSED_RECIPIENT]}
    first = client.post("/v1/messages", json=payload, headers=headers)
    recipient_refusing_smtp_server.handler.clear()
    second = client.post("/v1/messages", json=payload, headers=headers)
    assert first.status_code == second.status_code == 502
    assert first.json == second.json
    assert recipient_refusing_smtp_server.commands == []


def test_a_send_that_never_reached_the_server_frees_its_key_for_the_retry(sending, closed_port, plain_smtp_server):
    class Closed:
        port = closed_port

    app, client, tokens = sending(Closed, plain_smtp_server)
    assert client.put("/v1/smtp", json=settings_for(Closed), headers=tokens.headers("admin")).status_code == 200
    headers = tokens.headers("sender", **{"Idempotency-Key": "retry-me"})
    assert client.post("/v1/messages", json=MESSAGE, headers=headers).status_code == 503
    assert client.put("/v1/smtp", json=settings_for(plain_smtp_server), headers=tokens.headers("admin")).status_code == 200
    retried = client.post("/v1/messages", json=MESSAGE, headers=headers)
    assert retried.status_code == 200, retried.json
    assert len(plain_smtp_server.messages) == 1


def test_a_refused_login_frees_the_key_so_the_retry_sends_once_the_password_is_fixed(
    sending, smtp_server_pool, smtp_ca, smtp_ca_pem
):
    from tests.fixtures.smtp_servers import USERNAME, start_starttls_smtp_server

    server = smtp_server_pool.add(start_starttls_smtp_server(smtp_ca, {USERNAME: "the-right-one"}))
    app, client, tokens = sending(server)
    assert client.put("/v1/smtp", json=settings_for(server, smtp_ca_pem), headers=tokens.headers("admin")).status_code == 200
    headers = tokens.headers("sender", **{"Idempotency-Key": "after-the-fix"})
    refused = client.post("/v1/messages", json=MESSAGE, headers=headers)
    assert refused.status_code == 502 and refused.json["smtp_code"] == 535 and refused.json["stage"] == "auth"
    server.handler.credentials[USERNAME] = settings_for(server, smtp_ca_pem)["password"]["value"]
    retried = client.post("/v1/messages", json=MESSAGE, headers=headers)
    assert retried.status_code == 200, retried.json
    assert len(server.messages) == 1
