"""A sending session: connect, EHLO, STARTTLS/TLS and AUTH once, then MAIL/RCPT/DATA for each message.

The same wire (``connection``), SASL encoders (``auth``) and destination
policy (``policy``) as the checks; unlike a check, the session stays open
between messages so that a pool can reuse it. Every step runs under the
deadline of the operation in progress (``timeout_seconds``); nothing is
recorded, as a sending session keeps no transcript.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import time
from typing import Any, Mapping

from service.smtp_check import login
from service.smtp_check.connection import Connection, tls_context
from service.smtp_check.errors import AuthRejected, Failure, Reply
from service.smtp_check.message import a_label
from service.smtp_check.policy import LOOKUPS, DestinationPolicy, Resolver, ip_literal
from service.smtp_check.request import AccessToken, ResolvedPassword

_EXTENSION_SEPARATOR = re.compile(r"[ =]")


class SendFailure(Failure):
    """A message was not handed over. ``stage`` is where it stopped; ``maybe_delivered``: the
    message data was sent and no final reply came, so the server may have taken it."""

    def __init__(
        self, code: str, message: str, reply: Reply | None = None, *, stage: str, auth_rejected: bool = False
    ) -> None:
        super().__init__(code, message, reply, polite=False)
        self.stage = stage
        #: The server refused the credential: a cached one deserves one refresh.
        self.auth_rejected = auth_rejected
        self.maybe_delivered = False


@dataclasses.dataclass(frozen=True)
class Handover:
    """What the server answered for one message: the recipients it took, those it refused, its final reply."""

    accepted: list[str]
    refused: dict[str, Reply]
    reply: Reply


class _Deadline:
    """The connection's view of the operation in progress: a deadline, and no transcript."""

    def __init__(self) -> None:
        self.until = time.monotonic()

    def start(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def record(self, line: str) -> str:
        return line

    def remaining(self) -> float:
        left = self.until - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        return left


class Session:
    """One authenticated connection to a mail server, reused for several messages (not thread-safe)."""

    def __init__(
        self, settings: Mapping[str, Any], policy: DestinationPolicy, resolver: Resolver, *, fips_mode: bool = False
    ) -> None:
        self.host = str(settings["host"]).strip()
        self.port = int(settings["port"])
        self.security = settings.get("security") or "starttls"
        self.skip_verify = bool(settings.get("insecure_skip_verify"))
        if self.skip_verify and fips_mode:
            raise ValueError("insecure_skip_verify is not allowed in FIPS mode.")
        self.ca_pem = settings.get("ca_certificate_pem") or None
        self.username = settings.get("username") or None
        self.domain = settings.get("domain") or None
        self.timeout = float(settings.get("timeout_seconds") or 10)
        self.policy = policy
        self.resolver = resolver
        self.literal = ip_literal(self.host)
        self.wire_host = self.host if self.literal or self.host.isascii() else a_label(self.host)
        self.tls_hostname = self.literal or self.wire_host
        self.last_used = time.monotonic()
        #: Whether the connection may carry another message.
        self.usable = False
        self._deadline = _Deadline()
        self._connection: Connection | None = None
        self._offered: dict[str, str] = {}
        self._dirty = False

    # opening

    def open(self, credential: ResolvedPassword | AccessToken | None) -> None:
        """Connect, greet, EHLO, STARTTLS or TLS, AUTH; raises ``SendFailure`` (``AuthRejected`` for refused credentials)."""
        self._deadline.start(self.timeout)
        stage = "dns"
        try:
            addresses = self._destination()
            stage = "connect"
            self._connection = Connection(self._connect(addresses), self._deadline)
            stage = "greeting"
            if self.security == "ssl":
                stage = "tls"
                self._handshake()
                stage = "greeting"
            greeting = self._connection.read_reply()
            if greeting.code != 220:
                raise SendFailure("protocol_error", "The server refused the session in its greeting.", greeting, stage=stage)
            stage = "ehlo"
            self._ehlo()
            if self.security == "starttls":
                stage = "starttls"
                if "STARTTLS" not in self._offered:
                    raise SendFailure("starttls_unsupported", "The server does not offer STARTTLS.", stage=stage)
                reply = self._connection.command("STARTTLS")
                if reply.code != 220:
                    raise SendFailure("starttls_unsupported", "The server refused STARTTLS.", reply, stage=stage)
                stage = "tls"
                self._handshake()
                stage = "ehlo"
                self._ehlo()
            stage = "auth"
            if isinstance(credential, AccessToken):
                self._authenticate_with_token(credential)
            elif credential is not None:
                self._authenticate(credential)
        except BaseException as exc:
            self.close()
            raise _as_failure(exc, stage, self.timeout) from None
        self.usable = True
        self.last_used = time.monotonic()

    def _destination(self) -> list[str]:
        if not self.policy.port_allowed(self.port):
            raise SendFailure("destination_not_allowed", f"Port {self.port} is not allowed.", stage="dns")
        if self.literal:
            addresses = [self.literal]
        else:
            try:
                found = LOOKUPS.call(self.resolver, (self.wire_host, self.port), self._deadline.remaining())
            except (OSError, UnicodeError) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise SendFailure("dns_failure", f"The host name {self.host} could not be resolved.", stage="dns") from None
            addresses = [address for address in dict.fromkeys(found) if ip_literal(address) is not None]
            if not addresses:
                raise SendFailure("dns_failure", f"The host name {self.host} has no addresses.", stage="dns")
        for address in addresses:
            network = self.policy.denied_network(address)
            if network is not None:
                raise SendFailure("destination_not_allowed", f"{self.host} is in the denied network {network}.", stage="dns")
        return addresses

    def _connect(self, addresses: list[str]) -> socket.socket:
        reason = "no address"
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._deadline.remaining())
                sock.connect((address, self.port))
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                reason = exc.strerror or str(exc)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise SendFailure("connection_refused", f"Could not connect to {self.host} port {self.port}: {reason}.", stage="connect")

    def _handshake(self) -> None:
        assert self._connection is not None
        self._connection.start_tls(tls_context(self.ca_pem, self.skip_verify), self.tls_hostname)

    def _ehlo(self) -> None:
        assert self._connection is not None
        reply = self._connection.command(f"EHLO {self._connection.local_name}")
        if reply.code == 250:
            lines = [line.strip() for line in reply.lines[1:] if line.strip()]
        elif reply.code // 100 == 5:
            reply = self._connection.command(f"HELO {self._connection.local_name}")
            if reply.code != 250:
                raise SendFailure("protocol_error", "The server refused both EHLO and HELO.", reply, stage="ehlo")
            lines = []
        else:
            raise SendFailure("protocol_error", "The server refused EHLO.", reply, stage="ehlo")
        self._offered = {}
        for line in lines:
            keyword, params = (_EXTENSION_SEPARATOR.split(line, maxsplit=1) + [""])[:2]
            self._offered[keyword.upper()] = params

    def _authenticate(self, password: ResolvedPassword) -> None:
        assert self._connection is not None
        login_name = f"{self.domain}\\{self.username}" if self.domain else str(self.username)
        login.authenticate_password(self._connection, self._offered, login_name, password.value, [])

    def _authenticate_with_token(self, token: AccessToken) -> None:
        assert self._connection is not None
        login.authenticate_token(self._connection, self._offered, str(self.username), token.value, (self.wire_host, self.port), [])

    # sending

    def send(self, sender: str, recipients: list[str], payload: bytes) -> Handover:
        """One transaction: MAIL, RCPT for each recipient, DATA (``payload`` already dot-stuffed, CRLF).

        Recipients the server refuses are left out; with none left, the
        transaction is reset and the refusal raised. Raises ``SendFailure``.
        """
        assert self._connection is not None and self.usable
        self._deadline.start(self.timeout)
        stage = "mail_from"
        sent_data = False
        try:
            if self._dirty:
                reply = self._connection.command("RSET")
                if reply.code != 250:
                    raise SendFailure(_code_of(reply), "The server refused RSET.", reply, stage="rset")
                self._dirty = False
            self._dirty = True
            reply = self._connection.command(f"MAIL FROM:<{sender}>")
            if reply.code != 250:
                raise SendFailure(_code_of(reply, "sender_rejected"), f"The server refused the sender {sender}.", reply, stage=stage)
            stage = "rcpt_to"
            accepted: list[str] = []
            refused: dict[str, Reply] = {}
            for recipient in recipients:
                reply = self._connection.command(f"RCPT TO:<{recipient}>")
                if reply.code in (250, 251):
                    accepted.append(recipient)
                elif reply.code == 421:
                    raise SendFailure("temporary", "The server closed the session.", reply, stage=stage)
                else:
                    refused[recipient] = reply
            if not accepted:
                first = next(iter(refused.values()))
                raise RecipientsRefused(refused, first)
            stage = "data"
            reply = self._connection.command("DATA")
            if reply.code != 354:
                raise SendFailure(_code_of(reply, "message_rejected"), "The server refused to take the message.", reply, stage=stage)
            sent_data = True
            self._connection.send_message(payload)
            reply = self._connection.read_reply()
            if reply.code != 250:
                raise SendFailure(_code_of(reply, "message_rejected"), "The server refused the message.", reply, stage=stage)
            self._dirty = False
        except RecipientsRefused:
            self.last_used = time.monotonic()
            raise
        except BaseException as exc:
            failure = _as_failure(exc, stage, self.timeout)
            failure.maybe_delivered = sent_data and failure.reply is None
            if failure.reply is None or failure.reply.code == 421:
                self.close()
            raise failure from None
        self.last_used = time.monotonic()
        return Handover(accepted, refused, reply)

    def quit(self) -> None:
        """Say QUIT (briefly) and close."""
        if self._connection is not None and self.usable:
            self._deadline.start(min(self.timeout, 1.0))
            try:
                self._connection.command("QUIT")
            except (OSError, Failure, TimeoutError):
                pass
        self.close()

    def close(self) -> None:
        self.usable = False
        if self._connection is not None:
            try:
                self._connection.close()
            except OSError:
                pass
            self._connection = None


