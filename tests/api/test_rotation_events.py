"""Rotation events from Azure Key Vault through Event Grid: the event key, both handshakes, refetch, audit, limits.

Payloads are shaped like Microsoft's documented samples ("Azure Key Vault as Event
Grid source": Event Grid schema and CloudEvents schema; "Receive events from Event
Grid to an HTTP endpoint": the subscription validation event). The vault is the real
Azure SDK against a mocked transport, as no Key Vault can run here.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from tests.providers.test_azure_key_vault import connection as azure_connection
from tests.providers.test_azure_key_vault import vault as azure_vault  # noqa: F401  (fixture)

CONNECTION = "corp-kv"
SECRET = "smtp-password"
OLD_VALUE = "old-kv-password-3c1d"
NEW_VALUE = "new-kv-password-77ab"
EFFECTIVE = "/v1/smtp/effective?include_password=true"
SUBSCRIPTION = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mail-rg"


def vault_name_of(vault: Any) -> str:
    return vault.url.removeprefix("https://").split(".")[0]


def event_grid_event(vault_name: str, vault_url: str, name: str, version: str, event_type: str | None = None) -> dict[str, Any]:
    """``Microsoft.KeyVault.SecretNewVersionCreated`` in the Event Grid schema, as Microsoft documents it."""
    return {
        "id": str(uuid.uuid4()),
        "topic": f"{SUBSCRIPTION}/providers/Microsoft.KeyVault/vaults/{vault_name}",
        "subject": name,
        "eventType": event_type or "Microsoft.KeyVault.SecretNewVersionCreated",
        "eventTime": "2026-12-01T01:08:33.1036736Z",
        "data": {
            "Id": f"{vault_url}/secrets/{name}/{version}",
            "VaultName": vault_name,
            "ObjectType": "Secret",
            "ObjectName": name,
            "Version": version,
            "NBF": "1559081980",
            "EXP": "1559082102",
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def cloudevent(vault_name: str, vault_url: str, name: str, version: str) -> dict[str, Any]:
    """The same event in the CloudEvents 1.0 schema, as Microsoft documents it."""
    grid = event_grid_event(vault_name, vault_url, name, version)
    return {
        "id": grid["id"],
        "source": grid["topic"],
        "subject": name,
        "type": "Microsoft.KeyVault.SecretNewVersionCreated",
        "time": grid["eventTime"],
        "data": grid["data"],
        "specversion": "1.0",
    }


def validation_event(code: str) -> dict[str, Any]:
    """Event Grid's subscription validation event (Event Grid schema)."""
    return {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": f"{SUBSCRIPTION}/providers/Microsoft.EventGrid/topics/kv-events",
        "subject": "",
        "data": {
            "validationCode": code,
            "validationUrl": "https://rp-eastus2.eventgrid.example.com:553/eventsubscriptions/smtpconf/validate?id=1",
        },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-12-01T22:12:19.4556811Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }


@pytest.fixture
def kv(client, tokens, azure_vault):
    """An Azure Key Vault connection with the SMTP password in it, cached for 5 minutes, and its event key."""
    azure_vault.store(SECRET, OLD_VALUE)
    document = {**azure_connection(azure_vault.url), "cache_ttl_seconds": 300}
    put = client.put(f"/v1/secret-providers/{CONNECTION}", json=document, headers=tokens.headers("security"))
    assert put.status_code == 201, put.json
    settings = {
        "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
        "password": {"source": "azure_key_vault", "provider": CONNECTION, "secret": SECRET},
    }
    assert client.put("/v1/smtp", json=settings, headers=tokens.headers("admin")).status_code == 200
    created = client.post(f"/v1/secret-providers/{CONNECTION}/event-key", headers=tokens.headers("security"))
    assert created.status_code == 200, created.json
    return {"vault": azure_vault, "key": created.json["key"], "path": created.json["path"]}


def _audit(client, tokens) -> list[dict[str, Any]]:
    return client.get("/v1/audit?limit=500", headers=tokens.headers("security")).json["items"]


def _rotate(vault: Any) -> str:
    return vault.store(SECRET, NEW_VALUE)


