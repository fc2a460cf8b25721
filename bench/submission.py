"""Messages per second and p50 per message from smtplib clients through the submission server to a loopback SMTP
server, beside the same clients sending to that server directly; then the same while 200 connections are open.

Run from the project root: ``python bench/submission.py [clients] [messages-per-client]``. The mail server runs
in a child process and the submission server is a real ``smtpconf submission`` process; each client keeps one
connection (STARTTLS, AUTH once) and sends its messages over it, as a legacy program with a session would.
"""

from __future__ import annotations

import base64
import concurrent.futures
import multiprocessing
import os
import smtplib
import ssl
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from bench.harness import Figure, cpu_seconds, print_table, smtp_server_process
from tests.fixtures.smtp_servers import PASSWORD, USERNAME
from tests.submission.harness import LOOPBACK, Raw, SubmissionProcess, submission_env, write_certificate

MASTER_KEY = base64.b64encode(b"b" * 32).decode()
MESSAGE = (
    "From: Legacy App <app@legacy.example>\r\nTo: ada@example.com\r\nSubject: Nightly report\r\n\r\n"
    + "The nightly job finished without errors.\r\n" * 20
)
RATE_GOAL = 0.8
LATENCY_GOAL = 1.5
#: Connections open at once in the last run: idle ones and the sending clients together (the default limit).
OPEN_CONNECTIONS = 200
#: Idle connections per client address (the default per-address limit is 20).
PER_ADDRESS = 10


@dataclass(frozen=True)
class Run:
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    #: CPU milliseconds per message of each process taking part: the clients, the mail server, the submission server.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def clients_run(connect: Callable[[int], smtplib.SMTP], clients: int, messages: int) -> Run:
    """``clients`` threads, each on its own connection, send ``messages`` messages; started together."""
    start = threading.Barrier(clients + 1)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        smtp = connect(index)
        mine = []
        try:
            start.wait()
            for _ in range(messages):
                began = time.perf_counter()
                smtp.sendmail("app@legacy.example", ["ada@example.com"], MESSAGE)
                mine.append(time.perf_counter() - began)
        finally:
            smtp.quit()
        with lock:
            latencies.extend(mine)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        seconds = time.perf_counter() - began
    latencies.sort()
    return Run(len(latencies), seconds, statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000)


