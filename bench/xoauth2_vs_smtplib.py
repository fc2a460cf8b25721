"""Median wall time of a test mail with XOAUTH2 (token cached) through run_check against a bare smtplib XOAUTH2 dialogue.

Run from the project root: ``python bench/xoauth2_vs_smtplib.py [rounds]``. The
SMTP server, which verifies every bearer token (signature, audience, expiry,
mailbox), runs in a child process; the token comes once from the loopback
RFC 6749 token endpoint and is then served from the token cache, as it is
between validations.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import smtplib
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from bench.harness import Figure, interleaved_medians, print_table
from service.oauth import TokenService
from service.smtp_check import AccessToken, CheckRequest, DestinationPolicy, run_check
from service.smtp_check.auth import xoauth2_encode
from tests.fixtures.oauth_servers import (
    CC_CLIENT_ID,
    CC_SECRET,
    MAILBOX,
    RELAY_AUDIENCE,
    TokenServer,
    XOAuth2Handler,
    _rsa_key,
    start_bearer_server,
)

TO = "ops@example.com"
GOAL = 1.2


def _serve(ca: trustme.CA, public_key: Any, channel: Connection) -> None:
    handler = XOAuth2Handler(public_key, [RELAY_AUDIENCE], {CC_CLIENT_ID: {MAILBOX}})
    server = start_bearer_server(handler, ca, command_size_limit=16384)
    channel.send(server.port)
    channel.recv()
    server.stop()


@contextmanager
def bearer_server_process(ca: trustme.CA, public_key: Any) -> Iterator[int]:
    channel, child_channel = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_serve, args=(ca, public_key, child_channel), daemon=True)
    child.start()
    try:
        if not channel.poll(10):
            raise SystemExit("The SMTP server process did not start.")
        yield channel.recv()
    finally:
        channel.send("stop")
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


def bare_smtplib(port: int, context: ssl.SSLContext, token: str) -> None:
    """STARTTLS, AUTH XOAUTH2 and one message, with nothing around it."""
    with smtplib.SMTP("localhost", port, local_hostname="[127.0.0.1]", timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        smtp.ehlo()
        code, reply = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_encode(MAILBOX, token))
        if code != 235:
            raise SystemExit(f"smtplib XOAUTH2 refused: {code} {reply!r}")
        message = EmailMessage()
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain="example.com")
        message["From"] = MAILBOX
        message["To"] = TO
        message["Subject"] = "Test message"
        message.set_content("This is a test message.\n")
        smtp.send_message(message)


def measure(rounds: int) -> list[Figure]:
    """run_check (XOAUTH2, token cached) ÷ bare smtplib XOAUTH2, for a test mail."""
    ca = trustme.CA()
    ca_pem = ca.cert_pem.bytes().decode("ascii")
    signing_key = _rsa_key()
    with bearer_server_process(ca, signing_key.public_key()) as port:
        tokens_endpoint = TokenServer(ca)
        tokens_endpoint.endpoint.signing_key = signing_key
        tokens_endpoint.endpoint.client_secrets[CC_CLIENT_ID] = CC_SECRET
        bundle = Path(os.environ.get("TMPDIR", "/tmp")) / f"xoauth2-bench-ca-{os.getpid()}.pem"
        bundle.write_bytes(ca.cert_pem.bytes())
        os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
        try:
            policy = DestinationPolicy(allowed_ports=frozenset({port}))
            service = TokenService(policy)
            auth = {"method": "oauth2", "flow": "client_credentials", "token_url": tokens_endpoint.token_url, "client_id": CC_CLIENT_ID}
            settings = {
                "host": "localhost", "port": port, "security": "starttls", "ca_certificate_pem": ca_pem,
                "from_email": MAILBOX, "username": MAILBOX, "auth": auth, "timeout_seconds": 10,
            }

            def get_token(refresh: bool) -> AccessToken:
                token = service.get(auth, CC_SECRET, MAILBOX, refresh=refresh)
                return AccessToken(token.value, token.flow, token.expires_at_datetime, token.from_cache)

            def check() -> None:
                result = run_check(CheckRequest(settings=settings, get_password=None, get_token=get_token, policy=policy, send_to=TO))
                assert result["ok"], result["error"]

            check()  # warm-up: fetches the token once and builds the cached TLS context
            token = get_token(False).value
            context = ssl.create_default_context(cadata=ca_pem)
            bare_smtplib(port, context, token)
            engine_ms, bare_ms = interleaved_medians(check, functools.partial(bare_smtplib, port, context, token), rounds)
            requests_made = tokens_endpoint.endpoint.count()
        finally:
            tokens_endpoint.stop()
            bundle.unlink(missing_ok=True)
    return [Figure(
        "XOAUTH2 test mail: run_check / smtplib", engine_ms / bare_ms, f"<= {GOAL}", engine_ms / bare_ms <= GOAL,
        f"{engine_ms:.2f} vs {bare_ms:.2f} ms, median of {rounds}; {requests_made} token request(s) in all",
    )]


if __name__ == "__main__":
    print_table(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
