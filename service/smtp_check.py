"""SMTP check engine: walks a connection stage by stage, optionally sends a test mail, and reports a masked transcript."""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import idna
from cryptography import x509

log = logging.getLogger(__name__)

STAGES = (
    "resolve_password", "dns", "connect", "greeting", "ehlo", "starttls", "tls",
    "auth", "mail_from", "rcpt_to", "data", "quit", "done",
)
SECURITY_MODES = ("none", "starttls", "ssl")
MASK = "********"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_PORTS: frozenset[int] = frozenset({25, 465, 587, 2525})
# Metadata endpoints come first so a refusal names the most specific network.
DEFAULT_DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32",
        "169.254.0.0/16", "fe80::/10",
    )
)

_MAX_LINE = 8192
# After a refusal the verdict is known; a tarpitting server may stall every later reply.
_QUIT_GRACE_SECONDS = 1.0
_MAX_REPLY_LINES = 256
_REPLY_LINE = re.compile(r"(\d{3})(?:([ -])(.*))?")
# "AUTH=LOGIN PLAIN" is the pre-RFC 4954 spelling some servers still send.
_EXTENSION_SEPARATOR = re.compile(r"[ =]")
_CONTROL_CHARACTERS = dict.fromkeys([*range(9), *range(10, 32), 127], "\ufffd")


@dataclass(frozen=True)
class DestinationPolicy:
    """Where a check may connect: ports on an allow-list, addresses outside denied networks."""

    allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS
    denied_networks: tuple[IPNetwork, ...] = DEFAULT_DENIED

    @classmethod
    def from_strings(cls, ports: str | None, networks: str | None) -> DestinationPolicy:
        """Build a policy from comma-separated environment values; None keeps the default.

        An empty network list denies nothing (for labs); an empty port list is an error.
        """
        return cls(
            allowed_ports=DEFAULT_ALLOWED_PORTS if ports is None else _parse_ports(ports),
            denied_networks=DEFAULT_DENIED if networks is None else _parse_networks(networks),
        )

    def port_allowed(self, port: int) -> bool:
        """Whether checks may connect to this TCP port."""
        return port in self.allowed_ports

    def denied_network(self, address: str) -> IPNetwork | None:
        """The denied network that contains the address, or None when it may be contacted."""
        ip = ipaddress.ip_address(address)
        candidates = [ip]
        # An IPv4-mapped IPv6 address reaches the IPv4 host, so it is judged as that host.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        for network in self.denied_networks:
            if any(candidate in network for candidate in candidates):
                return network
        return None


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_ports(text: str) -> frozenset[int]:
    ports = set()
    for item in _items(text):
        if not (item.isascii() and item.isdigit() and 1 <= int(item) <= 65535):
            raise ValueError(f"Not a TCP port: {item!r}.")
        ports.add(int(item))
    if not ports:
        raise ValueError("The list of allowed ports is empty.")
    return frozenset(ports)


def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"Not an IP network: {item!r}.") from None
    return tuple(networks)


@dataclass(frozen=True)
class ResolvedPassword:
    """A password value with where it came from; the value never appears in the repr."""

    value: str = field(repr=False)
    source: str
    version: str | None = None
    from_cache: bool = False


