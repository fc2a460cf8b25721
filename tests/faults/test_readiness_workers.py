"""A hung OpenBao under ``smtpconf serve --workers 4``: ``/readyz`` on every worker says ``degraded`` as soon as
requests are served stale (not after a probe or a fetch timeout), and ``ok`` again once OpenBao answers."""

from __future__ import annotations

import time

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.faults.test_outage_under_load import EFFECTIVE, Readers
from tests.faults.test_rotation_workers import per_worker
from tests.fixtures.server import RunningService, service_env

WORKERS = 4
CONNECTION = "hung-vault"
PASSWORD = "hung-password-5e21"
#: Longer than the bound below: a worker that learnt only from its own timed-out fetch would be too late.
FETCH_TIMEOUT_SECONDS = 6
READY_WITHIN_SECONDS = 2.0


def statuses(port: int, workers: set[int]) -> dict[int, tuple[int, str | None]]:
    answers = per_worker(port, workers, "/readyz", {})
    return {pid: (status, body.get("providers", {}).get(CONNECTION, {}).get("status")) for pid, (status, body) in answers.items()}


def test_a_hung_manager_is_degraded_on_every_worker_within_two_seconds_of_the_first_stale_answer(openbao, tmp_path):
    mount = f"kv-hung-{time.time_ns() % 10**9}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/smtp", {"password": PASSWORD})
    policy = openbao.kv_read_policy(f"{mount}-read", mount, version=2)
    env = service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, HUNG_VAULT_TOKEN=openbao.create_token([policy]))
    with RunningService(env, workers=WORKERS, log_path=tmp_path / "server.log") as server:
        security = {"Authorization": f"Bearer {server.token('hung-security', 'security')}"}
        admin = {"Authorization": f"Bearer {server.token('hung-admin', 'admin')}"}
        sender = {"Authorization": f"Bearer {server.token('hung-sender', 'secret-reader')}"}
        connection = {
            "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
            "auth": {"method": "token", "token": {"env": "HUNG_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
            "cache_ttl_seconds": 1, "max_stale_seconds": 60, "timeout_seconds": FETCH_TIMEOUT_SECONDS,
        }
        created = requests.put(f"{server.url}/v1/secret-providers/{CONNECTION}", json=connection, headers=security, timeout=10)
        assert created.status_code == 201, created.text
        settings = {
            "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
            "password": {"source": "hashicorp_vault", "provider": CONNECTION, "path": "mail/smtp", "key": "password"},
        }
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
        workers = worker_pids(server.process.pid)
        assert len(workers) == WORKERS
        # Every worker holds the value before the manager hangs.
        warm = per_worker(server.port, workers, EFFECTIVE, sender)
        assert {body.get("password") for _, body in warm.values()} == {PASSWORD}, warm

        with Readers(server.url, sender) as readers:
            with openbao.hung():
                hung_at = time.monotonic()
                deadline = hung_at + 15
                while not any(read.body.get("password_stale") for read in readers.since(hung_at)):
                    assert time.monotonic() < deadline, "no read was served stale"
                    time.sleep(0.05)
                first_stale = min(read.answered_at for read in readers.since(hung_at) if read.body.get("password_stale"))
                while True:
                    seen = statuses(server.port, workers)
                    if set(seen.values()) == {(200, "degraded")}:
                        break
                    assert time.monotonic() < first_stale + READY_WITHIN_SECONDS, f"/readyz per worker: {seen}"
                    time.sleep(0.05)
                degraded_after = time.monotonic() - first_stale

            deadline = time.monotonic() + 20
            while set(statuses(server.port, workers).values()) != {(200, "ok")}:
                assert time.monotonic() < deadline, "/readyz did not come back to ok"
                time.sleep(0.1)

        reads = readers.since(0)
        assert [read.status for read in reads] == [200] * len(reads)
        assert worker_pids(server.process.pid) == workers
        print(f"\n/readyz degraded on all {WORKERS} workers {degraded_after * 1000:.0f} ms after the first stale answer")