def test_event_key_is_answered_once_and_stored_only_as_a_hash(app, client, tokens, kv):
    key, path = kv["key"], kv["path"]
    assert len(key) >= 43  # 32 random bytes
    assert path == f"/v1/secret-providers/{CONNECTION}/events?key={key}"
    with app.extensions["smtpconf"].db.read() as session:
        stored = session.execute(sa.text("SELECT key_hash FROM event_keys WHERE provider = :p"), {"p": CONNECTION}).scalar_one()
    assert stored != key and key not in stored
    later = [
        client.get(f"/v1/secret-providers/{CONNECTION}", headers=tokens.headers("security")),
        client.get("/v1/secret-providers", headers=tokens.headers("security")),
        client.get("/v1/audit?limit=500", headers=tokens.headers("security")),
        client.get("/metrics"),
    ]
    for answer in later:
        assert key not in answer.get_data(as_text=True)
        assert stored not in answer.get_data(as_text=True)
    entry = next(e for e in _audit(client, tokens) if e["action"] == "secret_provider.event_key")
    assert entry["actor"] == "test-security" and entry["target"] == f"secret_provider:{CONNECTION}"


def test_a_new_event_key_replaces_the_old_one(client, tokens, kv):
    again = client.post(f"/v1/secret-providers/{CONNECTION}/event-key", headers=tokens.headers("security"))
    assert again.status_code == 200 and again.json["key"] != kv["key"]
    assert client.post(kv["path"], json=[]).status_code == 401
    assert client.post(again.json["path"], json=[]).status_code == 200


def test_event_key_for_a_connection_type_without_events_is_409(client, tokens):
    answer = client.post("/v1/secret-providers/internal/event-key", headers=tokens.headers("security"))
    assert answer.status_code == 409 and answer.json["code"] == "events_not_supported"
    missing = client.post("/v1/secret-providers/no-such/event-key", headers=tokens.headers("security"))
    assert missing.status_code == 404 and missing.json["code"] == "provider_not_found"


def test_events_without_the_right_key_are_401_and_change_nothing(client, tokens, kv):
    before = len(_audit(client, tokens))
    delivery = [event_grid_event(vault_name_of(kv["vault"]), kv["vault"].url, SECRET, "v2")]
    base = f"/v1/secret-providers/{CONNECTION}/events"
    for url in (base, base + "?key=", base + "?key=not-the-key", base + "?key=" + kv["key"][:-1] + "x",
                f"/v1/secret-providers/other-kv/events?key={kv['key']}"):
        answer = client.post(url, json=delivery)
        assert answer.status_code == 401, url
        assert answer.mimetype == "application/problem+json" and answer.json["code"] == "unauthorized"
        options = client.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
        assert options.status_code == 401 and "WebHook-Allowed-Origin" not in options.headers
    # A bearer token is no substitute for the event key.
    assert client.post(base, json=delivery, headers=tokens.headers("security")).status_code == 401
    assert len(_audit(client, tokens)) == before


def test_subscription_validation_is_answered_with_its_code_and_audited(client, tokens, kv):
    code = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    answer = client.post(kv["path"], data=json.dumps([validation_event(code)]), content_type="application/json")
    assert answer.status_code == 200
    assert answer.json == {"validationResponse": code}
    entry = _audit(client, tokens)[0]
    assert entry["actor"] == f"event:{CONNECTION}" and entry["action"] == "rotation_event.subscription_validated"


