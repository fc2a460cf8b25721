"""Sending through the service against smtplib over one reused authenticated connection, and a rotation under load.

Run from the project root: ``python bench/sending.py [rounds]``. A STARTTLS+AUTH
SMTP server runs in a child process (it notes which password authenticated
the session each message came over); the service runs with two workers on
SQLite, its password in its own store. Side by side:

- smtplib: one connection, STARTTLS and AUTH once, then the same message over
  and over (``send_message``), sequentially: messages per second and p50;
- the service: ``POST /v1/tenants/{t}/messages`` with the same content, under
  wrk over one connection (p50, and messages per second sequentially) and over
  several (messages per second).

Then the rotation check: a new password is written to the store while
messages keep going; every message after the write must come over a session
authenticated with the new password, and no message may fail.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import smtplib
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from bench.harness import Figure, checked, print_table, wrk
from tests.fixtures.server import RunningService, service_env
from tests.fixtures.smtp_servers import USERNAME, RecordingHandler, start_smtp_server

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
FIRST, SECOND = "bench-password-1", "bench-password-2"
TENANT = "acme"
FROM = "noreply@example.com"
TO = "ada@example.com"
SUBJECT = "Your weekly report"
TEXT = "Hello,\n\nyour weekly report is ready.\n" * 5
WORKERS = 2
SECONDS = 3
CONNECTIONS = 8
#: Threads that keep sending during the rotation.
SENDERS = 4
GOAL_RATE = 0.8
GOAL_P50 = 1.5


class _RotatingHandler(RecordingHandler):
    """Accepts the passwords it is told to; each message notes the password of its session (not kept: a tag)."""

    def __init__(self) -> None:
        super().__init__(credentials={})
        self.accepted: set[str] = {FIRST}
        self.tags: list[str] = []

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        password = auth_data.password.decode()
        ok = auth_data.login.decode() == USERNAME and password in self.accepted
        if ok:
            session.bench_tag = {FIRST: "first", SECOND: "second"}[password]  # type: ignore[attr-defined]
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.tags.append(getattr(session, "bench_tag", "none"))
        return "250 2.0.0 Ok: queued"


def _serve(ca: trustme.CA, channel: Connection) -> None:
    handler = _RotatingHandler()
    server = start_smtp_server(handler, ca=ca, require_starttls=True, auth_required=True, authenticator=handler.authenticate)
    channel.send(server.port)
    while True:
        command, argument = channel.recv()
        if command == "stop":
            break
        if command == "accept":
            server.controller.loop.call_soon_threadsafe(lambda a=argument: (handler.accepted.clear(), handler.accepted.update(a)))
            channel.send("ok")
        elif command == "tags":
            channel.send(list(handler.tags))
    server.stop()


@contextmanager
def smtp_server(ca: trustme.CA) -> Iterator[tuple[int, Connection]]:
    channel, child_channel = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_serve, args=(ca, child_channel), daemon=True)
    child.start()
    try:
        if not channel.poll(10):
            raise SystemExit("The SMTP server process did not start.")
        yield channel.recv(), channel
    finally:
        channel.send(("stop", None))
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = FROM
    message["To"] = TO
    message["Subject"] = SUBJECT
    message.set_content(TEXT)
    return message


def smtplib_run(port: int, ca_pem: str, seconds: float) -> tuple[float, float]:
    """Messages per second and p50 (ms) over one reused authenticated connection."""
    context = ssl.create_default_context(cadata=ca_pem)
    taken: list[float] = []
    with smtplib.SMTP("localhost", port, local_hostname="[127.0.0.1]", timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.login(USERNAME, FIRST)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            before = time.perf_counter()
            smtp.send_message(_message())
            taken.append((time.perf_counter() - before) * 1000)
        elapsed = time.perf_counter() - started
    return len(taken) / elapsed, statistics.median(taken)


def _post_lua(token: str) -> str:
    body = json.dumps({"to": [TO], "subject": SUBJECT, "text": TEXT}).replace("\\", "\\\\").replace("'", "\\'")
    return (
        "wrk.method = 'POST'\n"
        f"wrk.body = '{body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {token}'\n"
    )


def rotation_check(service: RunningService, admin: dict[str, str], security: dict[str, str], sender: dict[str, str], channel: Connection) -> Figure:
    """Messages keep going while the password is rotated; those after the rotation use the new one, none fails."""
    url = f"{service.url}/v1/tenants/{TENANT}/messages"
    failures: list[int] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                status = session.post(url, json={"to": [TO], "subject": SUBJECT, "text": TEXT}, headers=sender, timeout=30).status_code
                if status != 200:
                    failures.append(status)

    threads = [threading.Thread(target=keep_sending) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    # The provider side of a rotation: the new password works from now on, the old one until it is retired.
    channel.send(("accept", [FIRST, SECOND]))
    channel.recv()
    written = requests.put(f"{service.url}/v1/secrets/smtp/bench", json={"value": SECOND}, headers=security, timeout=10)
    written.raise_for_status()
    channel.send(("tags", None))
    at_rotation = len(channel.recv())
    # The first messages after the write (one per worker at least) must use the new password.
    with requests.Session() as session:
        for _ in range(2 * WORKERS):
            session.post(url, json={"to": [TO], "subject": SUBJECT, "text": TEXT}, headers=sender, timeout=30).raise_for_status()
    time.sleep(1)
    channel.send(("accept", [SECOND]))  # the old password retired
    channel.recv()
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    channel.send(("tags", None))
    tags = channel.recv()
    # Messages in flight while the write landed may still end on a session opened just before it.
    late = tags[at_rotation + SENDERS:]
    old_after = sum(1 for tag in late if tag != "second")
    ok = not failures and old_after == 0 and len(late) > 0
    return Figure(
        "rotation under load: messages on the old password after it, failures", float(old_after + len(failures)), "0", ok,
        f"{len(tags)} messages, {len(tags) - at_rotation} after the write, {len(failures)} failed {sorted(set(failures))}",
        fmt="{:.0f}",
    )


def measure(seconds: int = SECONDS) -> list[Figure]:
    ca = trustme.CA()
    ca_pem = ca.cert_pem.bytes().decode("ascii")
    with smtp_server(ca) as (port, channel), tempfile.TemporaryDirectory(prefix="smtpconf-send-bench-") as workdir:
        env = service_env(f"sqlite:///{workdir}/smtpconf.db", MASTER_KEY, SMTPCONF_SMTP_ALLOWED_PORTS=str(port))
        with RunningService(env, workers=WORKERS, log_path=Path(workdir) / "service.log") as service:
            def bearer(name: str, *roles: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {service.token(name, *roles)}"}

            admin, security = bearer("bench-admin", "admin"), bearer("bench-security", "security")
            sender_token = service.token("bench-sender", "sender")
            sender = {"Authorization": f"Bearer {sender_token}"}
            requests.put(f"{service.url}/v1/secrets/smtp/bench", json={"value": FIRST}, headers=security, timeout=10).raise_for_status()
            requests.put(f"{service.url}/v1/smtp", headers=admin, timeout=10, json={
                "host": "localhost", "port": port, "security": "starttls", "ca_certificate_pem": ca_pem, "from_email": FROM,
                "username": USERNAME, "password": {"source": "internal", "secret": "smtp/bench"},
            }).raise_for_status()
            requests.put(f"{service.url}/v1/tenants/{TENANT}/smtp", json={"from_name": "Acme"}, headers=admin, timeout=10).raise_for_status()
            target = f"{service.url}/v1/tenants/{TENANT}/messages"
            lua = _post_lua(sender_token)
            checked(wrk(target, seconds=1, connections=CONNECTIONS, request_lua=lua), "warm-up")
            smtplib_run(port, ca_pem, 1)
            rates, p50s, one_rates, service_p50s, service_rates = [], [], [], [], []
            for _ in range(3):
                rate, p50 = smtplib_run(port, ca_pem, seconds)
                rates.append(rate)
                p50s.append(p50)
                one = checked(wrk(target, seconds=seconds, connections=1, request_lua=lua), "one connection")
                one_rates.append(one.rps)
                service_p50s.append(one.p50_ms)
                service_rates.append(checked(wrk(target, seconds=seconds, connections=CONNECTIONS, request_lua=lua), "concurrent").rps)
            rotation = rotation_check(service, admin, security, sender, channel)
    # Other work on the machine only lowers throughput and raises latency: each side's best run counts.
    smtp_rate, smtp_p50 = max(rates), min(p50s)
    http_rate, http_one_rate, http_p50 = max(service_rates), max(one_rates), min(service_p50s)
    return [
        Figure("smtplib, one reused connection: msgs/s", smtp_rate, "-", None, f"p50 {smtp_p50:.2f} ms", fmt="{:.0f}"),
        Figure(f"service POST, {CONNECTIONS} connections: msgs/s", http_rate, "-", None, f"{WORKERS} workers", fmt="{:.0f}"),
        Figure("service POST, one connection: msgs/s", http_one_rate, "-", None, f"p50 {http_p50:.2f} ms", fmt="{:.0f}"),
        # Not like for like (more connections on one side), so shown beside the goal, never as meeting it.
        Figure(
            "msgs/s service / smtplib", http_rate / smtp_rate, "-", None,
            f"{http_rate:.0f} vs {smtp_rate:.0f} ({CONNECTIONS} HTTP connections vs one SMTP connection)",
        ),
        Figure(
            "msgs/s service / smtplib, both sequential", http_one_rate / smtp_rate, f">= {GOAL_RATE}",
            http_one_rate / smtp_rate >= GOAL_RATE, f"{http_one_rate:.0f} vs {smtp_rate:.0f}",
        ),
        Figure(
            "p50 service / smtplib", http_p50 / smtp_p50, f"<= {GOAL_P50}", http_p50 / smtp_p50 <= GOAL_P50,
            f"{http_p50:.2f} vs {smtp_p50:.2f} ms, one connection each",
        ),
        rotation,
    ]


if __name__ == "__main__":
    print_table(measure(int(sys.argv[1]) if len(sys.argv) > 1 else SECONDS))
