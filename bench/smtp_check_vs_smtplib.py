"""Median wall time of run_check against a bare smtplib session doing the same STARTTLS dialogue on loopback.

Run from the project root: ``python bench/smtp_check_vs_smtplib.py [rounds]``. The
server runs in a child process, as a real one would, so that neither client
competes with it for the interpreter lock.
"""

from __future__ import annotations

import multiprocessing
import smtplib
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from service.smtp_check import CheckRequest, DestinationPolicy, ResolvedPassword, run_check
from tests.fixtures.smtp_servers import PASSWORD, USERNAME, start_starttls_smtp_server

FROM = "noreply@example.com"
TO = "ops@example.com"


def _bare_smtplib(port: int, context: ssl.SSLContext, send: bool) -> None:
    # The local name is given so that smtplib does not pay for socket.getfqdn(),
    # which the check engine never calls.
    with smtplib.SMTP("localhost", port, local_hostname="[127.0.0.1]", timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        smtp.ehlo()
        smtp.login(USERNAME, PASSWORD)
        if send:
            message = EmailMessage()
            message["Date"] = format_datetime(datetime.now(UTC))
            message["Message-ID"] = make_msgid(domain="example.com")
            message["From"] = f"Example Alerts <{FROM}>"
            message["To"] = TO
            message["Subject"] = "Test message"
            message.set_content("This is a test message.\n")
            smtp.send_message(message)


def _serve(ca: trustme.CA, channel: Connection) -> None:
    server = start_starttls_smtp_server(ca)
    channel.send(server.port)
    channel.recv()
    server.stop()


def _medians_ms(first: Callable[[], object], second: Callable[[], object], rounds: int) -> tuple[float, float]:
    # Interleaved, so that drift on a busy machine weighs on both alike.
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for function, taken in zip((first, second), samples):
            started = time.perf_counter()
            function()
            taken.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples[0]), statistics.median(samples[1])


def main(rounds: int) -> None:
    ca = trustme.CA()
    ca_pem = ca.cert_pem.bytes().decode("ascii")
    channel, child_channel = multiprocessing.Pipe()
    # fork hands the CA object to the child as is; nothing is running in threads yet.
    child = multiprocessing.get_context("fork").Process(target=_serve, args=(ca, child_channel), daemon=True)
    child.start()
    if not channel.poll(10):
        raise SystemExit("The SMTP server process did not start.")
    port = channel.recv()
    # Built once, like the engine's cached context; creating one costs ~20 ms.
    context = ssl.create_default_context(cadata=ca_pem)
    settings = {
        "host": "localhost", "port": port, "security": "starttls", "ca_certificate_pem": ca_pem,
        "from_email": FROM, "from_name": "Example Alerts", "username": USERNAME, "timeout_seconds": 10,
    }

    def check(send_to: str | None) -> None:
        request = CheckRequest(
            settings=settings,
            get_password=lambda refresh: ResolvedPassword(PASSWORD, "plaintext"),
            policy=DestinationPolicy(allowed_ports=frozenset({port})),
            send_to=send_to,
        )
        result = run_check(request)
        assert result["ok"], result["error"]

    def compare(label: str, send_to: str | None) -> None:
        send = send_to is not None
        check(send_to)  # warm-up: builds the cached TLS context
        _bare_smtplib(port, context, send)
        engine_ms, bare_ms = _medians_ms(lambda: check(send_to), lambda: _bare_smtplib(port, context, send), rounds)
        print(
            f"{label:20} run_check {engine_ms:7.2f} ms   smtplib {bare_ms:7.2f} ms   "
            f"ratio {engine_ms / bare_ms:5.2f}   (median of {rounds})"
        )

    try:
        compare("validate (no mail)", None)
        compare("test mail", TO)
    finally:
        channel.send("stop")
        child.join(timeout=5)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