def test_cloudevents_webhook_handshake_echoes_the_origin(client, tokens, kv):
    answer = client.options(kv["path"], headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert answer.status_code == 200
    assert answer.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert answer.headers["WebHook-Allowed-Rate"] == "*"
    assert _audit(client, tokens)[0]["actor"] == f"event:{CONNECTION}"


def _deliver(client: Any, path: str, kind: str, vault: Any, version: str) -> Any:
    name, url = vault_name_of(vault), vault.url
    if kind == "event_grid":
        return client.post(path, data=json.dumps([event_grid_event(name, url, SECRET, version)]), content_type="application/json")
    if kind == "cloudevent":
        body = json.dumps(cloudevent(name, url, SECRET, version))
        return client.post(path, data=body, content_type="application/cloudevents+json; charset=utf-8")
    body = json.dumps([cloudevent(name, url, SECRET, version)])
    return client.post(path, data=body, content_type="application/cloudevents-batch+json")


@pytest.mark.parametrize("kind", ["event_grid", "cloudevent", "cloudevent_batch"])
def test_a_new_secret_version_event_makes_the_next_read_serve_the_new_version(client, tokens, kv, kind):
    sender = tokens.headers("secret-reader")
    first = client.get(EFFECTIVE, headers=sender)
    assert first.json["password"] == OLD_VALUE
    new_version = _rotate(kv["vault"])
    # Cached for 5 minutes: without the event the old value is still served.
    assert client.get(EFFECTIVE, headers=sender).json["password"] == OLD_VALUE

    answer = _deliver(client, kv["path"], kind, kv["vault"], new_version)
    assert answer.status_code == 200, answer.json
    assert answer.json == {"received": 1, "marked_for_refetch": [SECRET]}

    after = client.get(EFFECTIVE, headers=sender)
    assert after.json["password"] == NEW_VALUE and after.json["password_version"] == new_version
    assert after.headers["ETag"] != first.headers["ETag"]
    actions = [(e["actor"], e["action"]) for e in _audit(client, tokens)[:2]]
    assert (f"event:{CONNECTION}", "rotation_event") in actions
    assert (f"event:{CONNECTION}", "secret_cache.invalidate") in actions


def test_events_of_another_vault_or_type_are_acknowledged_and_ignored(client, tokens, kv):
    sender = tokens.headers("secret-reader")
    assert client.get(EFFECTIVE, headers=sender).json["password"] == OLD_VALUE
    version = _rotate(kv["vault"])
    name, url = vault_name_of(kv["vault"]), kv["vault"].url
    other_vault = event_grid_event("someone-elses-kv", "https://someone-elses-kv.vault.example.com", SECRET, version)
    near_expiry = event_grid_event(name, url, SECRET, version, "Microsoft.KeyVault.SecretNearExpiry")
    new_key = event_grid_event(name, url, SECRET, version, "Microsoft.KeyVault.KeyNewVersionCreated")
    storage = {**event_grid_event(name, url, SECRET, version, "Microsoft.Storage.BlobCreated"), "data": {"api": "PutBlob"}}
    answer = client.post(kv["path"], json=[other_vault, near_expiry, new_key, storage])
    assert answer.status_code == 200 and answer.json == {"received": 4, "marked_for_refetch": []}
    assert client.get(EFFECTIVE, headers=sender).json["password"] == OLD_VALUE
    ignored = [e for e in _audit(client, tokens) if e["action"] == "rotation_event"]
    assert len(ignored) == 4
    assert all(e["actor"] == f"event:{CONNECTION}" and e["after"]["outcome"] == "ignored" for e in ignored)


def test_a_delivery_over_64_kib_is_413(client, kv):
    padding = "x" * (65 * 1024)
    event = {**event_grid_event(vault_name_of(kv["vault"]), kv["vault"].url, SECRET, "v2"), "subject": padding}
    answer = client.post(kv["path"], data=json.dumps([event]), content_type="application/json")
    assert answer.status_code == 413 and answer.json["code"] == "payload_too_large"


def test_malformed_deliveries_get_problem_json_with_per_field_errors(client, kv):
    path = kv["path"]
    assert client.post(path, data="[{", content_type="application/json").json["code"] == "invalid_json"
    not_a_list = client.post(path, json={"eventType": "x"})
    assert not_a_list.status_code == 422 and not_a_list.json["errors"] == {"_schema": ["A delivery is a JSON array of events."]}
    missing = client.post(path, json=[{"id": "1", "eventTime": "2026-12-01T00:00:00Z", "data": []}])
    assert missing.status_code == 422
    assert set(missing.json["errors"]["0"]) == {"eventType", "data"}
    cloud = client.post(path, data=json.dumps({"id": "1", "type": "t"}), content_type="application/cloudevents+json")
    assert cloud.status_code == 422 and set(cloud.json["errors"]) == {"source", "specversion"}
    assert client.post(path, data="x", content_type="text/plain").status_code == 415


def test_the_event_key_never_appears_in_a_log_line(client, tokens, kv, caplog):
    caplog.set_level(logging.DEBUG)
    sender = tokens.headers("secret-reader")
    client.get(EFFECTIVE, headers=sender)
    version = _rotate(kv["vault"])
    _deliver(client, kv["path"], "event_grid", kv["vault"], version)
    client.post(kv["path"] + "tampered", json=[])
    client.options(kv["path"], headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    client.post(kv["path"], data="[{", content_type="application/json")
    assert caplog.records, "nothing was logged: the check would prove nothing"
    paths = [getattr(r, "path", None) for r in caplog.records if getattr(r, "path", None)]
    assert f"/v1/secret-providers/{CONNECTION}/events" in paths
    for record in caplog.records:
        assert kv["key"] not in record.getMessage()
        assert kv["key"] not in json.dumps(record.__dict__, default=str)
