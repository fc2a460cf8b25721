"""Serving stacks side by side over HTTPS: the effective settings with the password against OpenBao's own KV read.

Run from the project root: ``python bench/serving_stacks.py`` (``make bench``
runs it too). In one run, on loopback, everything over HTTPS with keep-alive
connections: a real OpenBao's KV v2 read of the secret (what a sender would do
instead of asking this service; its audit device is turned off, so it runs
at its fastest), the service under gunicorn (``smtpconf
serve``, the default) and the same WSGI app under granian (a Rust HTTP server;
measured, not shipped). The service on SQLite with 1 tenant and with 10,000.
Each figure is the best of several alternated wrk runs: other work on the
machine only lowers throughput and raises latency.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
import sqlalchemy as sa
import trustme
from cryptography.hazmat.primitives import serialization

from bench.harness import Figure, checked, print_table, rss_mb, worker_pids, wrk
from service.db import Database, SmtpSettings
from tests.fixtures.openbao import OpenBao
from tests.fixtures.server import RunningService, free_port, service_env

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
MOUNT = "kv-bench"
SECRET_PATH = "mail/smtp"
PASSWORD = "bench-password"
WORKERS = 2
CONNECTIONS = 16
SECONDS = 2
ROUNDS = 5
TENANTS = 10_000
EFFECTIVE = "/v1/smtp/effective?include_password=true"


@dataclasses.dataclass
class Target:
    """One thing under load: a URL and the headers it needs."""

    name: str
    url: str
    headers: dict[str, str]
    request_lua: str = ""
    rps: list[float] = dataclasses.field(default_factory=list)
    p50: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)

    def measure(self) -> None:
        loaded = checked(wrk(self.url, seconds=SECONDS, connections=CONNECTIONS, headers=self.headers,
                             request_lua=self.request_lua), self.name)
        single = checked(wrk(self.url, seconds=1, connections=1, headers=self.headers,
                             request_lua=self.request_lua), self.name)
        self.rps.append(loaded.rps)
        self.p99.append(loaded.p99_ms)
        self.p50.append(single.p50_ms)

    @property
    def best(self) -> tuple[float, float, float]:
        return max(self.rps), min(self.p50), min(self.p99)


class Granian:
    """The same WSGI app under granian, over HTTPS (granian takes PKCS#8 keys only)."""

    def __init__(self, env: dict[str, str], workdir: Path, tls: tuple[Path, Path] | None) -> None:
        binary = shutil.which("granian")
        if binary is None:
            raise SystemExit("granian is not installed: pip install granian")
        ssl_args: list[str] = []
        if tls:
            pkcs8 = workdir / "granian.key"
            private = serialization.load_pem_private_key(tls[1].read_bytes(), password=None)
            pkcs8.write_bytes(private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            ssl_args = ["--ssl-certificate", str(tls[0]), "--ssl-keyfile", str(pkcs8)]
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = open(workdir / f"granian-{self.port}.log", "wb")
        multiproc = Path(tempfile.mkdtemp(prefix="smtpconf-metrics-"))
        plain_env = {k: v for k, v in env.items() if not k.startswith("SMTPCONF_TLS_")}
        self.process = subprocess.Popen(
            [binary, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(WORKERS),
             *ssl_args, "--no-access-log", "service.wsgi:app"],
            env={**plain_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}, stdout=self.log, stderr=self.log,
            start_new_session=True,
        )

    def wait_ready(self, verify: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", verify=verify, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit("granian did not become healthy")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        self.log.close()


def write_tls(ca: trustme.CA, workdir: Path) -> tuple[Path, Path, Path]:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = workdir / "tls.crt", workdir / "tls.key", workdir / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def seed_tenants(database: Path, copy: Path) -> None:
    with sqlite3.connect(database) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    db = Database(f"sqlite:///{copy}")
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as session:
        session.execute(sa.insert(SmtpSettings), [
            {"scope": f"tenant:t-{i}", "document": {"from_name": f"Tenant {i}"}, "version": 1, "updated_at": now,
             "updated_by": "bench"}
            for i in range(TENANTS)
        ])
    db.dispose()


def random_tenant_lua() -> str:
    return (
        f"math.randomseed({int(time.time())})\n"
        "request = function()\n"
        "  return wrk.format(nil, string.format("
        f"'/v1/tenants/t-%d/smtp/effective?include_password=true', math.random(0, {TENANTS - 1})))\n"
        "end\n"
    )


def measure() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="smtpconf-stacks-") as tmp:
        workdir = Path(tmp)
        (workdir / "openbao").mkdir()
        # Without the file audit device the tests count reads with: OpenBao at its fastest.
        openbao = OpenBao(workdir / "openbao", audit=False)
        openbao.start()
        services: list[Any] = []
        try:
            openbao.enable_kv(MOUNT, version=2)
            openbao.write_secret(MOUNT, SECRET_PATH, {"password": PASSWORD})
            vault_token = openbao.create_token([openbao.kv_read_policy("bench-read", MOUNT, version=2)])
            ca = trustme.CA()
            cert, key, ca_file = write_tls(ca, workdir)
            database = workdir / "smtpconf.db"
            env = service_env(
                f"sqlite:///{database}", MASTER_KEY, SMTPCONF_TLS_CERT_FILE=str(cert), SMTPCONF_TLS_KEY_FILE=str(key),
                SMTPCONF_BENCH_VAULT_TOKEN=vault_token,
            )
            gunicorn = RunningService(env, workers=WORKERS, log_path=workdir / "gunicorn.log", verify=str(ca_file))
            services.append(gunicorn)
            admin = {"Authorization": f"Bearer {gunicorn.token('bench-admin', 'admin')}"}
            security = {"Authorization": f"Bearer {gunicorn.token('bench-security', 'security')}"}
            sender = {"Authorization": f"Bearer {gunicorn.token('bench-sender', 'secret-reader')}"}
            with requests.Session() as http:
                http.put(gunicorn.url + "/v1/secret-providers/bench-vault", headers=security, timeout=30,
                         verify=str(ca_file), json={
                    "type": "hashicorp_vault", "url": openbao.tls_url, "ca_certificate_pem": openbao.ca_pem,
                    "mount": MOUNT, "kv_version": 2, "auth": {"method": "token", "token": {"env": "SMTPCONF_BENCH_VAULT_TOKEN"}},
                    "allowed_secrets": ["mail/*"], "cache_ttl_seconds": 300,
                }).raise_for_status()
                http.put(gunicorn.url + "/v1/smtp", headers=admin, timeout=30, verify=str(ca_file), json={
                    "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
                    "password": {"source": "hashicorp_vault", "provider": "bench-vault", "path": SECRET_PATH,
                                 "key": "password"},
                }).raise_for_status()
                answer = http.get(gunicorn.url + EFFECTIVE, headers=sender, timeout=30, verify=str(ca_file)).json()
                assert answer["password"] == PASSWORD, answer
            seed_tenants(database, workdir / "tenants.db")
            many = RunningService({**env, "SMTPCONF_DATABASE_URL": f"sqlite:///{workdir / 'tenants.db'}"},
                                  workers=WORKERS, log_path=workdir / "tenants.log", verify=str(ca_file))
            services.append(many)
            granian = Granian(env, workdir, (cert, key))
            services.append(granian)
            granian.wait_ready(str(ca_file))
            assert requests.get(granian.url + EFFECTIVE, headers=sender, verify=str(ca_file), timeout=30).ok
            # The same over plain HTTP (loopback clients may be sent secrets without TLS).
            plain_env = {k: v for k, v in env.items() if not k.startswith("SMTPCONF_TLS_")}
            gunicorn_http = RunningService(plain_env, workers=WORKERS, log_path=workdir / "gunicorn-http.log")
            services.append(gunicorn_http)
            granian_http = Granian(env, workdir, None)
            services.append(granian_http)
            granian_http.wait_ready(str(ca_file))

            vault_read = f"/v1/{MOUNT}/data/{SECRET_PATH}"
            vault = {"X-Vault-Token": vault_token}
            groups = {
                "HTTPS": [
                    Target("OpenBao KV read", openbao.tls_url + vault_read, vault),
                    Target("gunicorn effective+password", gunicorn.url + EFFECTIVE, sender),
                    Target("granian effective+password", granian.url + EFFECTIVE, sender),
                    Target(f"gunicorn, {TENANTS:,} tenants", many.url + "/", sender, random_tenant_lua()),
                    Target("gunicorn /healthz", gunicorn.url + "/healthz", {}),
                ],
                "HTTP": [
                    Target("OpenBao KV read", openbao.url + vault_read, vault),
                    Target("gunicorn effective+password", gunicorn_http.url + EFFECTIVE, sender),
                    Target("granian effective+password", granian_http.url + EFFECTIVE, sender),
                ],
            }
            for _ in range(ROUNDS):
                for targets in groups.values():
                    for target in targets:
                        target.measure()
            memory = {
                name: max(rss_mb(pid) for pid in worker_pids(process.pid))
                for name, process in (("gunicorn", gunicorn.process), ("granian", granian.process))
            }
        finally:
            for service in services:
                service.stop()
            openbao.stop()
    return [figure for scheme, targets in groups.items() for figure in figures(scheme, targets)] + [
        Figure(f"{name}: RSS of the biggest worker after the runs (MB)", size, "-", None, f"{WORKERS} workers", "{:.1f}")
        for name, size in memory.items()
    ]


def figures(scheme: str, targets: list[Target]) -> list[Figure]:
    """Each target against the first (OpenBao's read over the same scheme)."""
    bao_rps, bao_p50, bao_p99 = targets[0].best
    out = []
    for target in targets:
        rps, p50, p99 = target.best
        out.append(Figure(
            f"{scheme} {target.name}: req/s, {CONNECTIONS} connections", rps, "-", None,
            f"{rps / bao_rps:.2f}x OpenBao's {bao_rps:.0f} (goal >= 0.95x)", "{:.0f}"))
        out.append(Figure(
            f"{scheme} {target.name}: p50 ms, 1 connection", p50, "-", None,
            f"{p50 / bao_p50:.2f}x OpenBao's {bao_p50:.3f} (goal <= 1.3x)", "{:.3f}"))
        out.append(Figure(
            f"{scheme} {target.name}: p99 ms, {CONNECTIONS} connections", p99, "-", None,
            f"{p99 / bao_p99:.2f}x OpenBao's {bao_p99:.3f} (goal <= 1.5x)", "{:.3f}"))
    return out


if __name__ == "__main__":
    started = time.monotonic()
    table = measure()
    print(f"\nHTTPS and HTTP on loopback, keep-alive, {WORKERS} workers each, best of {ROUNDS} alternated runs; "
          f"{time.monotonic() - started:.0f} s")
    print_table(table)
