"""The sending core: one message, the effective settings, the credential, the mail server's final reply, one log row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable

import sqlalchemy as sa

from service import smtp_check
from service.db import is_unavailable
from service.credentials import CredentialPath
from service.errors import ApiError, DatabaseUnavailable, Forbidden, PasswordUnavailable, TokenUnavailable
from service.observability import MESSAGES
from service.sending.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    TenantNotAllowed,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.sending.message import Outgoing, build, load_request
from service.sending.pool import Pool, pool_key
from service.sending.relayed import rewrite
from service.sending.store import DeliveryLog
from service.settings import SettingsService
from service.smtp_check.auth import b64
from service.smtp_check.errors import Reply
from service.smtp_check.request import AccessToken, ResolvedPassword
from service.smtp_check.session import RecipientsRefused, SendFailure
from service.tokens import Principal

log = logging.getLogger("smtpconf.sending")

SENDER_ROLE = "sender"
MASK = "********"
_UNREACHABLE = {"connection_refused", "dns_failure", "connection_lost"}
_TLS = {"tls_handshake_failed", "certificate_verify_failed", "starttls_unsupported"}
_REASONS = {"timeout": "timeout", "destination_not_allowed": "not_allowed", "auth_unsupported": "auth", "auth_failed": "auth"}


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A message the mail server took (its final reply was 250)."""

    id: int
    message_id: str
    accepted: list[str]
    smtp_code: int
    smtp_message: str
    #: Recipients the server refused while taking the message for the others: address -> {code, message}.
    rejected: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def answer(self) -> dict[str, Any]:
        """The HTTP answer (200)."""
        body: dict[str, Any] = {
            "id": self.id,
            "message_id": self.message_id,
            "accepted": self.accepted,
            "smtp": {"code": self.smtp_code, "message": self.smtp_message},
        }
        if self.rejected:
            body["rejected"] = self.rejected
        return body


Credential = ResolvedPassword | AccessToken | None


class _Credentials:
    """The getter for one send, the credential in hand, and the values to mask in anything shown."""

    def __init__(self, get: Callable[[bool], Credential] | None) -> None:
        self.get = get
        self.masked: list[str] = []
        self.current: Credential = None

    def fetch(self, refresh: bool) -> Credential:
        if self.get is None:
            return None
        try:
            self.current = self.get(refresh)
        except smtp_check.PasswordUnavailable as exc:
            raise PasswordUnavailable(exc.message, headers={"Retry-After": "30"}) from None
        except smtp_check.TokenUnavailable as exc:
            if exc.code == "password_unavailable":
                raise PasswordUnavailable(exc.message, headers={"Retry-After": "30"}) from None
            extra: dict[str, Any] = {"oauth_error": exc.oauth_error}
            if exc.code == "destination_not_allowed":
                extra["reason"] = exc.code  # the token endpoint is in a denied network: no use retrying
            raise TokenUnavailable(exc.message, extra=extra, headers={"Retry-After": "30"}) from None
        assert self.current is not None
        self.masked += [self.current.value, b64(self.current.value)]
        return self.current

    def redact(self, text: str) -> str:
        for value in self.masked:
            if value:
                text = text.replace(value, MASK)
        return text


