"""The event key of a real server: answered once, then in no log line, database byte, audit entry or response."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.conftest import MASTER_KEY
from tests.faults import audit_events
from tests.fixtures.server import RunningService, service_env

CONNECTION = "events-kv"
VAULT_URL = "https://events-kv.vault.example.com"


def _database_bytes(path: Path) -> bytes:
    """The SQLite database with its write-ahead log and shared-memory index."""
    return b"".join(f.read_bytes() for p in sorted(path.parent.glob(path.name + "*")) for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file())


def _event(event_type: str = "Microsoft.KeyVault.SecretNewVersionCreated") -> dict:
    return {
        "id": "9b6ed3b2-5d7a-4d54-9e36-2b8a1f2b8c11",
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mail-rg"
        "/providers/Microsoft.KeyVault/vaults/events-kv",
        "subject": "smtp-password",
        "eventType": event_type,
        "eventTime": "2026-12-01T01:08:33.1036736Z",
        "data": {
            "Id": f"{VAULT_URL}/secrets/smtp-password/0b1c2d3e4f",
            "VaultName": "events-kv",
            "ObjectType": "Secret",
            "ObjectName": "smtp-password",
            "Version": "0b1c2d3e4f",
            "NBF": "1559081980",
            "EXP": "1559082102",
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }


def test_the_event_key_appears_once_and_never_again(tmp_path):
    database = tmp_path / "smtpconf.db"
    env = service_env(f"sqlite:///{database}", MASTER_KEY, SMTPCONF_LOG_LEVEL="DEBUG")
    log_path = tmp_path / "server.log"
    with RunningService(env, workers=2, log_path=log_path) as server:
        security = {"Authorization": f"Bearer {server.token('events-security', 'security')}"}
        connection = {
            "type": "azure_key_vault", "vault_url": VAULT_URL, "allowed_secrets": ["smtp-*"],
            "credential": {"kind": "managed_identity"},
        }
        put = requests.put(f"{server.url}/v1/secret-providers/{CONNECTION}", json=connection, headers=security, timeout=10)
        assert put.status_code == 201, put.text
        created = requests.post(f"{server.url}/v1/secret-providers/{CONNECTION}/event-key", headers=security, timeout=10)
        assert created.status_code == 200 and created.headers["Cache-Control"] == "no-store"
        key = created.json()["key"]
        events = server.url + created.json()["path"]

        answers = [
            requests.post(events, json=[_event()], timeout=10),
            requests.post(events, json=[_event("Microsoft.KeyVault.SecretNearExpiry")], timeout=10),
            requests.post(
                events, data=json.dumps({**_event(), "specversion": "1.0"}), timeout=10,
                headers={"Content-Type": "application/cloudevents+json"},
            ),
            requests.post(events, data="[{", headers={"Content-Type": "application/json"}, timeout=10),
            requests.post(events, data="x" * (70 * 1024), headers={"Content-Type": "application/json"}, timeout=10),
            requests.post(events + "x", json=[_event()], timeout=10),
            requests.options(events, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10),
        ]
        assert [a.status_code for a in answers] == [200, 200, 422, 400, 413, 401, 200]
        later = [
            requests.get(f"{server.url}/v1/secret-providers/{CONNECTION}", headers=security, timeout=10),
            requests.get(f"{server.url}/v1/secret-providers", headers=security, timeout=10),
            requests.get(f"{server.url}/metrics", timeout=10),
        ]
        trail = audit_events(server.url, security)
    assert [e["actor"] for e in trail if e["action"] == "rotation_event"] == [f"event:{CONNECTION}"] * 2
    log = log_path.read_bytes()
    assert f"/v1/secret-providers/{CONNECTION}/events".encode() in log, "the requests were not logged: the scan proves nothing"
    assert key.encode() not in log
    assert key.encode() not in _database_bytes(database)
    assert key not in json.dumps(trail)
    for answer in answers + later:
        assert key not in answer.text and key not in json.dumps(dict(answer.headers))
