"""Secret-manager connections: validated per type, credentials only by reference, audited."""

from __future__ import annotations

import base64
import os

import sqlalchemy as sa

from service.crypto import KeyRing
from service.db import InternalSecretVersion, SmtpSettings
from service.rotation import rotate_master_key
from tests.conftest import MASTER_KEY


def test_the_internal_connection_exists_from_the_first_start(client, tokens):
    body = client.get("/v1/secret-providers/internal", headers=tokens.headers("admin")).json
    assert body["type"] == "internal" and body["allowed_secrets"] == ["smtp/*"]
    listing = client.get("/v1/secret-providers", headers=tokens.headers("security")).json
    assert [item["name"] for item in listing["items"]] == ["internal"]


def test_the_internal_connection_cannot_be_deleted_or_duplicated(client, tokens):
    security = tokens.headers("security")
    assert client.delete("/v1/secret-providers/internal", headers=security).status_code == 409
    response = client.put("/v1/secret-providers/other", json={"type": "internal"}, headers=security)
    assert response.status_code == 422 and "type" in response.json["errors"]


def test_unknown_type_and_unknown_fields_are_refused(client, tokens):
    security = tokens.headers("security")
    response = client.put("/v1/secret-providers/x", json={"type": "keepass"}, headers=security)
    assert response.status_code == 422 and "type" in response.json["errors"]
    response = client.put("/v1/secret-providers/internal", json={"type": "internal", "colour": "blue"}, headers=security)
    assert response.status_code == 422 and "colour" in response.json["errors"]
    response = client.put("/v1/secret-providers/internal", json={"type": "internal", "cache_ttl_seconds": -1}, headers=security)
    assert response.status_code == 422 and "cache_ttl_seconds" in response.json["errors"]


def test_connection_changes_are_audited_and_versioned(client, tokens):
    security = tokens.headers("security")
    first = client.put("/v1/secret-providers/internal", json={"type": "internal", "allowed_secrets": ["smtp/*", "mail/*"]}, headers=security)
    assert first.status_code == 200 and first.json["version"] == 2
    stale = client.put(
        "/v1/secret-providers/internal", json={"type": "internal"}, headers={**security, "If-Match": '"stale"'}
    )
    assert stale.status_code == 412
    event = client.get("/v1/audit", headers=security).json["items"][0]
    assert event["action"] == "secret_provider.put"
    assert event["before"]["allowed_secrets"] == ["smtp/*"]
    assert event["after"]["allowed_secrets"] == ["smtp/*", "mail/*"]


def test_check_reports_reachability(client, tokens):
    body = client.post("/v1/secret-providers/internal/check", headers=tokens.headers("security")).json
    assert body["ok"] is True and body["status"] == "ok" and body["error"] is None
    missing = client.post("/v1/secret-providers/nothing/check", headers=tokens.headers("security"))
    assert missing.status_code == 404


def test_cache_invalidation_is_validated_and_audited(client, tokens):
    security = tokens.headers("security")
    assert client.post("/v1/secret-cache/invalidate", json={"provider": 5}, headers=security).status_code == 422
    body = client.post("/v1/secret-cache/invalidate", json={"provider": "internal", "secret": "smtp/relay"}, headers=security).json
    assert set(body) == {"invalidated", "generation"}
    assert client.get("/v1/audit", headers=security).json["items"][0]["action"] == "secret_cache.invalidate"


def test_provider_types_list_the_installed_types_with_schemas(client, tokens):
    items = client.get("/v1/secret-provider-types", headers=tokens.headers("secret-reader")).json["items"]
    by_source = {item["source"]: item for item in items}
    assert by_source["plaintext"]["connection_schema"] is None
    internal = by_source["internal"]
    assert internal["reference_schema"]["properties"]["secret"]["type"] == "string"
    assert "allowed_secrets" in internal["connection_schema"]["properties"]


def test_provider_types_say_which_publish_events_and_name_each_choice_of_a_discriminated_document(client, tokens):
    by_source = {item["source"]: item for item in client.get("/v1/secret-provider-types", headers=tokens.headers("reader")).json["items"]}
    assert {source for source, item in by_source.items() if item["publishes_events"]} == {"azure_key_vault"}
    methods = [v["properties"]["method"]["const"] for v in by_source["hashicorp_vault"]["connection_schema"]["properties"]["auth"]["oneOf"]]
    assert methods == ["token", "approle", "kubernetes", "jwt"]
    kinds = {v["properties"]["kind"]["const"] for v in by_source["azure_key_vault"]["connection_schema"]["properties"]["credential"]["oneOf"]}
    assert kinds == {"default", "client_secret", "managed_identity", "workload_identity"}


def test_readyz_reports_each_provider(client):
    body = client.get("/readyz").json
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["providers"]["internal"]["status"] == "ok"


def test_master_key_rotation_leaves_everything_readable_and_nothing_under_the_old_key(make_app, tokens, client):
    security, admin = tokens.headers("security"), tokens.headers("admin")
    client.put("/v1/secrets/smtp/relay", json={"value": "internal-one"}, headers=security)
    client.put("/v1/secrets/smtp/relay", json={"value": "internal-two"}, headers=security)
    client.put("/v1/secrets/providers/token", json={"value": "cred"}, headers=security)
    settings = {
        "host": "smtp.example.com", "port": 587, "from_email": "a@example.com", "username": "u",
        "password": {"source": "plaintext", "value": "plain-one"},
    }
    client.put("/v1/smtp", json=settings, headers=admin)
    client.put("/v1/tenants/t1/smtp", json={"password": {"source": "internal", "secret": "smtp/relay", "version": 1}}, headers=admin)
    old_id = KeyRing.from_config(type("C", (), {"master_key": MASTER_KEY, "master_key_file": None})()).primary_id

    new_key = base64.b64encode(os.urandom(32)).decode()
    both = make_app(master_key=f"{new_key},{MASTER_KEY}")
    counts = rotate_master_key(both.extensions["smtpconf"].db, both.extensions["smtpconf"].keyring)
    assert counts == {"secrets": 3, "passwords": 1}

    only_new = make_app(master_key=new_key)
    db = only_new.extensions["smtpconf"].db
    with db.read() as session:
        key_ids = set(session.scalars(sa.select(InternalSecretVersion.key_id)))
        sealed = [row.document["password"].get("ciphertext", "") for row in session.scalars(sa.select(SmtpSettings))]
    assert key_ids == {only_new.extensions["smtpconf"].keyring.primary_id}
    assert all(old_id not in token for token in sealed)
    reader = only_new.test_client()
    assert reader.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader")).json["password"] == "plain-one"
    tenant = reader.get("/v1/tenants/t1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))
    assert tenant.json["password"] == "internal-one"
    store = only_new.extensions["smtpconf"].secrets.store
    assert store.read("smtp/relay").value == "internal-two"
    assert store.read("providers/token").value == "cred"
    assert rotate_master_key(db, only_new.extensions["smtpconf"].keyring) == {"secrets": 0, "passwords": 0}


def test_invalidating_an_unknown_connection_is_404(client, tokens):
    response = client.post("/v1/secret-cache/invalidate", json={"provider": "nope"}, headers=tokens.headers("security"))
    assert response.status_code == 404 and response.json["code"] == "provider_not_found"
