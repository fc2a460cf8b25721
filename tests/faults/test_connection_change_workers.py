"""``smtpconf serve --workers 4``: a connection registered after every worker has read the list is seen by
the events path on the next request, as effective settings see it (Event Grid validates a subscription at once)."""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.faults.test_rotation_workers import serving_worker
from tests.fixtures.server import RunningService, service_env

WORKERS = 4
ATTEMPTS = 8


def connection(name: str) -> dict[str, Any]:
    return {
        "type": "azure_key_vault", "vault_url": f"https://{name}.vault.example.com", "allowed_secrets": ["smtp-*"],
        "credential": {"kind": "managed_identity"},
    }


def validation_event() -> list[dict[str, Any]]:
    """Event Grid's ``SubscriptionValidationEvent``, as Microsoft documents it."""
    return [{
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000",
        "subject": "",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://example.invalid"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-12-01T01:08:33.1036736Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }]


def send(port: int, method: str, path: str) -> tuple[http.client.HTTPConnection, int, dict[str, Any]]:
    """One request on a fresh connection, so that any worker may take it; the connection is left open."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps(validation_event()) if method == "POST" else None
    headers = {"Content-Type": "application/json", "WebHook-Request-Origin": "eventgrid.azure.net"}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return conn, response.status, json.loads(response.read() or b"{}")


def register(server: RunningService, security: dict[str, str], name: str) -> str:
    put = requests.put(f"{server.url}/v1/secret-providers/{name}", json=connection(name), headers=security, timeout=10)
    assert put.status_code == 201, put.text
    created = requests.post(f"{server.url}/v1/secret-providers/{name}/event-key", headers=security, timeout=10)
    assert created.status_code == 200, created.text
    return created.json()["path"]


def test_a_new_connection_is_seen_by_every_worker_on_its_next_event_delivery(tmp_path: Path):
    env = service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY)
    with RunningService(env, workers=WORKERS, log_path=tmp_path / "server.log") as server:
        security = {"Authorization": f"Bearer {server.token('events-security', 'security')}"}
        first = register(server, security, "kv0")
        workers = worker_pids(server.process.pid)
        assert len(workers) == WORKERS
        # Every worker reads the connection list (through the events path) before the next connection exists.
        answered: set[int] = set()
        for _ in range(400):
            conn, status, body = send(server.port, "POST", first)
            try:
                pid = serving_worker(workers, server.port, conn.sock.getsockname()[1])
            finally:
                conn.close()
            assert status == 200, body
            if pid is not None:
                answered.add(pid)
            if answered == workers:
                break
        assert answered == workers

        second = register(server, security, "kv")
        answers = []
        for method in ("POST", "OPTIONS"):
            for _ in range(ATTEMPTS):
                conn, status, body = send(server.port, method, second)
                conn.close()
                answers.append((method, status, body.get("code"), body.get("validationResponse")))

        assert answers == [("POST", 200, None, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6")] * ATTEMPTS + [
            ("OPTIONS", 200, None, None)
        ] * ATTEMPTS
