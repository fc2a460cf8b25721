"""Goals 2 and 3 side by side: the service against a bare Flask app and against OpenBao's own KV read.

Run from the project root: ``python bench/serving_stacks.py`` (``make bench``
runs it too). In one run, on loopback, keep-alive connections, 2 workers each:

- over HTTPS: a real OpenBao (TLS, Raft storage, no audit device: at its
  fastest) reading the KV v2 secret, against ``smtpconf serve`` (gunicorn's
  master, the service's own front in each worker) answering the effective
  settings with that secret as password (held in memory), among 1 tenant and
  among 10,000;
- over plain HTTP: OpenBao's dev server (in-memory storage) reading the same
  secret, against the same routes, and a bare Flask app answering
  ``{"status": "ok"}`` under the same server and worker count (goal 2's
  baseline); plain ``gunicorn service.wsgi:app`` (gthread) and granian (a Rust
  server; measured, not shipped) serve the same app for comparison.

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
FRONT = "service.front.worker.FrontWorker"


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


class Gunicorn:
    """``gunicorn APP`` with a worker class, over plain HTTP: the bare Flask app or the service run by hand."""

    def __init__(self, app: str, worker_class: str, env: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"{name}.log", "wb")
        plain_env = {k: v for k, v in env.items() if not k.startswith("SMTPCONF_TLS_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-k", worker_class, "--threads", "8",
             "-b", f"127.0.0.1:{self.port}", "--no-control-socket", app],
            env={**plain_env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="smtpconf-metrics-")},
            stdout=self.log, stderr=self.log, start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
        )

    def wait_ready(self, verify: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit(f"gunicorn {self.process.args} did not become healthy")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        self.log.close()


class DevOpenBao:
    """``bao server -dev``: in-memory storage, plain HTTP, KV v2 at ``secret/``."""

    def __init__(self, workdir: Path) -> None:
        from tests.fixtures.openbao import bao_binary

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "bench-dev-root"
        self.log = open(workdir / "openbao-dev.log", "wb")
        self.process = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-root-token-id={self.token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        headers = {"X-Vault-Token": self.token}
        deadline = time.monotonic() + 30
        while True:
            try:
                written = requests.post(f"{self.url}/v1/secret/data/{SECRET_PATH}", headers=headers, timeout=2,
                                        json={"data": {"password": PASSWORD}})
                if written.ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the OpenBao dev server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        self.log.close()


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
            dev = DevOpenBao(workdir)
            services.append(dev)
            ca = trustme.CA()
            cert, key, ca_file = write_tls(ca, workdir)
            database = workdir / "smtpconf.db"
            env = service_env(
                f"sqlite:///{database}", MASTER_KEY, SMTPCONF_TLS_CERT_FILE=str(cert), SMTPCONF_TLS_KEY_FILE=str(key),
                SMTPCONF_BENCH_VAULT_TOKEN=vault_token,
            )
            served = RunningService(env, workers=WORKERS, log_path=workdir / "serve.log", verify=str(ca_file))
            services.append(served)
            admin = {"Authorization": f"Bearer {served.token('bench-admin', 'admin')}"}
            security = {"Authorization": f"Bearer {served.token('bench-security', 'security')}"}
            sender = {"Authorization": f"Bearer {served.token('bench-sender', 'secret-reader')}"}
            with requests.Session() as http:
                http.put(served.url + "/v1/secret-providers/bench-vault", headers=security, timeout=30,
                         verify=str(ca_file), json={
                    "type": "hashicorp_vault", "url": openbao.tls_url, "ca_certificate_pem": openbao.ca_pem,
                    "mount": MOUNT, "kv_version": 2, "auth": {"method": "token", "token": {"env": "SMTPCONF_BENCH_VAULT_TOKEN"}},
                    "allowed_secrets": ["mail/*"], "cache_ttl_seconds": 300,
                }).raise_for_status()
                http.put(served.url + "/v1/smtp", headers=admin, timeout=30, verify=str(ca_file), json={
                    "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
                    "password": {"source": "hashicorp_vault", "provider": "bench-vault", "path": SECRET_PATH,
                                 "key": "password"},
                }).raise_for_status()
                answer = http.get(served.url + EFFECTIVE, headers=sender, timeout=30, verify=str(ca_file)).json()
                assert answer["password"] == PASSWORD, answer
            seed_tenants(database, workdir / "tenants.db")
            tenants_env = {**env, "SMTPCONF_DATABASE_URL": f"sqlite:///{workdir / 'tenants.db'}"}
            many = RunningService(tenants_env, workers=WORKERS, log_path=workdir / "tenants.log", verify=str(ca_file))
            services.append(many)
            # The same over plain HTTP (loopback clients may be sent secrets without TLS).
            plain_env = {k: v for k, v in env.items() if not k.startswith("SMTPCONF_TLS_")}
            served_http = RunningService(plain_env, workers=WORKERS, log_path=workdir / "serve-http.log")
            services.append(served_http)
            many_http = RunningService({k: v for k, v in tenants_env.items() if not k.startswith("SMTPCONF_TLS_")},
                                       workers=WORKERS, log_path=workdir / "tenants-http.log")
            services.append(many_http)
            bare = Gunicorn("bench.bare_flask:app", FRONT, env, workdir, "bare-flask")
            gthread = Gunicorn("service.wsgi:app", "gthread", env, workdir, "gthread")
            granian = Granian(env, workdir, None)
            services += [bare, gthread, granian]
            for started in (bare, gthread, granian):
                started.wait_ready(str(ca_file))
            for started in (gthread, granian):
                assert requests.get(started.url + EFFECTIVE, headers=sender, timeout=30).json()["password"] == PASSWORD

            vault_read = f"/v1/{MOUNT}/data/{SECRET_PATH}"
            groups = {
                "HTTPS": [
                    Target("OpenBao (TLS, Raft) KV read", openbao.tls_url + vault_read, {"X-Vault-Token": vault_token}),
                    Target("smtpconf serve, effective+password", served.url + EFFECTIVE, sender),
                    Target(f"smtpconf serve, the same among {TENANTS:,} tenants", many.url + "/", sender,
                           random_tenant_lua()),
                    Target("smtpconf serve, /healthz", served.url + "/healthz", {}),
                ],
                "HTTP": [
                    Target("OpenBao dev server KV read", f"{dev.url}/v1/secret/data/{SECRET_PATH}",
                           {"X-Vault-Token": dev.token}),
                    Target("smtpconf serve, effective+password", served_http.url + EFFECTIVE, sender),
                    Target(f"smtpconf serve, the same among {TENANTS:,} tenants", many_http.url + "/", sender,
                           random_tenant_lua()),
                    Target("smtpconf serve, /healthz", served_http.url + "/healthz", {}),
                    Target("bare Flask {status: ok}, same server", bare.url + "/healthz", {}),
                    Target("gunicorn gthread, effective+password", gthread.url + EFFECTIVE, sender),
                    Target("granian, effective+password", granian.url + EFFECTIVE, sender),
                ],
            }
            for _ in range(ROUNDS):
                for targets in groups.values():
                    for target in targets:
                        target.measure()
            memory = {
                name: max(rss_mb(pid) for pid in worker_pids(process.pid))
                for name, process in (("smtpconf serve", served.process), ("granian", granian.process))
            }
        finally:
            for service in services:
                service.stop()
            openbao.stop()
    print_side_by_side(groups)
    return [figure for scheme, targets in groups.items() for figure in figures(scheme, targets)] + [
        Figure(f"{name}: RSS of the biggest worker after the runs (MB)", size, "-", None, f"{WORKERS} workers", "{:.1f}")
        for name, size in memory.items()
    ]


def _bare(targets: list[Target]) -> Target | None:
    return next((target for target in targets if target.name.startswith("bare Flask")), None)


def figures(scheme: str, targets: list[Target]) -> list[Figure]:
    """Goal 3: each target against the first (OpenBao over the same scheme); goal 2: the service's
    effective settings with the password against the bare Flask app under the same server."""
    bao_rps, bao_p50, bao_p99 = targets[0].best
    out = []
    for target in targets:
        rps, p50, p99 = target.best
        service = target.name.startswith("smtpconf serve") and "/healthz" not in target.name
        out.append(Figure(
            f"{scheme} {target.name}: req/s, {CONNECTIONS} connections", rps, ">= 0.95x" if service else "-",
            rps / bao_rps >= 0.95 if service else None, f"{rps / bao_rps:.2f}x OpenBao's {bao_rps:.0f}", "{:.0f}"))
        out.append(Figure(
            f"{scheme} {target.name}: p50 ms, 1 connection", p50, "<= 1.3x" if service else "-",
            p50 / bao_p50 <= 1.3 if service else None, f"{p50 / bao_p50:.2f}x OpenBao's {bao_p50:.3f}", "{:.3f}"))
        out.append(Figure(
            f"{scheme} {target.name}: p99 ms, {CONNECTIONS} connections", p99, "<= 1.5x" if service else "-",
            p99 / bao_p99 <= 1.5 if service else None, f"{p99 / bao_p99:.2f}x OpenBao's {bao_p99:.3f}", "{:.3f}"))
    bare = _bare(targets)
    if bare is not None:
        bare_rps, bare_p50, _ = bare.best
        rps, p50, _ = targets[1].best
        out.append(Figure(f"{scheme} goal 2: effective+password req/s against bare Flask", rps / bare_rps,
                          ">= 0.85x", rps / bare_rps >= 0.85, f"{rps:.0f} against {bare_rps:.0f}"))
        out.append(Figure(f"{scheme} goal 2: effective+password p50 against bare Flask", p50 / bare_p50,
                          "<= 1.2x", p50 / bare_p50 <= 1.2, f"{p50:.3f} against {bare_p50:.3f} ms"))
    return out


def print_side_by_side(groups: dict[str, list[Target]]) -> None:
    """One line per target: its figures, against OpenBao (goal 3) and against bare Flask (goal 2)."""
    bare = _bare(groups["HTTP"])
    rows = [["scheme", "target", "req/s", "p50 ms", "p99 ms", "vs OpenBao: req/s, p50, p99", "vs bare Flask: req/s, p50"]]
    for scheme, targets in groups.items():
        bao = targets[0].best
        for target in targets:
            rps, p50, p99 = target.best
            against_bare = f"{rps / bare.best[0]:.2f}x, {p50 / bare.best[1]:.2f}x" if bare else "-"
            rows.append([scheme, target.name, f"{rps:.0f}", f"{p50:.3f}", f"{p99:.2f}",
                         f"{rps / bao[0]:.2f}x, {p50 / bao[1]:.2f}x, {p99 / bao[2]:.2f}x", against_bare])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))
    print("goals: 2) effective+password >= 0.85x bare Flask's req/s, p50 <= 1.2x; "
          "3) >= 0.95x OpenBao's req/s, p50 <= 1.3x, p99 <= 1.5x")


if __name__ == "__main__":
    started = time.monotonic()
    table = measure()
    print(f"\nloopback, keep-alive, {WORKERS} workers each, best of {ROUNDS} alternated runs; "
          f"{time.monotonic() - started:.0f} s")
    print_table(table)