class SendingCore:
    """Sends one message at a time with a level's effective settings (``tenant=None``: the system level)."""

    def __init__(
        self,
        settings: SettingsService,
        credentials: CredentialPath,
        pool: Pool,
        deliveries: DeliveryLog,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.pool = pool
        self.deliveries = deliveries

    def send(
        self, payload: dict[str, Any], *, tenant: str | None, principal: Principal, idempotency_key: str | None = None
    ) -> Delivery:
        """The HTTP side: ``payload`` is the body of ``POST /v1/messages``."""
        self._authorise(principal, tenant)
        request = load_request(payload)
        effective = self.settings.effective(tenant)
        outgoing = build(request, effective.document)
        claim = None
        if idempotency_key is not None:
            digest = hashlib.sha256(json.dumps([tenant, payload], sort_keys=True).encode()).hexdigest()
            claim = (principal.name, idempotency_key, digest)
        return self._send(outgoing, effective, tenant=tenant, principal=principal, channel="http", claim=claim)

    def relay(
        self,
        *,
        tenant: str | None,
        principal: Principal,
        recipients: list[str],
        content: bytes,
        smtputf8: bool = False,
        channel: str = "smtp",
    ) -> Delivery:
        """The SMTP submission side: a client's message (DATA, CRLF lines), rewritten to the settings and relayed."""
        self._authorise(principal, tenant)
        effective = self.settings.effective(tenant)
        outgoing = rewrite(content, recipients, effective.document, smtputf8=smtputf8)
        return self._send(outgoing, effective, tenant=tenant, principal=principal, channel=channel, claim=None)

    @staticmethod
    def _authorise(principal: Principal, tenant: str | None) -> None:
        if SENDER_ROLE not in principal.roles:
            raise Forbidden("Sending mail needs the sender role.")
        if not principal.may_act_for(tenant):
            raise TenantNotAllowed("This token may not send for this tenant." if tenant else "This token may not send at the system level.")

    def _send(
        self, outgoing: Outgoing, effective: Any, *, tenant: str | None, principal: Principal, channel: str,
        claim: tuple[str, str, str] | None,
    ) -> Delivery:
        entry = {
            "tenant": tenant,
            "token_name": principal.name,
            "channel": channel,
            "envelope_from": outgoing.sender,
            "recipient_count": len(outgoing.recipients),
            "recipient_domains": sorted({address.rpartition("@")[2].lower() for address in outgoing.recipients}),
            "notification": outgoing.notification,
            "message_id": outgoing.message_id,
            "size_bytes": len(outgoing.payload),
        }
        try:
            row_id, found = self.deliveries.start(entry, claim)
        except sa.exc.SQLAlchemyError as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable("The delivery log cannot be written now, so nothing was sent; try again shortly.") from None
            raise
        if found is not None and not found.owned:
            return _replay(found, claim)
        started = time.monotonic()
        credentials = _Credentials(self._getter(effective))
        try:
            handover = self._deliver(effective, outgoing, credentials)
        except ApiError as error:
            self._failed(row_id, error, started, channel, claim, credentials)
            raise
        except BaseException as exc:
            self.deliveries.finish(row_id, {"outcome": "failed", "error_code": "internal_error", "duration_ms": _ms(started)}, claim=claim)
            MESSAGES.labels(channel, "failed").inc()
            log.error("sending failed", extra={"delivery_id": row_id, "error": type(exc).__name__})
            raise
        reply = handover.reply
        delivery = Delivery(
            id=row_id,
            message_id=outgoing.message_id,
            accepted=handover.accepted,
            smtp_code=reply.code,
            smtp_message=credentials.redact(reply.text),
            rejected={address: _refusal(r, credentials) for address, r in handover.refused.items()},
        )
        outcome = {
            "outcome": "sent", "smtp_code": reply.code, "smtp_enhanced_code": reply.enhanced or None,
            "smtp_message": delivery.smtp_message[:512], "accepted_count": len(handover.accepted),
            "rejected_count": len(handover.refused), "duration_ms": _ms(started),
        }
        self.deliveries.finish(row_id, outcome, claim=claim, answer=(200, delivery.answer()) if claim else None)
        MESSAGES.labels(channel, "sent").inc()
        log.info("message sent", extra={"delivery_id": row_id, "tenant": tenant, "channel": channel, "duration_ms": outcome["duration_ms"]})
        return delivery

    def _getter(self, effective: Any) -> Callable[[bool], Credential] | None:
        timeout = float(effective.document.get("timeout_seconds") or 10)
        return self.credentials.token_getter(effective, timeout=timeout) or self.credentials.password_getter(effective)

    def _failed(
        self, row_id: int, error: ApiError, started: float, channel: str, claim: tuple[str, str, str] | None,
        credentials: _Credentials,
    ) -> None:
        outcome_name = {
            "upstream_rejected": "rejected", "upstream_unavailable": "unavailable",
            "password_unavailable": "credential_unavailable", "token_unavailable": "credential_unavailable",
        }.get(error.code, "failed")
        smtp_code = getattr(error, "smtp_code", None)
        message = getattr(error, "smtp_message", None)
        outcome = {
            "outcome": outcome_name, "error_code": error.code, "smtp_code": smtp_code,
            "smtp_enhanced_code": getattr(error, "smtp_enhanced_code", None),
            "smtp_message": credentials.redact(message)[:512] if message else None,
            "accepted_count": 0, "rejected_count": len(getattr(error, "rejected", {}) or {}), "duration_ms": _ms(started),
        }
        # An answer is kept for the key only when the message may have gone or never will: the
        # server refused this message for good, or the data went out without a final reply. A
        # failure before the transaction (a refused login, a TLS problem) frees the key for the retry.
        refused_message = error.code == "upstream_rejected" and error.extra.get("stage") in ("rset", "mail_from", "rcpt_to", "data")
        keep = refused_message or getattr(error, "maybe_delivered", False)
        answer = (error.status, {"problem": error.to_problem(), "headers": error.headers}) if keep and claim else None
        self.deliveries.finish(row_id, outcome, claim=claim, answer=answer)
        MESSAGES.labels(channel, outcome_name).inc()
        log.info("message not sent", extra={"delivery_id": row_id, "channel": channel, "error_code": error.code, "smtp_code": smtp_code})

    # the wire

    def _deliver(self, effective: Any, outgoing: Outgoing, credentials: _Credentials) -> Any:
        settings = effective.document
        level = effective.scope
        credential = credentials.fetch(False)
        key = pool_key(settings, credential)
        try:
            session = self.pool.checkout(level, key, settings)
        except ValueError as exc:  # insecure_skip_verify saved before FIPS mode was turned on
            raise UpstreamUnavailable(str(exc), reason="tls") from None
        refreshed = False
        retried_stale = False
        while True:
            reused = session.usable
            try:
                if not reused:
                    session.open(credential)
                handover = session.send(outgoing.sender, outgoing.recipients, outgoing.payload)
            except RecipientsRefused as refused:
                self.pool.checkin(level, key, session)
                raise _upstream(refused, credentials, {a: _refusal(r, credentials) for a, r in refused.refused.items()}) from None
            except SendFailure as failure:
                if session.usable and not failure.auth_rejected:
                    self.pool.checkin(level, key, session)  # refused, but the session is sound (RSET comes first)
                else:
                    session.close()
                if reused and not retried_stale and failure.stage in ("rset", "mail_from") and _dropped(failure.reply):
                    # The server dropped the idle connection: one new one, nothing was sent yet.
                    retried_stale = True
                    session = self.pool.new_session(settings)
                    continue
                if failure.auth_rejected and not refreshed and credential is not None:
                    refreshed = True
                    fresh = credentials.fetch(True)
                    if fresh is not None and fresh.value != credential.value:
                        credential, key = fresh, pool_key(settings, fresh)
                        session = self.pool.new_session(settings)
                        continue
                raise _upstream(failure, credentials) from None
            self.pool.checkin(level, key, session)
            return handover


def _dropped(reply: Reply | None) -> bool:
    return reply is None or reply.code == 421


def _refusal(reply: Reply, credentials: _Credentials) -> dict[str, Any]:
    return {"code": reply.code, "message": credentials.redact(reply.text)}


def _upstream(failure: SendFailure, credentials: _Credentials, rejected: dict[str, dict[str, Any]] | None = None) -> ApiError:
    """The contract's error for what ended a send."""
    reply = failure.reply
    message = credentials.redact(failure.message)
    if reply is not None and reply.code // 100 == 5:
        error: ApiError = UpstreamRejected(
            message, smtp_code=reply.code, smtp_enhanced_code=reply.enhanced or None,
            smtp_message=credentials.redact(reply.text), rejected=rejected,
        )
    elif reply is not None:
        error = UpstreamUnavailable(
            message, reason="temporary", smtp_code=reply.code, smtp_enhanced_code=reply.enhanced or None,
            smtp_message=credentials.redact(reply.text),
        )
    else:
        reason = "unreachable" if failure.code in _UNREACHABLE else "tls" if failure.code in _TLS else _REASONS.get(failure.code, "protocol")
        error = UpstreamUnavailable(message, reason=reason)
    error.maybe_delivered = failure.maybe_delivered  # type: ignore[attr-defined]
    error.extra["stage"] = failure.stage
    return error


def _replay(found: Any, claim: tuple[str, str, str] | None) -> Delivery:
    """The answer kept for an Idempotency-Key, again; or why there is none."""
    assert claim is not None
    if found.request_hash != claim[2]:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with another request; use a new key for a new message.",
            errors={"Idempotency-Key": ["Used before with another body."]},
        )
    if found.status is None:
        raise IdempotencyInProgress("A request with this Idempotency-Key is being sent; its answer will be kept.")
    if found.status == 200:
        answer = found.answer
        smtp = answer["smtp"]
        return Delivery(answer["id"], answer["message_id"], answer["accepted"], smtp["code"], smtp["message"], answer.get("rejected", {}))
    problem = dict(found.answer["problem"])
    raise ApiError(
        problem.pop("detail"), status=problem.pop("status"), code=problem.pop("code"), title=problem.pop("title"),
        errors=problem.pop("errors", None), extra={k: v for k, v in problem.items() if k != "type"},
        headers=found.answer.get("headers"),
    )


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
