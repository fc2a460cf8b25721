"""``smtpconf serve --workers 4`` with a real OpenBao: every change is served by every worker at once,
and an outage right after an invalidation leaves every worker serving the last good value."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.fixtures.server import RunningService, service_env

WORKERS = 4
ROUNDS = 20
REQUESTS_PER_ROUND = 200
CONNECTION = "rotation-vault"
TENANT_EFFECTIVE = "/v1/tenants/vaulted/smtp/effective?include_password=true"
SYSTEM_EFFECTIVE = "/v1/smtp/effective?include_password=true"


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection, so that any worker may take it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={**headers, "Connection": "close"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def fan_out(port: int, path: str, headers: dict[str, str], count: int) -> list[tuple[int, dict[str, Any]]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: get(port, path, headers), range(count)))


def serving_worker(workers: set[int], server_port: int, client_port: int) -> int | None:
    """The worker holding the server side of the connection from ``client_port`` (from /proc)."""
    wanted = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_port and fields[3] == "01":
            wanted = fields[9]
    if wanted is None:
        return None
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{wanted}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


def per_worker(port: int, workers: set[int], path: str, headers: dict[str, str]) -> dict[int, tuple[int, dict[str, Any]]]:
    """One answer from each worker: fresh keep-alive connections until every worker has answered one."""
    answers: dict[int, tuple[int, dict[str, Any]]] = {}
    for _ in range(400):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            answer = (response.status, json.loads(response.read() or b"{}"))
            pid = serving_worker(workers, port, conn.sock.getsockname()[1])
        finally:
            conn.close()
        if pid is not None and pid not in answers:
            answers[pid] = answer
            if len(answers) == len(workers):
                return answers
    raise AssertionError(f"only workers {sorted(answers)} of {sorted(workers)} answered")


def start(openbao: Any, tmp_path: Path, mount: str, **connection: Any) -> tuple[RunningService, dict[str, dict[str, str]]]:
    policy = openbao.kv_read_policy(f"{mount}-read", mount, version=2)
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, ROTATION_VAULT_TOKEN=openbao.create_token([policy])
    )
    server = RunningService(env, workers=WORKERS, log_path=tmp_path / "server.log")
    roles = {"security": ["security"], "admin": ["admin"], "sender": ["secret-reader"]}
    headers = {name: {"Authorization": f"Bearer {server.token(f'rotation-{name}', *r)}"} for name, r in roles.items()}
    document = {
        "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "ROTATION_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
        "cache_ttl_seconds": 300, "max_stale_seconds": 86400, "timeout_seconds": 2, **connection,
    }
    created = requests.put(f"{server.url}/v1/secret-providers/{CONNECTION}", json=document, headers=headers["security"], timeout=10)
    assert created.status_code == 201, created.text
    return server, headers


def test_every_change_is_served_by_every_worker_on_the_next_request(openbao, tmp_path):
    mount = f"kv-rotation-{time.time_ns() % 10**9}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/smtp", {"password": "vault-0"})
    server, headers = start(openbao, tmp_path, mount)
    with server:
        security, admin, sender = headers["security"], headers["admin"], headers["sender"]
        assert requests.put(f"{server.url}/v1/secrets/smtp/relay", json={"value": "internal-0"}, headers=security, timeout=10).ok
        system = {
            "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
            "from_name": "Round 0", "password": {"source": "internal", "secret": "smtp/relay"},
        }
        assert requests.put(f"{server.url}/v1/smtp", json=system, headers=admin, timeout=10).status_code == 200
        tenant = {"password": {"source": "hashicorp_vault", "provider": CONNECTION, "path": "mail/smtp", "key": "password"}}
        assert requests.put(f"{server.url}/v1/tenants/vaulted/smtp", json=tenant, headers=admin, timeout=10).status_code == 200
        # Every worker caches both passwords and the settings before the changes start.
        for path in (TENANT_EFFECTIVE, SYSTEM_EFFECTIVE):
            assert {a[1].get("password") for a in fan_out(server.port, path, sender, 100)} == {
                "vault-0" if path == TENANT_EFFECTIVE else "internal-0"
            }
        workers = worker_pids(server.process.pid)
        assert len(workers) == WORKERS

        wrong: list[str] = []
        for n in range(1, ROUNDS + 1):
            openbao.write_secret(mount, "mail/smtp", {"password": f"vault-{n}"})
            invalidated = requests.post(
                f"{server.url}/v1/secret-cache/invalidate", json={"provider": CONNECTION, "secret": "mail/smtp"},
                headers=security, timeout=10,
            )
            assert invalidated.status_code == 200
            answers = fan_out(server.port, TENANT_EFFECTIVE, sender, REQUESTS_PER_ROUND)
            wrong += [f"invalidation {n}: {a}" for a in answers if a[0] != 200 or a[1].get("password") != f"vault-{n}"]

            rotated = requests.put(f"{server.url}/v1/secrets/smtp/relay", json={"value": f"internal-{n}"}, headers=security, timeout=10)
            assert rotated.status_code == 200
            answers = fan_out(server.port, SYSTEM_EFFECTIVE, sender, REQUESTS_PER_ROUND)
            wrong += [f"rotation {n}: {a}" for a in answers if a[0] != 200 or a[1].get("password") != f"internal-{n}"]

            changed = requests.put(f"{server.url}/v1/smtp", json={**system, "from_name": f"Round {n}"}, headers=admin, timeout=10)
            assert changed.status_code == 200
            answers = fan_out(server.port, SYSTEM_EFFECTIVE, sender, REQUESTS_PER_ROUND)
            wrong += [f"settings {n}: {a[0]} {a[1].get('from_name')}" for a in answers if a[0] != 200 or a[1].get("from_name") != f"Round {n}"]
        assert wrong == [], f"{len(wrong)} of {3 * ROUNDS * REQUESTS_PER_ROUND} answers were old: {wrong[:5]}"
        assert worker_pids(server.process.pid) == workers


def test_an_outage_right_after_an_invalidation_serves_the_last_good_value_on_every_worker(openbao, tmp_path):
    max_stale = 8
    mount = f"kv-stale-{time.time_ns() % 10**9}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/smtp", {"password": "last-good"})
    server, headers = start(openbao, tmp_path, mount, max_stale_seconds=max_stale)
    with server:
        security, sender = headers["security"], headers["sender"]
        settings = {
            "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
            "password": {"source": "hashicorp_vault", "provider": CONNECTION, "path": "mail/smtp", "key": "password"},
        }
        assert requests.put(f"{server.url}/v1/smtp", json=settings, headers=headers["admin"], timeout=10).status_code == 200
        workers = worker_pids(server.process.pid)
        fetched = time.monotonic()
        warm = per_worker(server.port, workers, SYSTEM_EFFECTIVE, sender)
        assert {status for status, _ in warm.values()} == {200}
        assert {body["password"] for _, body in warm.values()} == {"last-good"}
        warmed = time.monotonic()  # every worker fetched the value between `fetched` and now

        with openbao.outage():
            invalidated = requests.post(f"{server.url}/v1/secret-cache/invalidate", json={"provider": CONNECTION},
                                        headers=security, timeout=10)
            assert invalidated.status_code == 200
            stale = per_worker(server.port, workers, SYSTEM_EFFECTIVE, sender)
            assert time.monotonic() - fetched < max_stale, "the machine was too slow to observe the stale window"
            assert {pid: (status, body.get("password"), body.get("password_stale")) for pid, (status, body) in stale.items()} == {
                pid: (200, "last-good", True) for pid in workers
            }
            time.sleep(max(0.0, warmed + max_stale + 0.5 - time.monotonic()))
            gone = per_worker(server.port, workers, SYSTEM_EFFECTIVE, sender)
            assert {pid: (status, body.get("code")) for pid, (status, body) in gone.items()} == {
                pid: (503, "password_unavailable") for pid in workers
            }
            assert all("last-good" not in json.dumps(body) for _, body in gone.values())

        deadline = time.monotonic() + 15
        while True:
            recovered = per_worker(server.port, workers, SYSTEM_EFFECTIVE, sender)
            if all(status == 200 and "password_stale" not in body for status, body in recovered.values()):
                break
            assert time.monotonic() < deadline, f"not recovered: {recovered}"
            time.sleep(0.2)
        assert worker_pids(server.process.pid) == workers, "the service was restarted"
