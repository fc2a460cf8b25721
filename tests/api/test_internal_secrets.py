"""The internal secret store, the internal source and rotation without a restart."""

from __future__ import annotations

import sqlalchemy as sa

from service.db import PasswordAccess
from tests.conftest import Tokens

CANARY = "canary-internal-91c4e7-do-not-leak"


def use_internal(client, tokens, secret="smtp/relay", **extra):
    document = {
        "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com",
        "username": "mailer", "password": {"source": "internal", "secret": secret, **extra},
    }
    return client.put("/v1/smtp", json=document, headers=tokens.headers("admin"))


def write_secret(client, tokens, name, value):
    return client.put(f"/v1/secrets/{name}", json={"value": value}, headers=tokens.headers("security"))


def effective_password(client, tokens: Tokens, **headers):
    return client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader", **headers))


def test_secret_versions_and_metadata_never_values(client, tokens):
    first = write_secret(client, tokens, "smtp/relay", CANARY)
    assert first.status_code == 201
    assert first.json["current_version"] == 1
    second = write_secret(client, tokens, "smtp/relay", CANARY + "-2")
    assert second.status_code == 200
    assert [v["version"] for v in second.json["versions"]] == [2, 1]
    listing = client.get("/v1/secrets", headers=tokens.headers("security"))
    assert [item["name"] for item in listing.json["items"]] == ["smtp/relay"]
    one = client.get("/v1/secrets/smtp/relay", headers=tokens.headers("security"))
    for response in (first, second, listing, one):
        assert CANARY not in response.get_data(as_text=True)


def test_secret_write_is_validated(client, tokens):
    assert client.put("/v1/secrets/smtp/x", json={"value": ""}, headers=tokens.headers("security")).status_code == 422
    response = client.put("/v1/secrets/smtp/x", json={"value": "v", "note": 1}, headers=tokens.headers("security"))
    assert response.status_code == 422 and "note" in response.json["errors"]
    assert client.put("/v1/secrets/a/../b", json={"value": "v"}, headers=tokens.headers("security")).status_code == 404
    assert client.get("/v1/secrets/smtp/none", headers=tokens.headers("security")).status_code == 404


def test_password_resolved_from_the_internal_store(client, tokens):
    write_secret(client, tokens, "smtp/relay", CANARY)
    assert use_internal(client, tokens).status_code == 200
    body = effective_password(client, tokens).json
    assert body["password"] == CANARY
    assert body["password_version"] == "1"


def test_rotation_in_the_internal_store_is_served_at_once_and_changes_the_etag(client, tokens):
    write_secret(client, tokens, "smtp/relay", "first")
    use_internal(client, tokens)
    first = effective_password(client, tokens)
    write_secret(client, tokens, "smtp/relay", "second")
    second = effective_password(client, tokens, **{"If-None-Match": first.headers["ETag"]})
    assert second.status_code == 200
    assert second.json["password"] == "second" and second.json["password_version"] == "2"


def test_version_pinning_in_the_internal_store(client, tokens):
    write_secret(client, tokens, "smtp/relay", "first")
    write_secret(client, tokens, "smtp/relay", "second")
    use_internal(client, tokens, version=1)
    assert effective_password(client, tokens).json["password"] == "first"


def test_reference_outside_allowed_secrets_is_refused(client, tokens):
    write_secret(client, tokens, "providers/vault-secret-id", "credential-for-vault")
    response = use_internal(client, tokens, secret="providers/vault-secret-id")
    assert response.status_code == 422
    assert response.json["code"] == "secret_not_allowed"
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).status_code == 404


def test_narrowed_allow_list_refuses_resolution_of_a_stored_reference(client, tokens):
    write_secret(client, tokens, "smtp/relay", CANARY)
    use_internal(client, tokens)
    narrowed = client.put(
        "/v1/secret-providers/internal", json={"type": "internal", "allowed_secrets": ["smtp/other"]},
        headers=tokens.headers("security"),
    )
    assert narrowed.status_code == 200
    response = effective_password(client, tokens)
    assert response.status_code == 503
    assert response.json["code"] == "password_unavailable"
    assert CANARY not in response.get_data(as_text=True)


def test_missing_internal_secret_is_503_password_unavailable(client, tokens):
    use_internal(client, tokens, secret="smtp/never-written")
    response = effective_password(client, tokens)
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "password_unavailable"


def test_secret_in_use_cannot_be_deleted(client, tokens):
    write_secret(client, tokens, "smtp/relay", "v")
    use_internal(client, tokens)
    response = client.delete("/v1/secrets/smtp/relay", headers=tokens.headers("security"))
    assert response.status_code == 409 and response.json["code"] == "secret_in_use"
    write_secret(client, tokens, "smtp/unused", "v")
    assert client.delete("/v1/secrets/smtp/unused", headers=tokens.headers("security")).status_code == 204
    assert client.get("/v1/secrets/smtp/unused", headers=tokens.headers("security")).status_code == 404


def test_secret_changes_are_audited_without_values(client, tokens):
    write_secret(client, tokens, "smtp/relay", CANARY)
    write_secret(client, tokens, "smtp/relay", CANARY + "x")
    audit = client.get("/v1/audit", headers=tokens.headers("security"))
    actions = [e["action"] for e in audit.json["items"]]
    assert actions[:2] == ["secret.rotate", "secret.create"]
    assert CANARY not in audit.get_data(as_text=True)


def test_password_reads_are_recorded_once_per_token_and_version(app, client, tokens):
    write_secret(client, tokens, "smtp/relay", "first")
    use_internal(client, tokens)
    for _ in range(3):
        effective_password(client, tokens)
    write_secret(client, tokens, "smtp/relay", "second")
    effective_password(client, tokens)
    with app.extensions["smtpconf"].db.read() as session:
        rows = session.execute(sa.select(PasswordAccess.token_name, PasswordAccess.version)).all()
    assert sorted(rows) == [("test-secret-reader", "1"), ("test-secret-reader", "2")]


def test_a_change_through_one_instance_is_honoured_by_another_within_two_seconds(make_app):
    import time

    first, second = make_app(secret_sync_interval_seconds=0.5), make_app(secret_sync_interval_seconds=0.5)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    write_secret(a, tokens, "smtp/relay", "first")
    use_internal(a, tokens)
    assert effective_password(b, tokens).json["password"] == "first"
    write_secret(a, tokens, "smtp/relay", "second")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if effective_password(b, tokens).json["password"] == "second":
            break
        time.sleep(0.1)
    assert effective_password(b, tokens).json["password"] == "second"


def test_a_doubled_slash_in_a_secret_name_is_refused_not_redirected(client, tokens):
    response = client.put("/v1/secrets//smtp/x", json={"value": "v"}, headers=tokens.headers("security"))
    assert response.status_code == 404 and response.content_type == "application/problem+json"