def measure(clients: int = 8, messages: int = 150) -> list[Figure]:
    ca = trustme.CA()
    ca_pem = ca.cert_pem.bytes().decode("ascii")
    context = ssl.create_default_context(cadata=ca_pem)
    with smtp_server_process(ca) as upstream, tempfile.TemporaryDirectory(prefix="bench-submission-") as tmp:
        directory = Path(tmp)
        database = f"sqlite:///{directory / 'smtpconf.db'}"
        tokens = _configure(database, upstream, ca_pem, clients)
        env = submission_env(
            database, MASTER_KEY, write_certificate(ca, directory, "localhost", LOOPBACK),
            SMTPCONF_SMTP_ALLOWED_PORTS=upstream, SMTPCONF_LOG_LEVEL="WARNING",
            # Each client sends far more than the default 600 a minute; the limit is not what is measured here.
            SMTPCONF_SUBMISSION_MESSAGES_PER_MINUTE=10_000_000,
        )
        server = SubmissionProcess(env, directory / "submission.log")
        try:
            def direct(_index: int) -> smtplib.SMTP:
                smtp = smtplib.SMTP("localhost", upstream, local_hostname="[127.0.0.1]", timeout=30)
                smtp.starttls(context=context)
                smtp.login(USERNAME, PASSWORD)
                return smtp

            def through(index: int) -> smtplib.SMTP:
                smtp = smtplib.SMTP(LOOPBACK, server.port, local_hostname="[127.0.0.1]", timeout=30)
                smtp.starttls(context=context)
                smtp.login("*", tokens[index])
                return smtp

            processes = {"clients": os.getpid(), "mail server": multiprocessing.active_children()[0].pid,
                         "submission": server.process.pid}

            def counted(connect: Callable[[int], smtplib.SMTP]) -> Run:
                before = {name: cpu_seconds(pid) for name, pid in processes.items()}
                run = clients_run(connect, clients, messages)
                used = {name: (cpu_seconds(pid) - before[name]) * 1000 / run.messages for name, pid in processes.items()}
                return replace(run, cpu_ms=used)

            clients_run(through, clients, 5)  # warm-up: settings, the credential, pooled upstream sessions
            clients_run(direct, clients, 5)
            runs: dict[str, list[Run]] = {"direct": [], "through": []}
            for _ in range(2):  # alternated, so that drift on a busy machine weighs on both alike
                runs["direct"].append(counted(direct))
                runs["through"].append(counted(through))
            best = {name: max(taken, key=lambda run: run.rate) for name, taken in runs.items()}
            held, loaded = _with_open_connections(server.port, clients, lambda: clients_run(through, clients, messages))
        finally:
            server.stop()
    direct_run, through_run = best["direct"], best["through"]
    rate_ratio = through_run.rate / direct_run.rate
    latency_ratio = through_run.p50_ms / direct_run.p50_ms
    cores = os.cpu_count() or 1
    through_cpu = sum(through_run.cpu_ms.values())
    ceiling = cores * 1000 / through_cpu / direct_run.rate

    def shares(run: Run) -> str:
        return ", ".join(f"{name} {ms:.2f}" for name, ms in run.cpu_ms.items())

    return [
        Figure("submission: msgs/s relayed ÷ direct", rate_ratio, f">= {RATE_GOAL}", rate_ratio >= RATE_GOAL,
               f"{through_run.rate:.0f} msgs/s through the server vs {direct_run.rate:.0f} direct "
               f"({clients} smtplib clients, best of 2 alternated runs of {clients * messages})"),
        Figure("submission: p50 per message ÷ direct", latency_ratio, f"<= {LATENCY_GOAL}", latency_ratio <= LATENCY_GOAL,
               f"p50 {through_run.p50_ms:.2f} ms vs {direct_run.p50_ms:.2f} ms direct: "
               f"+{through_run.p50_ms - direct_run.p50_ms:.2f} ms added per message; "
               f"p99 {through_run.p99_ms:.1f} vs {direct_run.p99_ms:.1f} ms"),
        Figure("submission: msgs/s with 200 connections open ÷ without", loaded.rate / through_run.rate, "~1 (unaffected)",
               held == OPEN_CONNECTIONS - clients and loaded.messages == clients * messages,
               f"{held} idle connections (EHLO done) + {clients} sending held at once: {loaded.rate:.0f} msgs/s, "
               f"p50 {loaded.p50_ms:.2f} ms (without: {through_run.rate:.0f} msgs/s, p50 {through_run.p50_ms:.2f} ms); "
               "every idle one still answers NOOP after"),
        Figure("submission: CPU ms per message, relayed (all processes)", through_cpu, "-", None,
               f"relayed: {shares(through_run)}; direct: {shares(direct_run)}. With every one of the {cores} cores "
               f"busy, relaying could reach at most {ceiling:.2f}x the direct rate"),
    ]


def _configure(database: str, upstream: int, ca_pem: str, clients: int) -> list[str]:
    """System settings naming the loopback server, and one sender token per client."""
    from service.app import create_app
    from service.tokens import create_token

    app = create_app({"database_url": database, "master_key": MASTER_KEY})
    services = app.extensions["smtpconf"]
    try:
        services.db.upgrade()
        admin = {"Authorization": f"Bearer {create_token(services.db, 'bench-admin', ['admin'])}"}
        settings = {
            "host": "localhost", "port": upstream, "security": "starttls", "ca_certificate_pem": ca_pem,
            "from_email": "noreply@example.com", "from_name": "Example Alerts", "username": USERNAME,
            "password": {"source": "plaintext", "value": PASSWORD}, "timeout_seconds": 10,
        }
        saved = app.test_client().put("/v1/smtp", json=settings, headers=admin)
        assert saved.status_code == 200, saved.json
        return [create_token(services.db, f"bench-sender-{i}", ["sender"]) for i in range(clients)]
    finally:
        services.close()


def _with_open_connections(port: int, clients: int, work: Callable[[], Run]) -> tuple[int, Run]:
    """Open idle connections (EHLO done, from several loopback addresses) up to ``OPEN_CONNECTIONS`` with the
    ``clients`` of ``work``, run ``work``, and check that every idle one still answers."""
    idle: list[Raw] = []
    try:
        for n in range(OPEN_CONNECTIONS - clients):
            raw = Raw(LOOPBACK, port, source=f"127.0.2.{1 + n // PER_ADDRESS}", timeout=30)
            if not raw.reply().startswith("220"):
                raise SystemExit(f"idle connection {n} was refused")
            raw.command("EHLO idle.example.test")
            idle.append(raw)
        run = work()
        answering = sum(1 for raw in idle if raw.command("NOOP").startswith("250"))
        return answering, run
    finally:
        for raw in idle:
            raw.close()


def main() -> int:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    started = time.monotonic()
    figures = measure(clients, messages)
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s on loopback (a shared machine worsens them)")
    print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
