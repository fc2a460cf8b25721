"""``/readyz`` latency while a secret manager hangs, and how soon every worker reports it.

Run from the project root: ``python bench/readyz.py [REQUESTS]``. Everything
runs on loopback: a real OpenBao (the test fixture's server), frozen with
SIGSTOP once every worker holds the password, and ``smtpconf serve --workers 4``
on SQLite. Readers keep polling the effective settings (served stale while the
manager hangs); meanwhile REQUESTS (default 400) ``/readyz`` calls, each on a
fresh connection so that every worker answers some, are timed. Goal: every
answer under 100 ms, and ``degraded`` on every answer from 2 s after the first
stale read.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from tests.conftest import MASTER_KEY
from tests.fixtures.openbao import OpenBao
from tests.fixtures.server import RunningService, service_env

WORKERS = 4
MOUNT = "kv-readyz"
CONNECTION = "bench-vault"
EFFECTIVE = "/v1/smtp/effective?include_password=true"


def main(requests_count: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / "openbao").mkdir()
        bao = OpenBao(directory / "openbao")
        bao.start()
        try:
            bao.enable_kv(MOUNT, version=2)
            bao.write_secret(MOUNT, "mail/smtp", {"password": "bench-password"})
            policy = bao.kv_read_policy("readyz-read", MOUNT, version=2)
            env = service_env(f"sqlite:///{directory / 'smtpconf.db'}", MASTER_KEY, BENCH_VAULT_TOKEN=bao.create_token([policy]))
            with RunningService(env, workers=WORKERS, log_path=directory / "server.log") as server:
                run(server, bao, requests_count)
        finally:
            bao.stop()


def run(server: RunningService, bao: OpenBao, requests_count: int) -> None:
    security = {"Authorization": f"Bearer {server.token('bench-security', 'security')}"}
    admin = {"Authorization": f"Bearer {server.token('bench-admin', 'admin')}"}
    sender = {"Authorization": f"Bearer {server.token('bench-sender', 'secret-reader')}"}
    connection = {
        "type": "hashicorp_vault", "url": bao.url, "mount": MOUNT, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "BENCH_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
        "cache_ttl_seconds": 1, "max_stale_seconds": 300, "timeout_seconds": 10,
    }
    assert requests.put(f"{server.url}/v1/secret-providers/{CONNECTION}", json=connection, headers=security, timeout=10).ok
    settings = {
        "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
        "password": {"source": "hashicorp_vault", "provider": CONNECTION, "path": "mail/smtp", "key": "password"},
    }
    assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).ok
    for _ in range(40):  # fresh connections: every worker fetches the value once
        assert requests.get(server.url + EFFECTIVE, headers=sender, timeout=10).ok

    stop = threading.Event()
    first_stale: list[float] = []

    def read() -> None:
        while not stop.is_set():
            body = requests.get(server.url + EFFECTIVE, headers=sender, timeout=30).json()
            if body.get("password_stale") and not first_stale:
                first_stale.append(time.monotonic())

    readers = [threading.Thread(target=read, daemon=True) for _ in range(4)]
    for thread in readers:
        thread.start()
    timings: list[tuple[float, float, str]] = []
    with bao.hung():
        for _ in range(requests_count):
            started = time.monotonic()
            body = requests.get(server.url + "/readyz", timeout=10, headers={"Connection": "close"}).json()
            timings.append((started, time.monotonic() - started, body["providers"][CONNECTION]["status"]))
        stop.set()
    for thread in readers:
        thread.join(timeout=30)

    elapsed = sorted(t for _, t, _ in timings)
    p50 = statistics.median(elapsed) * 1000
    p99 = elapsed[int(len(elapsed) * 0.99) - 1] * 1000
    worst = elapsed[-1] * 1000
    print(f"/readyz with OpenBao hung, {WORKERS} workers, {len(timings)} requests:")
    print(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms (goal: every answer < 100 ms: {'yes' if worst < 100 else 'NO'})")
    if first_stale:
        late = [status for started, _, status in timings if started >= first_stale[0] + 2 and status != "degraded"]
        degraded = [started for started, _, status in timings if status == "degraded"]
        since = (min(degraded) - first_stale[0]) * 1000 if degraded else float("nan")
        print(f"  first 'degraded' answer {since:.0f} ms after the first stale read; "
              f"answers not 'degraded' from 2 s after it: {len(late)}")
    else:
        print("  no read was served stale during the run")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
