"""Throughput right after start and after a write, and what a short TTL costs under load.

Run from the project root: ``python bench/warmup.py [TTL_SECONDS_OF_LOAD]``.
Everything runs on loopback: a real OpenBao (the test fixture's server, with
its file audit device) and ``smtpconf serve --workers 2`` on SQLite. wrk
generates the load.

1. The per-second series: back-to-back one-second wrk runs on the effective
   endpoint (with the password from OpenBao) from the moment the service
   answers ``/healthz``, then the same after a settings write and after an
   invalidation; each second is shown against the steady state (the median
   of the later seconds). Goal: every second from the second one on at
   >= 0.8x the steady state.
2. With ``cache_ttl_seconds`` 5 and then 300, a load run of
   TTL_SECONDS_OF_LOAD (default 60) seconds each: the p99 of both, and how
   many reads OpenBao's audit log recorded during the TTL-5 run, per TTL
   (refresh ahead: about 1.1 per worker that served requests).
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.harness import Figure, Load, print_table, require_wrk, wrk
from tests.fixtures.openbao import OpenBao
from tests.fixtures.server import RunningService, service_env

WORKERS = 2
CONNECTIONS = 16
MOUNT = "kv-warmup"
EFFECTIVE = "/v1/smtp/effective?include_password=true"
SERIES_SECONDS = 8
STEADY_FROM = 4


def series(url: str, headers: dict[str, str], seconds: int) -> list[Load]:
    return [wrk(url, seconds=1, connections=CONNECTIONS, headers=headers) for _ in range(seconds)]


def show(name: str, loads: list[Load], steady: float) -> Figure:
    cells = "  ".join(f"{load.rps:6.0f} ({load.rps / steady:4.2f}x)" for load in loads)
    worst = min(load.rps / steady for load in loads[1:])
    failed = sum(load.failures for load in loads)
    verdict = "yes" if worst >= 0.8 and not failed else "NO"
    print(f"{name:<22} {cells}\n{'':<22} worst from the 2nd second: {worst:.2f}x (goal >= 0.8x: {verdict}); failed requests: {failed}")
    series_text = " ".join(f"{load.rps / steady:.2f}" for load in loads)
    return Figure(f"effective req/s {name}, worst 1-s window from the 2nd", worst, ">= 0.8x steady",
                  worst >= 0.8 and not failed, f"series {series_text}", "{:.2f}x")


def main() -> int:
    require_wrk()
    load_seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    print_table(measure(load_seconds))
    return 0


def measure(load_seconds: int = 60) -> list[Figure]:
    """Run both parts; print the series as they come and return the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="smtpconf-bench-warmup-"))
    (workdir / "openbao").mkdir()
    openbao = OpenBao(workdir / "openbao")
    openbao.start()
    service: RunningService | None = None
    try:
        openbao.enable_kv(MOUNT, version=2)
        openbao.write_secret(MOUNT, "mail/smtp", {"password": "warmup-password"})
        token = openbao.create_token([openbao.kv_read_policy("warmup-read", MOUNT, version=2)])
        database = f"sqlite:///{workdir / 'smtpconf.db'}"
        env = service_env(database, base64.b64encode(os.urandom(32)).decode(), WARMUP_VAULT_TOKEN=token)
        # Configure through a first instance, then measure a fresh start of the service.
        with RunningService(env, workers=1) as setup:
            security = {"Authorization": f"Bearer {setup.token('warmup-security', 'security')}"}
            admin = {"Authorization": f"Bearer {setup.token('warmup-admin', 'admin')}"}
            sender = {"Authorization": f"Bearer {setup.token('warmup-sender', 'secret-reader')}"}
            connection = {
                "type": "hashicorp_vault", "url": openbao.url, "mount": MOUNT, "kv_version": 2,
                "auth": {"method": "token", "token": {"env": "WARMUP_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
                "cache_ttl_seconds": 300, "max_stale_seconds": 3600, "timeout_seconds": 5,
            }
            requests.put(f"{setup.url}/v1/secret-providers/warmup-vault", json=connection, headers=security, timeout=10).raise_for_status()
            settings = {
                "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
                "password": {"source": "hashicorp_vault", "provider": "warmup-vault", "path": "mail/smtp", "key": "password"},
            }
            requests.put(f"{setup.url}/v1/smtp", json=settings, headers=admin, timeout=10).raise_for_status()

        service = RunningService(env, workers=WORKERS, log_path=workdir / "service.log")
        effective = service.url + EFFECTIVE
        after_start = series(effective, sender, SERIES_SECONDS)
        steady = statistics.median(load.rps for load in after_start[STEADY_FROM:])
        requests.put(f"{service.url}/v1/smtp", json={**settings, "from_name": "Changed"}, headers=admin, timeout=10).raise_for_status()
        after_write = series(effective, sender, SERIES_SECONDS // 2)
        requests.post(f"{service.url}/v1/secret-cache/invalidate", json={}, headers=security, timeout=10).raise_for_status()
        after_invalidation = series(effective, sender, SERIES_SECONDS // 2)
        healthz = statistics.median(load.rps for load in series(service.url + "/healthz", {}, 3))
        print(f"\nrequests per second on {EFFECTIVE} ({WORKERS} workers, {CONNECTIONS} connections), one-second windows;"
              f" steady state {steady:.0f}/s, /healthz {healthz:.0f}/s")
        figures = [
            show("after start", after_start, steady),
            show("after a settings write", after_write, steady),
            show("after an invalidation", after_invalidation, steady),
        ]

        p99: dict[int, float] = {}
        reads_per_ttl = 0.0
        for ttl in (5, 300):
            requests.put(
                f"{service.url}/v1/secret-providers/warmup-vault", json={**connection, "cache_ttl_seconds": ttl},
                headers=security, timeout=10,
            ).raise_for_status()
            wrk(effective, seconds=2, connections=CONNECTIONS, headers=sender)  # every worker has read it again
            before = openbao.kv_reads(MOUNT, "mail/smtp")
            load = wrk(effective, seconds=load_seconds, connections=CONNECTIONS, headers=sender)
            time.sleep(0.5)  # the audit device writes asynchronously
            reads = openbao.kv_reads(MOUNT, "mail/smtp") - before
            p99[ttl] = load.p99_ms
            print(f"cache_ttl_seconds {ttl:>3}: {load.rps:.0f} req/s over {load_seconds} s, p50 {load.p50_ms:.2f} ms, "
                  f"p99 {load.p99_ms:.2f} ms, {load.failures} failed; OpenBao reads {reads}")
            if ttl == 5:
                reads_per_ttl = reads / (load_seconds / ttl)
        ratio = p99[5] / p99[300]
        print(f"p99 with TTL 5 / p99 with TTL 300: {ratio:.2f} (goal <= 1.5: {'yes' if ratio <= 1.5 else 'NO'}); "
              f"OpenBao reads per TTL with TTL 5: {reads_per_ttl:.2f} (about 1.1 per worker that served requests, "
              f"{WORKERS} workers at most; wrk's keep-alive connections may all land on one)")
        figures.append(Figure("p99 effective, TTL 5 s / TTL 300 s", ratio, "<= 1.5", ratio <= 1.5,
                              f"{p99[5]:.1f} ms / {p99[300]:.1f} ms over {load_seconds} s each", "{:.2f}"))
        figures.append(Figure("OpenBao reads per TTL under load, TTL 5 s", reads_per_ttl, "~1.1 per serving worker", None,
                              f"{WORKERS} workers; refresh ahead in the last tenth of the TTL"))
        return figures
    finally:
        if service is not None:
            service.stop()
        openbao.stop()


if __name__ == "__main__":
    sys.exit(main())
