"""Median wall time of run_check against a bare smtplib session doing the same STARTTLS dialogue on loopback.

Run from the project root: ``python bench/smtp_check_vs_smtplib.py [rounds]``. The
server runs in a child process, as a real one would, so that neither client
competes with it for the interpreter lock.
"""

from __future__ import annotations

import functools
import smtplib
import ssl
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from bench.harness import Figure, interleaved_medians, print_table, smtp_server_process
from service.smtp_check import CheckRequest, DestinationPolicy, ResolvedPassword, run_check
from tests.fixtures.smtp_servers import PASSWORD, USERNAME

FROM = "noreply@example.com"
TO = "ops@example.com"
GOAL = 1.2


def bare_smtplib(port: int, context: ssl.SSLContext, send: bool) -> None:
    """The same dialogue as the check engine's, with nothing around it."""
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


def measure(rounds: int) -> list[Figure]:
    """run_check ÷ bare smtplib, for a validation and for a test mail."""
    ca = trustme.CA()
    ca_pem = ca.cert_pem.bytes().decode("ascii")
    figures = []
    with smtp_server_process(ca) as port:
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

        for label, send_to in (("validate", None), ("test mail", TO)):
            send = send_to is not None
            check(send_to)  # warm-up: builds the cached TLS context
            bare_smtplib(port, context, send)
            engine_ms, bare_ms = interleaved_medians(
                functools.partial(check, send_to), functools.partial(bare_smtplib, port, context, send), rounds
            )
            figures.append(Figure(
                f"STARTTLS {label}: run_check / smtplib", engine_ms / bare_ms, f"<= {GOAL}", engine_ms / bare_ms <= GOAL,
                f"{engine_ms:.2f} vs {bare_ms:.2f} ms, median of {rounds}",
            ))
    return figures


if __name__ == "__main__":
    print_table(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
