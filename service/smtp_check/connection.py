"""The wire: one SMTP connection's line I/O and TLS, under the check's deadline, every line recorded."""

from __future__ import annotations

import functools
import re
import socket
import ssl
import time
from typing import Protocol

from cryptography import x509

from service.smtp_check.errors import Failure, Reply

# SMTP lines are at most 512 bytes (RFC 5321 4.5.3.1.4), but servers send longer
# EHLO lines; 8 KiB bounds what one unterminated line may cost.
_MAX_LINE = 8192
# After a refusal the verdict is known; a tarpitting server may stall every later reply.
_QUIT_GRACE_SECONDS = 1.0
_MAX_REPLY_LINES = 256
_REPLY_LINE = re.compile(r"(\d{3})(?:([ -])(.*))?")


class CheckState(Protocol):
    """What a connection needs from the check it serves: the transcript and the deadline."""

    def record(self, line: str) -> str: ...

    def remaining(self) -> float: ...


@functools.lru_cache(maxsize=32)
def tls_context(ca_pem: str | None, skip_verify: bool) -> ssl.SSLContext:
    """A client TLS context trusting the system store (and ``ca_pem``), shared per process."""
    # Loading the system store costs about 20 ms, more than a whole loopback
    # check, so it is read once per process; contexts are never changed once
    # built and are safe to share between threads.
    context = ssl.create_default_context()
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe_certificate(der: bytes | None) -> dict[str, str] | None:
    """Subject, issuer and expiry of a DER certificate, for the report."""
    if not der:
        return None
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }


class Connection:
    """One SMTP connection: line I/O under the check's deadline, every line recorded."""

    def __init__(self, sock: socket.socket, check: CheckState) -> None:
        self._sock = sock
        self._check = check
        self._buffer = bytearray()
        self._quit_by: float | None = None
        address = sock.getsockname()[0]
        self.local_name = f"[IPv6:{address}]" if ":" in address else f"[{address}]"

    def send(self, line: str, shown: str | None = None) -> None:
        self._check.record("C: " + (line if shown is None else shown))
        self._sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line: str, shown: str | None = None) -> Reply:
        self.send(line, shown)
        return self.read_reply()

    def send_message(self, payload: bytes) -> None:
        self._check.record(f"C: <{len(payload)} bytes of message data>")
        self._check.record("C: .")
        self._sendall(payload + b".\r\n")

    def read_reply(self) -> Reply:
        code = None
        lines: list[str] = []
        while True:
            text = self._check.record("S: " + self._readline().decode("utf-8", "replace").rstrip("\r\n"))[3:]
            match = _REPLY_LINE.fullmatch(text)
            if match is None or (code is not None and int(match[1]) != code) or len(lines) >= _MAX_REPLY_LINES:
                raise Failure("protocol_error", "The server sent a reply that is not valid SMTP.", polite=False)
            code = int(match[1])
            lines.append(match[3] or "")
            if match[2] != "-":
                return Reply(code, lines)

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
        if self._buffer:
            # Plaintext queued behind the STARTTLS reply would be read as if it had
            # come over TLS (the STARTTLS command injection attack).
            raise Failure("protocol_error", "The server sent data ahead of the TLS handshake.", polite=False)
        self._sock.settimeout(self._remaining())
        tls = context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
        self._sock = tls
        tls.do_handshake()
        return tls

    def quit_quietly(self) -> None:
        self._quit_by = time.monotonic() + _QUIT_GRACE_SECONDS
        try:
            self.command("QUIT")
        except (OSError, Failure):
            pass

    def close(self) -> None:
        self._sock.close()

    def _remaining(self) -> float:
        left = self._check.remaining()
        if self._quit_by is not None:
            left = min(left, self._quit_by - time.monotonic())
            if left <= 0:
                raise TimeoutError("no answer to QUIT")
        return left

    def _sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._remaining())
        self._sock.sendall(data)

    def _readline(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", 0, _MAX_LINE)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= _MAX_LINE:
                raise Failure("protocol_error", "The server sent a line longer than any SMTP reply.", polite=False)
            self._sock.settimeout(self._remaining())
            chunk = self._sock.recv(65536)
            if not chunk:
                raise Failure("protocol_error", "The server closed the connection unexpectedly.", polite=False)
            self._buffer += chunk