class PasswordUnavailable(Exception):
    """The password getter could not produce a value; the message names no secret."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source


PasswordGetter = Callable[[bool], ResolvedPassword]
Resolver = Callable[[str, int], list[str]]


@dataclass
class CheckRequest:
    """What to check: effective settings, how to get the password, and where checks may go.

    ``send_to=None`` validates only (no MAIL/RCPT/DATA); an address sends one test mail.
    The password getter runs in the caller's thread (it may rely on thread-local
    context); its time counts against ``timeout_seconds`` but only its own
    timeouts bound it. Every other step gets the time left before the deadline.
    """

    settings: Mapping[str, Any]
    get_password: PasswordGetter | None
    policy: DestinationPolicy
    send_to: str | None = None
    include_cc_bcc: bool = False
    scope: str = "system"
    service_name: str = "smtp-config-service"
    fips_mode: bool = False
    resolver: Resolver | None = None


def run_check(request: CheckRequest) -> dict[str, Any]:
    """Run the check and return the contract's result document.

    SMTP and network problems are reported in the result, never raised; a
    ValueError means the request itself is invalid (for instance
    ``insecure_skip_verify`` in FIPS mode).
    """
    return _Check(request).run()


class _Failure(Exception):
    """Ends the check with a contract error code; the message is safe to show."""

    def __init__(self, code: str, message: str, reply: _Reply | None = None, *, polite: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reply = reply
        # Polite failures leave the dialogue in a state where QUIT still makes sense.
        self.polite = polite


class _AuthRejected(_Failure):
    """The server refused the credentials; a cached password may deserve one refresh."""


@dataclass
class _Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@functools.lru_cache(maxsize=32)
def _tls_context(ca_pem: str | None, skip_verify: bool) -> ssl.SSLContext:
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


def _system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class _LookupThreads:
    """Daemon threads for name lookups, which have no timeout of their own.

    A lookup that outlives its deadline keeps its thread (and is dropped when it
    ends); the next lookup gets another thread, so a stuck lookup never holds up
    others. Threads that finish wait for more work: starting one per check added
    about 0.4 ms (15 %) to a loopback STARTTLS validation.
    """

    _KEEP_IDLE = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[Any]] = []
        # Threads do not survive fork; a child must not hand work to its parent's.
        os.register_at_fork(after_in_child=self._idle.clear)

    def call(self, function: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name="smtp-check-lookup", daemon=True).start()
        outcome: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        inbox.put((function, args, outcome))
        try:
            succeeded, value = outcome.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("name resolution timed out") from None
        if not succeeded:
            raise value
        return value

    def _work(self, inbox: queue.SimpleQueue[Any]) -> None:
        while True:
            function, args, outcome = inbox.get()
            try:
                result = (True, function(*args))
            except Exception as exc:  # noqa: BLE001 -- handed to the caller, who re-raises it
                result = (False, exc)
            with self._lock:
                keep = len(self._idle) < self._KEEP_IDLE
                if keep:
                    self._idle.append(inbox)
            outcome.put(result)
            if not keep:
                return


_LOOKUPS = _LookupThreads()


def _ip_literal(host: str) -> str | None:
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def _describe_certificate(der: bytes | None) -> dict[str, str] | None:
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


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Connection:
    """One SMTP connection: line I/O under the check's deadline, every line recorded."""

    def __init__(self, sock: socket.socket, check: _Check) -> None:
        self._sock = sock
        self._check = check
        self._buffer = bytearray()
        self._quit_by: float | None = None
        address = sock.getsockname()[0]
        self.local_name = f"[IPv6:{address}]" if ":" in address else f"[{address}]"

    def send(self, line: str, shown: str | None = None) -> None:
        self._check.record("C: " + (line if shown is None else shown))
        self._sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line: str, shown: str | None = None) -> _Reply:
        self.send(line, shown)
        return self.read_reply()

    def send_message(self, payload: bytes) -> None:
        self._check.record(f"C: <{len(payload)} bytes of message data>")
        self._check.record("C: .")
        self._sendall(payload + b".\r\n")

    def read_reply(self) -> _Reply:
        code = None
        lines: list[str] = []
        while True:
            text = self._check.record("S: " + self._readline().decode("utf-8", "replace").rstrip("\r\n"))[3:]
            match = _REPLY_LINE.fullmatch(text)
            if match is None or (code is not None and int(match[1]) != code) or len(lines) >= _MAX_REPLY_LINES:
                raise _Failure("protocol_error", "The server sent a reply that is not valid SMTP.", polite=False)
            code = int(match[1])
            lines.append(match[3] or "")
            if match[2] != "-":
                return _Reply(code, lines)

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
        if self._buffer:
            # Plaintext queued behind the STARTTLS reply would be read as if it had
            # come over TLS (the STARTTLS command injection attack).
            raise _Failure("protocol_error", "The server sent data ahead of the TLS handshake.", polite=False)
        self._sock.settimeout(self._remaining())
        tls = context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
        self._sock = tls
        tls.do_handshake()
        return tls

    def quit_quietly(self) -> None:
        self._quit_by = time.monotonic() + _QUIT_GRACE_SECONDS
        try:
            self.command("QUIT")
        except (OSError, _Failure):
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
                raise _Failure("protocol_error", "The server sent a line longer than any SMTP reply.", polite=False)
            self._sock.settimeout(self._remaining())
            chunk = self._sock.recv(65536)
            if not chunk:
                raise _Failure("protocol_error", "The server closed the connection unexpectedly.", polite=False)
            self._buffer += chunk