class RecipientsRefused(SendFailure):
    """Every recipient was refused; ``refused`` says how (the session stays usable, to be reset)."""

    def __init__(self, refused: dict[str, Reply], first: Reply) -> None:
        code = "recipient_rejected" if first.code // 100 == 5 else "temporary"
        super().__init__(code, "The server refused every recipient.", first, stage="rcpt_to")
        self.refused = refused



def _code_of(reply: Reply, permanent: str = "rejected") -> str:
    return "temporary" if reply.code // 100 == 4 else permanent


def _as_failure(exc: BaseException, stage: str, timeout: float) -> SendFailure:
    """Whatever ended an operation, as a ``SendFailure``."""
    if isinstance(exc, SendFailure):
        return exc
    if isinstance(exc, AuthRejected):
        return SendFailure(exc.code, exc.message, exc.reply, stage=stage, auth_rejected=True)
    if isinstance(exc, Failure):
        return SendFailure(exc.code, exc.message, exc.reply, stage=stage)
    if isinstance(exc, TimeoutError):
        return SendFailure("timeout", f"The server did not answer within {timeout:g} s.", stage=stage)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SendFailure("certificate_verify_failed", f"The server certificate could not be verified: {exc.verify_message}.", stage=stage)
    if isinstance(exc, ssl.SSLError):
        return SendFailure("tls_handshake_failed", f"TLS failed: {exc.reason or exc}.", stage=stage)
    if isinstance(exc, OSError):
        return SendFailure("connection_lost", f"The connection to the server was lost: {exc.strerror or exc}.", stage=stage)
    raise exc
