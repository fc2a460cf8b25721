"""The dialogue: a check walks resolve_password, dns, connect, greeting, EHLO, STARTTLS/TLS, AUTH, the test mail and QUIT."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from typing import Any

from service.smtp_check import auth
from service.smtp_check.connection import Connection, describe_certificate, tls_context
from service.smtp_check.errors import AuthRejected, Failure
from service.smtp_check.login import MASK, authenticate_password, authenticate_token
from service.smtp_check.message import a_label, data_payload, test_message, wire_address
from service.smtp_check.policy import LOOKUPS, Resolver, ip_literal
from service.smtp_check.request import AccessToken, CheckRequest, PasswordUnavailable, ResolvedPassword, TokenUnavailable

log = logging.getLogger("service.smtp_check")

STAGES = (
    "resolve_password", "token", "dns", "connect", "greeting", "ehlo", "starttls", "tls",
    "auth", "mail_from", "rcpt_to", "data", "quit", "done",
)
SECURITY_MODES = ("none", "starttls", "ssl")
# "AUTH=LOGIN PLAIN" is the pre-RFC 4954 spelling some servers still send.
_EXTENSION_SEPARATOR = re.compile(r"[ =]")
_CONTROL_CHARACTERS = dict.fromkeys([*range(9), *range(10, 32), 127], "\ufffd")


class Check:
    """The state of one check run: the stage reached, the transcript and what was learnt."""

    def __init__(self, request: CheckRequest, default_resolver: Resolver) -> None:
        settings = request.settings
        self.request = request
        self.default_resolver = default_resolver
        self.host = str(settings["host"]).strip()
        self.port = int(settings["port"])
        self.security = settings.get("security") or "starttls"
        if self.security not in SECURITY_MODES:
            raise ValueError(f"Unknown security mode {self.security!r}.")
        self.skip_verify = bool(settings.get("insecure_skip_verify"))
        if self.skip_verify and request.fips_mode:
            raise ValueError("insecure_skip_verify is not allowed in FIPS mode.")
        self.username = settings.get("username") or None
        if request.get_password is not None and request.get_token is not None:
            raise ValueError("A check authenticates with a password or with a token, not both.")
        if (self.username is None) != (request.get_password is None and request.get_token is None):
            raise ValueError("A username and a password or token getter go together, or neither is given.")
        self.timeout = float(settings.get("timeout_seconds") or 10)
        if self.timeout <= 0:
            raise ValueError("timeout_seconds must be positive.")
        self.literal = ip_literal(self.host)
        # The name as DNS and TLS must see it: an IDNA 2008 A-label, as the
        # settings validation judged it (Python's own codec is IDNA 2003).
        self.wire_host = self.host if self.literal or self.host.isascii() else a_label(self.host)
        self.tls_hostname = self.literal or self.wire_host
        self.stage = STAGES[0]
        self.transcript: list[str] = []
        self.server: dict[str, Any] = {
            "banner": None, "extensions": [], "tls_version": None, "certificate": None, "address": None,
        }
        self.secret: dict[str, Any] | None = None
        self.token: dict[str, Any] | None = None
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
        except Failure as failure:
            reply = failure.reply
            error = {
                "code": failure.code,
                "message": self._redact(failure.message),
                "smtp_code": reply.code if reply else None,
                "smtp_message": self._redact(reply.text) if reply else None,
            }
            if failure.code == "token_unavailable":
                error["oauth_error"] = failure.oauth_error
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
            "token": self.token,
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
        self._secrets.extend(value for value in (password.value, auth.b64(password.value)) if value)
        self.secret = {"source": password.source, "version": password.version, "refreshed": refreshed}

    def _walk(self) -> None:
        if self.request.get_token is not None:
            self._walk_with_token()
            return
        password = self._first_password()
        addresses = self._destination()
        try:
            self._session(addresses, password)
        except AuthRejected as rejected:
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
            raise Failure("password_unavailable", f"The SMTP password could not be resolved: {exc.message}") from None
        self._remember(password, refreshed=False)
        return password

    def _refreshed_password(self, rejected: AuthRejected) -> ResolvedPassword:
        assert self.request.get_password is not None
        try:
            password = self.request.get_password(True)
        except PasswordUnavailable as exc:
            raise Failure(
                "password_unavailable",
                f"The server rejected the cached password, and fetching it afresh failed: {exc.message}",
                rejected.reply,
            ) from None
        self._remember(password, refreshed=True)
        return password

    def _walk_with_token(self) -> None:
        token = self._token(refresh=False)
        addresses = self._destination()
        try:
            self._session(addresses, token)
        except AuthRejected as rejected:
            # The token may have been revoked or its grant changed since it was issued:
            # it is dropped, and one new token gets one more attempt.
            fresh = self._token(refresh=True, rejected=rejected)
            if fresh.value == token.value:
                raise
            self._session(addresses, fresh)

    def _token(self, *, refresh: bool, rejected: AuthRejected | None = None) -> AccessToken:
        assert self.request.get_token is not None
        stage = self.stage
        self.stage = "token"
        try:
            token = self.request.get_token(refresh)
        except TokenUnavailable as exc:
            if exc.code == "password_unavailable" and rejected is None:
                self.stage = "resolve_password"
            elif rejected is not None:
                self.stage = stage
            prefix = "The server refused the access token, and a new one could not be obtained: " if rejected else ""
            raise Failure(exc.code, prefix + exc.message, rejected.reply if rejected else None, oauth_error=exc.oauth_error) from None
        if rejected is not None:
            self.stage = stage
        self._secrets.append(token.value)
        self.token = {
            "flow": token.flow,
            "expires_at": token.expires_at.isoformat().replace("+00:00", "Z") if token.expires_at else None,
            "refreshed": refresh,
        }
        return token

    def _destination(self) -> list[str]:
        self.stage = "dns"
        if not self.request.policy.port_allowed(self.port):
            allowed = ", ".join(str(port) for port in sorted(self.request.policy.allowed_ports))
            raise Failure("destination_not_allowed", f"Port {self.port} is not allowed (allowed: {allowed}).")
        addresses = [self.literal] if self.literal else self._resolve()
        for address in addresses:
            network = self.request.policy.denied_network(address)
            if network is not None:
                named = address if self.literal else f"{self.host} ({address})"
                raise Failure("destination_not_allowed", f"{named} is in the denied network {network}.")
        return addresses

    def _resolve(self) -> list[str]:
        resolver = self.request.resolver or self.default_resolver
        try:
            found = LOOKUPS.call(resolver, (self.wire_host, self.port), self.remaining())
        except TimeoutError:
            raise Failure("timeout", f"Resolving {self.host} took longer than {self.timeout:g} s.") from None
        except (OSError, UnicodeError) as exc:
            raise Failure("dns_failure", f"The host name {self.host} could not be resolved: {exc}") from None
        addresses = []
        for address in dict.fromkeys(found):
            if ip_literal(address) is None:
                raise Failure("dns_failure", f"The host name {self.host} resolved to something that is not an address.")
            addresses.append(address)
        if not addresses:
            raise Failure("dns_failure", f"The host name {self.host} has no addresses.")
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
                raise Failure("timeout", f"Connecting to {address} port {self.port} took longer than {self.timeout:g} s.") from None
            except OSError as exc:
                sock.close()
                reason = exc.strerror or str(exc)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.server["address"] = address
            return sock
        raise Failure("connection_refused", f"Could not connect to {self.host} port {self.port}: {reason}.")

    def _session(self, addresses: list[str], password: ResolvedPassword | AccessToken | None) -> None:
        connection = Connection(self._connect(addresses), self)
        try:
            self._converse(connection, password)
        except Failure as failure:
            if failure.polite:
                connection.quit_quietly()
            raise
        except TimeoutError:
            raise Failure("timeout", f"The server did not answer within {self.timeout:g} s.") from None
        except ssl.SSLCertVerificationError as exc:
            raise Failure(
                "certificate_verify_failed",
                f"The server certificate could not be verified for {self.tls_hostname}: {exc.verify_message}.",
            ) from None
        except ssl.SSLError as exc:
            code = "tls_handshake_failed" if self.stage == "tls" else "protocol_error"
            raise Failure(code, f"TLS failed: {exc.reason or exc}.") from None
        except OSError as exc:
            code = "tls_handshake_failed" if self.stage == "tls" else "protocol_error"
            raise Failure(code, f"The connection to the server was lost: {exc.strerror or exc}.") from None
        finally:
            connection.close()

    def _converse(self, connection: Connection, password: ResolvedPassword | AccessToken | None) -> None:
        if self.security == "ssl":
            self._handshake(connection)
        self.stage = "greeting"
        greeting = connection.read_reply()
        self.server["banner"] = greeting.text
        if greeting.code != 220:
            raise Failure("protocol_error", "The server refused the session in its greeting.", greeting)
        self.stage = "ehlo"
        self._ehlo(connection)
        if self.security == "starttls":
            self.stage = "starttls"
            if "STARTTLS" not in self._offered:
                raise Failure(
                    "starttls_unsupported",
                    "The server does not offer STARTTLS; the check stops rather than continue in plaintext.",
                )
            reply = connection.command("STARTTLS")
            if reply.code != 220:
                raise Failure("starttls_unsupported", "The server refused STARTTLS.", reply)
            self._handshake(connection)
            self._ehlo(connection)
        if isinstance(password, AccessToken):
            self._authenticate_with_token(connection, password)
        elif password is not None:
            self._authenticate(connection, password)
        if self.request.send_to is not None:
            self._send_test_mail(connection, self.request.send_to)
        self.stage = "quit"
        reply = connection.command("QUIT")
        if reply.code // 100 != 2:
            raise Failure("protocol_error", "The server did not accept QUIT.", reply, polite=False)
        self.stage = "done"

    def _handshake(self, connection: Connection) -> None:
        self.stage = "tls"
        try:
            context = tls_context(self.request.settings.get("ca_certificate_pem") or None, self.skip_verify)
        except ssl.SSLError as exc:
            raise Failure("tls_handshake_failed", f"The CA certificate could not be loaded: {exc.reason or exc}.", polite=False) from None
        tls = connection.start_tls(context, self.tls_hostname)
        self.server["tls_version"] = tls.version()
        self.server["certificate"] = describe_certificate(tls.getpeercert(binary_form=True))

    def _ehlo(self, connection: Connection) -> None:
        reply = connection.command(f"EHLO {connection.local_name}")
        if reply.code == 250:
            lines = [line.strip() for line in reply.lines[1:] if line.strip()]
        elif reply.code // 100 == 5:
            # A permanent refusal of EHLO is how a pre-ESMTP server answers.
            reply = connection.command(f"HELO {connection.local_name}")
            if reply.code != 250:
                raise Failure("protocol_error", "The server refused both EHLO and HELO.", reply)
            lines = []
        else:
            raise Failure("protocol_error", "The server refused EHLO.", reply)
        self._offered = {}
        for line in lines:
            keyword, params = (_EXTENSION_SEPARATOR.split(line, maxsplit=1) + [""])[:2]
            keyword = keyword.upper()
            self._offered[keyword] = params
            # The report keeps everything ever offered (STARTTLS included); what the
            # server offers after STARTTLS replaces what it offered before.
            self._reported[keyword] = line
        self.server["extensions"] = list(self._reported.values())

    def _authenticate(self, connection: Connection, password: ResolvedPassword) -> None:
        self.stage = "auth"
        domain = self.request.settings.get("domain")
        login = f"{domain}\\{self.username}" if domain else str(self.username)
        authenticate_password(connection, self._offered, login, password.value, self._secrets)

    def _authenticate_with_token(self, connection: Connection, token: AccessToken) -> None:
        self.stage = "auth"
        authenticate_token(connection, self._offered, str(self.username), token.value, (self.wire_host, self.port), self._secrets)

    def _send_test_mail(self, connection: Connection, send_to: str) -> None:
        settings = self.request.settings
        self.stage = "mail_from"
        from_email = wire_address(settings["from_email"], "sender_rejected")
        reply_to = wire_address(settings["reply_to"], "sender_rejected") if settings.get("reply_to") else None
        sender = wire_address(settings.get("envelope_from") or settings["from_email"], "sender_rejected")
        reply = connection.command(f"MAIL FROM:<{sender}>")
        if reply.code != 250:
            raise Failure("sender_rejected", f"The server refused the sender {sender}.", reply)

        self.stage = "rcpt_to"
        to = wire_address(send_to, "recipient_rejected")
        cc = [wire_address(a, "recipient_rejected") for a in settings.get("cc") or []] if self.request.include_cc_bcc else []
        bcc = [wire_address(a, "recipient_rejected") for a in settings.get("bcc") or []] if self.request.include_cc_bcc else []
        for recipient in {address.lower(): address for address in [to, *cc, *bcc]}.values():
            reply = connection.command(f"RCPT TO:<{recipient}>")
            if reply.code not in (250, 251):
                raise Failure("recipient_rejected", f"The server refused the recipient {recipient}.", reply)

        self.stage = "data"
        message = test_message(
            service_name=self.request.service_name, scope=self.request.scope,
            from_name=settings.get("from_name"), from_email=from_email, reply_to=reply_to, to=to, cc=cc,
            host=self.host, port=self.port, security=self.security,
        )
        reply = connection.command("DATA")
        if reply.code != 354:
            raise Failure("message_rejected", "The server refused to take the message.", reply)
        connection.send_message(data_payload(message))
        reply = connection.read_reply()
        if reply.code // 100 != 2:
            raise Failure("message_rejected", "The server refused the message.", reply)
        self.message_id = message["Message-ID"]