class _Check:
    """The state of one check run: the stage reached, the transcript and what was learnt."""

    def __init__(self, request: CheckRequest) -> None:
        settings = request.settings
        self.request = request
        self.host = str(settings["host"]).strip()
        self.port = int(settings["port"])
        self.security = settings.get("security") or "starttls"
        if self.security not in SECURITY_MODES:
            raise ValueError(f"Unknown security mode {self.security!r}.")
        self.skip_verify = bool(settings.get("insecure_skip_verify"))
        if self.skip_verify and request.fips_mode:
            raise ValueError("insecure_skip_verify is not allowed in FIPS mode.")
        self.username = settings.get("username") or None
        if (self.username is None) != (request.get_password is None):
            raise ValueError("A username and a password getter go together, or neither is given.")
        self.timeout = float(settings.get("timeout_seconds") or 10)
        if self.timeout <= 0:
            raise ValueError("timeout_seconds must be positive.")
        self.literal = _ip_literal(self.host)
        # The name as DNS and TLS must see it: an IDNA 2008 A-label, as the
        # settings validation judged it (Python's own codec is IDNA 2003).
        self.wire_host = self.host if self.literal or self.host.isascii() else _a_label(self.host)
        self.tls_hostname = self.literal or self.wire_host
        self.stage = STAGES[0]
        self.transcript: list[str] = []
        self.server: dict[str, Any] = {
            "banner": None, "extensions": [], "tls_version": None, "certificate": None, "address": None,
        }
        self.secret: dict[str, Any] | None = None
        self.message_id: str | None = None
        self._offered: dict[str, str] = {}
        self._reported: dict[str, str] = {}
        self._secrets: list[str] = []
        self._started = time.monotonic()
        self._deadline = self._started + self.timeout

    def run(self) -> dict[str, Any]:
        error = None
        try:
            self._walk()
        except _Failure as failure:
            reply = failure.reply
            error = {
                "code": failure.code,
                "message": self._redact(failure.message),
                "smtp_code": reply.code if reply else None,
                "smtp_message": self._redact(reply.text) if reply else None,
            }
        elapsed_ms = round((time.monotonic() - self._started) * 1000)
        log.info(
            "SMTP check of %s port %s: %s at stage %s after %d ms",
            self.host, self.port, error["code"] if error else "ok", self.stage, elapsed_ms,
        )
        return {
            "ok": error is None,
            "stage": self.stage,
            "error": error,
            "elapsed_ms": elapsed_ms,
            "server": self.server,
            "secret": self.secret,
            "message_id": self.message_id,
            "transcript": self.transcript,
        }

    def remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        return left

    def record(self, line: str) -> str:
        line = self._redact(line.translate(_CONTROL_CHARACTERS))
        self.transcript.append(line)
        log.debug("SMTP %s port %s %s", self.host, self.port, line)
        return line

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _remember(self, password: ResolvedPassword, *, refreshed: bool) -> None:
        self._secrets.extend(value for value in (password.value, _b64(password.value)) if value)
        self.secret = {"source": password.source, "version": password.version, "refreshed": refreshed}

    def _walk(self) -> None:
        password = self._first_password()
        addresses = self._destination()
        try:
            self._session(addresses, password)
        except _AuthRejected as rejected:
            if password is None or not password.from_cache or rejected.reply is None or rejected.reply.code != 535:
                raise
            fresh = self._refreshed_password(rejected)
            if fresh.value == password.value:
                raise
            self._session(addresses, fresh)

    def _first_password(self) -> ResolvedPassword | None:
        if self.request.get_password is None:
            return None
        try:
            password = self.request.get_password(False)
        except PasswordUnavailable as exc:
            if exc.source:
                self.secret = {"source": exc.source, "version": None, "refreshed": False}
            raise _Failure("password_unavailable", f"The SMTP password could not be resolved: {exc.message}") from None
        self._remember(password, refreshed=False)
        return password

    def _refreshed_password(self, rejected: _AuthRejected) -> ResolvedPassword:
        assert self.request.get_password is not None
        try:
            password = self.request.get_password(True)
        except PasswordUnavailable as exc:
            raise _Failure(
                "password_unavailable",
                f"The server rejected the cached password, and fetching it afresh failed: {exc.message}",
                rejected.reply,
            ) from None
        self._remember(password, refreshed=True)
        return password

    def _destination(self) -> list[str]:
        self.stage = "dns"
        if not self.request.policy.port_allowed(self.port):
            allowed = ", ".join(str(port) for port in sorted(self.request.policy.allowed_ports))
            raise _Failure("destination_not_allowed", f"Port {self.port} is not allowed (allowed: {allowed}).")
        addresses = [self.literal] if self.literal else self._resolve()
        for address in addresses:
            network = self.request.policy.denied_network(address)
            if network is not None:
                named = address if self.literal else f"{self.host} ({address})"
                raise _Failure("destination_not_allowed", f"{named} is in the denied network {network}.")
        return addresses

    def _resolve(self) -> list[str]:
        resolver = self.request.resolver or _system_resolver
        try:
            found = _LOOKUPS.call(resolver, (self.wire_host, self.port), self.remaining())
        except TimeoutError:
            raise _Failure("timeout", f"Resolving {self.host} took longer than {self.timeout:g} s.") from None
        except (OSError, UnicodeError) as exc:
            raise _Failure("dns_failure", f"The host name {self.host} could not be resolved: {exc}") from None
        addresses = []
        for address in dict.fromkeys(found):
            if _ip_literal(address) is None:
                raise _Failure("dns_failure", f"The host name {self.host} resolved to something that is not an address.")
            addresses.append(address)
        if not addresses:
            raise _Failure("dns_failure", f"The host name {self.host} has no addresses.")
        return addresses

    def _connect(self, addresses: list[str]) -> socket.socket:
        self.stage = "connect"
        reason = "no address"
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.remaining())
                sock.connect((address, self.port))
            except TimeoutError:
                sock.close()
                raise _Failure("timeout", f"Connecting to {address} port {self.port} took longer than {self.timeout:g} s.") from None
            except OSError as exc:
                sock.close()
                reason = exc.strerror or str(exc)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.server["address"] = address
            return sock
        raise _Failure("connection_refused", f"Could not connect to {self.host} port {self.port}: {reason}.")

    def _session(self, addresses: list[str], password: ResolvedPassword | None) -> None:
        connection = _Connection(self._connect(addresses), self)
        try:
            self._converse(connection, password)
        except _Failure as failure:
            if failure.polite:
                connection.quit_quietly()
            raise
        except TimeoutError:
            raise _Failure("timeout", f"The server did not answer within {self.timeout:g} s.") from None
        except ssl.SSLCertVerificationError as exc:
            raise _Failure(
                "certificate_verify_failed",
                f"The server certificate could not be verified for {self.tls_hostname}: {exc.verify_message}.",
            ) from None
        except ssl.SSLError as exc:
            code = "tls_handshake_failed" if self.stage == "tls" else "protocol_error"
            raise _Failure(code, f"TLS failed: {exc.reason or exc}.") from None
        except OSError as exc:
            code = "tls_handshake_failed" if self.stage == "tls" else "protocol_error"
            raise _Failure(code, f"The connection to the server was lost: {exc.strerror or exc}.") from None
        finally:
            connection.close()

    def _converse(self, connection: _Connection, password: ResolvedPassword | None) -> None:
        if self.security == "ssl":
            self._handshake(connection)
        self.stage = "greeting"
        greeting = connection.read_reply()
        self.server["banner"] = greeting.text
        if greeting.code != 220:
            raise _Failure("protocol_error", "The server refused the session in its greeting.", greeting)
        self.stage = "ehlo"
        self._ehlo(connection)
        if self.security == "starttls":
            self.stage = "starttls"
            if "STARTTLS" not in self._offered:
                raise _Failure(
                    "starttls_unsupported",
                    "The server does not offer STARTTLS; the check stops rather than continue in plaintext.",
                )
            reply = connection.command("STARTTLS")
            if reply.code != 220:
                raise _Failure("starttls_unsupported", "The server refused STARTTLS.", reply)
            self._handshake(connection)
            self._ehlo(connection)
        if password is not None:
            self._authenticate(connection, password)
        if self.request.send_to is not None:
            self._send_test_mail(connection, self.request.send_to)
        self.stage = "quit"
        reply = connection.command("QUIT")
        if reply.code // 100 != 2:
            raise _Failure("protocol_error", "The server did not accept QUIT.", reply, polite=False)
        self.stage = "done"

    def _handshake(self, connection: _Connection) -> None:
        self.stage = "tls"
        try:
            context = _tls_context(self.request.settings.get("ca_certificate_pem") or None, self.skip_verify)
        except ssl.SSLError as exc:
            raise _Failure("tls_handshake_failed", f"The CA certificate could not be loaded: {exc.reason or exc}.", polite=False) from None
        tls = connection.start_tls(context, self.tls_hostname)
        self.server["tls_version"] = tls.version()
        self.server["certificate"] = _describe_certificate(tls.getpeercert(binary_form=True))

    def _ehlo(self, connection: _Connection) -> None:
        reply = connection.command(f"EHLO {connection.local_name}")
        if reply.code == 250:
            lines = [line.strip() for line in reply.lines[1:] if line.strip()]
        elif reply.code // 100 == 5:
            # A permanent refusal of EHLO is how a pre-ESMTP server answers.
            reply = connection.command(f"HELO {connection.local_name}")
            if reply.code != 250:
                raise _Failure("protocol_error", "The server refused both EHLO and HELO.", reply)
            lines = []
        else:
            raise _Failure("protocol_error", "The server refused EHLO.", reply)
        self._offered = {}
        for line in lines:
            keyword, params = (_EXTENSION_SEPARATOR.split(line, maxsplit=1) + [""])[:2]
            keyword = keyword.upper()
            self._offered[keyword] = params
            # The report keeps everything ever offered (STARTTLS included); what the
            # server offers after STARTTLS replaces what it offered before.
            self._reported[keyword] = line
        self.server["extensions"] = list(self._reported.values())

    def _authenticate(self, connection: _Connection, password: ResolvedPassword) -> None:
        self.stage = "auth"
        if "AUTH" not in self._offered:
            raise _Failure("auth_unsupported", "The server does not offer authentication; the credentials were not sent.")
        mechanisms = set(self._offered["AUTH"].upper().split())
        domain = self.request.settings.get("domain")
        login = f"{domain}\\{self.username}" if domain else str(self.username)
        if "PLAIN" in mechanisms:
            payload = _b64(f"\0{login}\0{password.value}")
            self._secrets.append(payload)
            reply = connection.command(f"AUTH PLAIN {payload}", shown=f"AUTH PLAIN {MASK}")
        elif "LOGIN" in mechanisms:
            reply = connection.command("AUTH LOGIN")
            if reply.code == 334:
                reply = connection.command(_b64(login), shown=MASK)
            if reply.code == 334:
                reply = connection.command(_b64(password.value), shown=MASK)
        else:
            offered = " ".join(sorted(mechanisms)) or "none"
            raise _Failure("auth_unsupported", f"The server offers AUTH {offered}, but neither PLAIN nor LOGIN.")
        if reply.code == 235:
            return
        if reply.code == 334:
            raise _Failure("protocol_error", "The server asked for more authentication data than PLAIN or LOGIN define.", reply, polite=False)
        if reply.code == 504:
            raise _Failure("auth_unsupported", "The server refused the authentication mechanism it offered.", reply)
        raise _AuthRejected("auth_failed", "The server rejected the username or password.", reply)

    def _send_test_mail(self, connection: _Connection, send_to: str) -> None:
        settings = self.request.settings
        self.stage = "mail_from"
        from_email = _wire_address(settings["from_email"], "sender_rejected")
        reply_to = _wire_address(settings["reply_to"], "sender_rejected") if settings.get("reply_to") else None
        sender = _wire_address(settings.get("envelope_from") or settings["from_email"], "sender_rejected")
        reply = connection.command(f"MAIL FROM:<{sender}>")
        if reply.code != 250:
            raise _Failure("sender_rejected", f"The server refused the sender {sender}.", reply)

        self.stage = "rcpt_to"
        to = _wire_address(send_to, "recipient_rejected")
        cc = [_wire_address(a, "recipient_rejected") for a in settings.get("cc") or []] if self.request.include_cc_bcc else []
        bcc = [_wire_address(a, "recipient_rejected") for a in settings.get("bcc") or []] if self.request.include_cc_bcc else []
        for recipient in {address.lower(): address for address in [to, *cc, *bcc]}.values():
            reply = connection.command(f"RCPT TO:<{recipient}>")
            if reply.code not in (250, 251):
                raise _Failure("recipient_rejected", f"The server refused the recipient {recipient}.", reply)

        self.stage = "data"
        message = self._test_message(from_email, reply_to, to, cc)
        reply = connection.command("DATA")
        if reply.code != 354:
            raise _Failure("message_rejected", "The server refused to take the message.", reply)
        payload = re.sub(rb"(?m)^\.", b"..", message.as_bytes(policy=email_policy.SMTP))
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        connection.send_message(payload)
        reply = connection.read_reply()
        if reply.code // 100 != 2:
            raise _Failure("message_rejected", "The server refused the message.", reply)
        self.message_id = message["Message-ID"]

    def _test_message(self, from_email: str, reply_to: str | None, to: str, cc: list[str]) -> EmailMessage:
        service = _one_line(self.request.service_name)
        scope = _one_line(self.request.scope)
        message = EmailMessage()
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=from_email.rpartition("@")[2])
        message["From"] = Address(display_name=_one_line(self.request.settings.get("from_name") or ""), addr_spec=from_email)
        if reply_to:
            message["Reply-To"] = reply_to
        message["To"] = to
        if cc:
            message["Cc"] = ", ".join(cc)
        message["Subject"] = f"Test message from {service} ({scope} SMTP settings)"
        message["Auto-Submitted"] = "auto-generated"
        body = (
            f"This is a test message from {service}.\n\n"
            f"It checks the {scope} SMTP settings: server {self.host} port {self.port}, security {self.security}.\n"
            "If you can read it, these settings deliver mail.\n"
        )
        # Quoted-printable keeps a non-ASCII scope deliverable by servers without 8BITMIME.
        message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
        return message


def _a_label(host: str) -> str:
    """``host`` in A-labels; unchanged when it is no valid IDN (its lookup then fails)."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        return host


def _wire_address(address: str, code: str) -> str:
    """The address as sent over SMTP: an internationalised domain becomes its A-label form."""
    local, at, domain = address.strip().rpartition("@")
    if at and not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise _Failure(code, f"The domain of {address} is not a valid internationalised domain name.") from None
    if not local.isascii():
        raise _Failure(code, f"{address} has a non-ASCII local part, which needs SMTPUTF8; this service does not send it.")
    return f"{local}{at}{domain}"
