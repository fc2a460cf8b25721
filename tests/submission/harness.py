"""A real ``smtpconf submission`` process for tests, with the service's TLS certificate from the session CA."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trustme

from tests.fixtures.server import free_port, service_env

LOOPBACK = "127.0.0.1"
STARTUP_SECONDS = 30.0


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the route to it stays on the host), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def write_certificate(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    """A certificate for ``names`` from ``ca``, as the PEM files SMTPCONF_TLS_CERT_FILE / _KEY_FILE name."""
    cert = ca.issue_cert(*names)
    cert_file, key_file = directory / "submission.crt", directory / "submission.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        with open(cert_file, "ab") as handle:
            handle.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


class SubmissionProcess:
    """``python -m service.cli submission`` on a free port, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, host: str = LOOPBACK, implicit_tls: bool = False) -> None:
        self.host = host
        self.port = free_port()
        self.implicit_tls = implicit_tls
        self.log_path = log_path
        self.env = dict(env, SMTPCONF_SUBMISSION_IMPLICIT_TLS="true" if implicit_tls else "false")
        self._log = open(log_path, "ab")
        bind = f"{'0.0.0.0' if host != LOOPBACK else LOOPBACK}:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "submission", "--bind", bind],
            env=self.env, stdout=self._log, stderr=self._log, start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smtpconf submission exited with {self.process.returncode}: {self.log_text()[-2000:]}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtpconf submission did not start listening")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def connect(server: SubmissionProcess, ca: trustme.CA, *, tls: bool = True, source: str | None = None,
            timeout: float = 30) -> smtplib.SMTP:
    """An smtplib client that has said EHLO, over STARTTLS (or implicit TLS) unless ``tls`` is false."""
    source_address = (source, 0) if source else None
    if server.implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            server.host, server.port, context=client_context(ca), timeout=timeout, source_address=source_address
        )
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=timeout, source_address=source_address)
        if tls:
            client.starttls(context=client_context(ca))
    client.ehlo("client.example.test")
    return client


def submission_env(database_url: str, master_key: str, cert: tuple[Path, Path], **extra: Any) -> dict[str, str]:
    return service_env(
        database_url, master_key, SMTPCONF_TLS_CERT_FILE=str(cert[0]), SMTPCONF_TLS_KEY_FILE=str(cert[1]),
        **{k: str(v) for k, v in extra.items()},
    )


class Raw:
    """A byte-level SMTP client: what is sent is exactly what the test says."""

    def __init__(self, host: str, port: int, *, source: str | None = None, timeout: float = 10,
                 context: ssl.SSLContext | None = None) -> None:
        self.sock: Any = socket.create_connection((host, port), timeout=timeout,
                                                  source_address=(source, 0) if source else None)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
        self.host = host
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self._buffer)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def reply(self) -> str:
        """One whole reply, its lines joined by newlines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return "\n".join(line.decode("utf-8", "replace") for line in lines)

    def command(self, text: str) -> str:
        self.send(text.encode("utf-8") + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)

    def closed(self, deadline_seconds: float = 10) -> bool:
        """Whether the server closes the connection within the deadline (nothing else arriving)."""
        self.sock.settimeout(deadline_seconds)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def close(self) -> None:
        self.sock.close()
