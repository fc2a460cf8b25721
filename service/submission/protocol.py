"""One client connection: aiosmtpd's SMTP with the service's rules on TLS, AUTH, limits and replies."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from service.submission import replies

if TYPE_CHECKING:
    from service.submission.handler import Submission

log = logging.getLogger("smtpconf.submission")
#: The longest reply line sent (RFC 5321 allows 512 octets with the CRLF).
REPLY_LIMIT = 510
_SLOT_REFUSALS = {
    "total": "421 4.7.0 Too many connections to this server; try again later",
    "client": "421 4.7.0 Too many connections from your address; try again later",
}


def client_address(peer: Any) -> str:
    """The client's IP address as text (an IPv4-mapped IPv6 address as IPv4)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return str(host)
    return str(getattr(address, "ipv4_mapped", None) or address)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class SubmissionSMTP(SMTP):
    """aiosmtpd's protocol, plus: connection slots, AUTH only over TLS (but from loopback), the token check
    off the event loop, a lockout after repeated AUTH failures, a 421 before an idle close, and an enhanced
    status code on every reply."""

    def __init__(self, submission: "Submission", *, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(submission, **kwargs)
        self.submission = submission
        self.implicit_tls = implicit_tls
        self.client = ""
        self._slot_refusal: str | None = None
        self._holds_slot = False
        self._plain_replies = False

    # connection life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the client's connection, not the TLS layer STARTTLS puts on it
            self.client = client_address(transport.get_extra_info("peername"))
            self._slot_refusal = self.submission.slots.take(self.client)
            self._holds_slot = self._slot_refusal is None
            self.submission.connections.add(self)
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        if self._slot_refusal is not None:
            log.warning("connection refused", extra={"client": self.client, "limit": self._slot_refusal})
            await self.push(_SLOT_REFUSALS[self._slot_refusal])
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        self.submission.connections.discard(self)
        if self._holds_slot:
            self._holds_slot = False
            self.submission.slots.give_back(self.client)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: say why before closing an idle connection, so the client does not hang on a dead one.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"421 4.4.2 {self.hostname} Idle too long, closing connection\r\n".encode("ascii"))
        super()._timeout_cb()

    def close_for_shutdown(self) -> None:
        """Say why the connection ends (RFC 5321 3.8), then close it."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"421 4.3.2 {self.hostname} Service shutting down, try again later\r\n".encode("ascii"))
            self.transport.close()

    def pause_idle_timer(self) -> None:
        """While the mail server is being waited for, the client is not idle."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def resume_idle_timer(self) -> None:
        if self.transport is not None:
            self._reset_timeout()

    # replies

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = replies.with_enhanced_code(status)[:REPLY_LIMIT]
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: the replies to EHLO carry no enhanced code (an extension line must stay as it is).
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    def extensions(self, responses: list[str]) -> list[str]:
        """The EHLO reply: aiosmtpd's lines, AUTH only where it may be used, ENHANCEDSTATUSCODES, no HELP."""
        lines = [line[4:] for line in responses]
        lines = [line for line in lines if line != "HELP" and (self.may_authenticate() or not line.startswith("AUTH"))]
        lines.append("ENHANCEDSTATUSCODES")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    # authentication

    @property
    def over_tls(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def may_authenticate(self) -> bool:
        """AUTH PLAIN and LOGIN send the token as it is: only over TLS, or from this host."""
        return self.over_tls or is_loopback(self.client)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.may_authenticate():
            await self.push("538 5.7.11 Encryption required: use STARTTLS before AUTH")
            return
        if self.submission.login_failures.reached(self.client):
            await self._close_after_failures()
            return
        await super().smtp_AUTH(arg)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously on the event loop: the token is checked later, in
        # _verified, off the loop. Until then the attempt stands refused.
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802 -- aiosmtpd's name
        return await self._verified(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802 -- aiosmtpd's name
        return await self._verified(await super().auth_LOGIN(_, args))

    async def _verified(self, decoded: AuthResult) -> AuthResult:
        if decoded.handled or not isinstance(decoded.auth_data, LoginPassword):
            return decoded  # not decodable or aborted: aiosmtpd has answered
        outcome = await self.submission.authenticate(decoded.auth_data.login, decoded.auth_data.password)
        if outcome.identity is not None:
            return AuthResult(success=True, auth_data=outcome.identity, message="235 2.7.0 Authentication successful")
        if outcome.counts_as_failure and self.submission.login_failures.add(self.client) >= self.submission.login_failure_limit:
            await self._close_after_failures()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=outcome.reply)

    async def _close_after_failures(self) -> None:
        log.warning("authentication failures: closing", extra={"client": self.client})
        await self.push("421 4.7.0 Too many authentication failures from your address; closing connection")
        if self.transport is not None:
            self.transport.close()

