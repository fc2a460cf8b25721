"""What the submission server does with a session: AUTH, the envelope's limits, and relaying through the core."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

from aiosmtpd.smtp import Envelope, Session, TLSSetupException

from service.config import Config
from service.errors import ApiError
from service.submission import auth, replies
from service.submission.guard import has_bare_line_break
from service.submission.limits import ConnectionSlots, MinuteCounter
from service.submission.protocol import SubmissionSMTP

log = logging.getLogger("smtpconf.submission")
#: AUTH failures from one address within a minute after which its connections are closed.
LOGIN_FAILURE_LIMIT = 5
#: Threads that wait for the database on AUTH, and threads that wait for mail servers on DATA.
AUTH_THREADS = 4
RELAY_THREADS = 32


class Submission:
    """The aiosmtpd handler shared by every connection of one server process."""

    def __init__(self, services: Any, config: Config) -> None:
        self.services = services
        self.config = config
        self.slots = ConnectionSlots(config.submission_max_connections, config.submission_max_connections_per_client)
        # Not named auth_*: aiosmtpd takes a handler's auth_* attributes for AUTH mechanisms.
        self.login_failure_limit = LOGIN_FAILURE_LIMIT
        self.login_failures = MinuteCounter(LOGIN_FAILURE_LIMIT)
        self.messages = MinuteCounter(config.submission_messages_per_minute)
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="submission-auth")
        self._relay_pool = concurrent.futures.ThreadPoolExecutor(RELAY_THREADS, thread_name_prefix="submission-relay")
        self.relays_in_flight = 0
        #: The open connections, told when the server stops.
        self.connections: set[SubmissionSMTP] = set()

    def close(self) -> None:
        """Wait for the messages being relayed, then stop the threads."""
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        self._relay_pool.shutdown(wait=True)

    async def authenticate(self, login: bytes, password: bytes) -> auth.Outcome:
        """Check an AUTH attempt off the event loop, so a slow database holds up no other connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._auth_pool, auth.check, self.services.authenticate, login, password)

    # aiosmtpd's hooks

    async def handle_EHLO(self, server: SubmissionSMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return server.extensions(responses)

    async def handle_MAIL(self, server: SubmissionSMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        identity: auth.Identity = session.auth_data
        if self.messages.reached(identity.principal.name):
            return (f"451 4.7.1 This token has sent {self.config.submission_messages_per_minute} messages in the last"
                    " minute; try again later")
        self.messages.add(identity.principal.name)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK (the envelope sender becomes the settings' own)"

    async def handle_RCPT(self, server: SubmissionSMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.submission_max_recipients:
            return f"452 4.5.3 Too many recipients: at most {self.config.submission_max_recipients} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SubmissionSMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if has_bare_line_break(content):
            log.warning("message refused: bare line break", extra={"client": server.client})
            return replies.BARE_LINE_BREAK
        loop = asyncio.get_running_loop()
        server.pause_idle_timer()
        self.relays_in_flight += 1
        try:
            return await loop.run_in_executor(self._relay_pool, self._relay, session.auth_data, envelope, server.client)
        finally:
            self.relays_in_flight -= 1
            server.resume_idle_timer()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake failed", extra={"error": type(error.__cause__).__name__})
        else:
            log.error("submission session failed", extra={"error": type(error).__name__})
        return replies.UNEXPECTED

    # the relay, in a thread

    def _relay(self, identity: auth.Identity, envelope: Envelope, client: str) -> str:
        started = time.perf_counter()
        reply = self._relayed(identity, envelope)
        log.info(
            "submission",
            extra={
                "client": client,
                "tenant": identity.tenant,
                "principal": identity.principal.name,
                "recipients": len(envelope.rcpt_tos),
                "size": len(envelope.original_content or b""),
                "reply": reply[:9],
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return reply

    def _relayed(self, identity: auth.Identity, envelope: Envelope) -> str:
        try:
            # The token is checked again for every message: one removed or restricted since AUTH stops here.
            principal = auth.sender(self.services.authenticate, identity.token, identity.tenant)
            delivery = self.services.sending.relay(
                tenant=identity.tenant, principal=principal, recipients=list(envelope.rcpt_tos),
                content=envelope.original_content or b"", smtputf8=envelope.smtp_utf8, channel="smtp",
            )
        except auth.Refused as exc:
            return exc.reply.replace("535", "550", 1)
        except ApiError as exc:
            return replies.for_error(exc)
        except Exception as exc:
            # The type only: an unexpected error's text may quote anything, a credential included.
            log.error("submission relay failed", extra={"error": type(exc).__name__})
            return replies.UNEXPECTED
        refused = [address for address in envelope.rcpt_tos if address not in delivery.accepted]
        return replies.delivered(delivery.smtp_message, delivery.id, refused)
