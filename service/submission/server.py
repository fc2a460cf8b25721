"""Running the submission server: the listening socket, TLS with the service's certificate, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

from service.config import Config, ConfigError, parse_bind
from service.submission.handler import Submission
from service.submission.protocol import SubmissionSMTP
from service.transport import CertificateReloader

log = logging.getLogger("smtpconf.submission")
#: How long a stopping server waits for the messages being relayed.
DRAIN_SECONDS = 30.0
#: How long a client has to finish the TLS handshake (implicit TLS and STARTTLS alike).
HANDSHAKE_SECONDS = 30.0


def certificate(config: Config) -> CertificateReloader | None:
    """The service's certificate (SMTPCONF_TLS_*), renewed as for HTTPS; None without one."""
    if not config.tls_cert_file or not config.tls_key_file:
        if config.submission_implicit_tls:
            raise ConfigError("SMTPCONF_SUBMISSION_IMPLICIT_TLS needs SMTPCONF_TLS_CERT_FILE and SMTPCONF_TLS_KEY_FILE")
        return None
    try:
        return CertificateReloader(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"SMTPCONF_TLS_CERT_FILE / SMTPCONF_TLS_KEY_FILE do not load: {exc}") from None


def implicit_tls_context(reloader: CertificateReloader) -> ssl.SSLContext:
    """A listening context that hands each new connection the reloader's current certificate."""
    listening = reloader.factory()
    listening.load_cert_chain(reloader.certfile, reloader.keyfile)

    def current(connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        # Called during every handshake (with or without SNI), before the certificate is chosen.
        connection.context = reloader.context()

    listening.sni_callback = current
    return listening


def how_to_send(config: Config, token: str) -> str:
    """What ``smtpconf dev`` prints: how to send a test mail through the submission server with ``token``."""
    host, port = parse_bind(str(config.submission_bind), "SUBMISSION_BIND")
    return (
        f"SMTP submission on {config.submission_bind} (AUTH: the tenant id, or * for the system level, and the mailer"
        f" token). Once settings are saved, send a test mail with:\n"
        f"  swaks --server {host} --port {port} --auth PLAIN --auth-user '*' --auth-password {token} \\\n"
        f"        --from you@example.com --to someone@example.com\n"
        f"  python3 -c 'import smtplib; c = smtplib.SMTP(\"{host}\", {port}); c.login(\"*\", \"{token}\");"
        f" c.sendmail(\"you@example.com\", [\"someone@example.com\"], \"Subject: test\\r\\n\\r\\nhello\\r\\n\"); c.quit()'"
    )


class SubmissionServer:
    """The submission server of one process, on the event loop that ``run`` drives."""

    def __init__(self, services: Any, config: Config) -> None:
        if not config.submission_bind:
            raise ConfigError("SMTPCONF_SUBMISSION_BIND is not set (HOST:PORT, e.g. 0.0.0.0:587)")
        self.host, self.port = parse_bind(config.submission_bind, "SUBMISSION_BIND")
        self.config = config
        self.services = services
        self.hostname = socket.getfqdn()
        self.reloader = certificate(config)
        self.submission = Submission(services, config)
        self._server: asyncio.AbstractServer | None = None

    def _protocol(self) -> SubmissionSMTP:
        starttls = None if self.config.submission_implicit_tls or self.reloader is None else self.reloader.context()
        return SubmissionSMTP(
            self.submission,
            implicit_tls=self.config.submission_implicit_tls,
            hostname=self.hostname,
            ident="smtpconf submission",
            tls_context=starttls,
            data_size_limit=self.config.submission_max_bytes,
            enable_SMTPUTF8=True,
            timeout=self.config.submission_idle_seconds,
            auth_required=True,
            # The TLS rule (loopback excepted) is SubmissionSMTP.may_authenticate's.
            auth_require_tls=False,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = implicit_tls_context(self.reloader) if self.config.submission_implicit_tls and self.reloader else None
        self._server = await loop.create_server(
            self._protocol, self.host, self.port, ssl=context, reuse_address=True, backlog=512,
            ssl_handshake_timeout=HANDSHAKE_SECONDS if context else None,
        )
        log.info(
            "submission server listening",
            extra={"bind": self.config.submission_bind, "tls": "implicit" if context else "starttls" if self.reloader else "none"},
        )

    async def stop(self) -> None:
        """Stop accepting, then give the messages being relayed time to get their replies."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while self.submission.relays_in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.submission.connections):
            connection.close_for_shutdown()
        self.submission.close()


def run(config: Config, *, watch_stdin: bool = False) -> None:
    """Serve until SIGTERM or SIGINT (or, with ``watch_stdin``, until the parent closes our stdin)."""
    from service.app import build_services

    # aiosmtpd logs every command line at INFO and a deprecation notice on every AUTH; the service logs its own.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    services = build_services(config)
    try:
        asyncio.run(_serve(services, config, watch_stdin))
    finally:
        services.close()


def _on_stdin(fd: int, stopping: asyncio.Event) -> None:
    # The parent holds the other end of this pipe: end of file means it is gone.
    if not os.read(fd, 4096):
        asyncio.get_running_loop().remove_reader(fd)
        stopping.set()


async def _serve(services: Any, config: Config, watch_stdin: bool) -> None:
    server = SubmissionServer(services, config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if watch_stdin:
        loop.add_reader(sys.stdin.fileno(), _on_stdin, sys.stdin.fileno(), stopping)
    await stopping.wait()
    log.info("submission server stopping")
    await server.stop()
