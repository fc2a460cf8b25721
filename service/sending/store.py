"""The delivery log and the Idempotency-Key table: metadata only, never a body, a subject or a credential."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, Database, is_unavailable, iso_utc, utcnow
from service.sending.log_writer import BatchWriter, IdBlocks

log = logging.getLogger("smtpconf.sending")

#: How long an Idempotency-Key is remembered.
IDEMPOTENCY_SECONDS = 24 * 3600
#: Seconds between two purges of expired rows, per process.
PURGE_INTERVAL_SECONDS = 3600.0
MAX_REPLY_TEXT = 512
#: Every outcome column, so that rows written in one batch all name the same columns.
NO_OUTCOME: dict[str, Any] = dict.fromkeys(
    ("error_code", "smtp_code", "smtp_enhanced_code", "smtp_message", "accepted_count", "rejected_count", "duration_ms")
)


class DeliveryRecord(Base):
    """One message sent (or not) through the service."""

    __tablename__ = "delivery_log"
    __table_args__ = (sa.Index("ix_delivery_log_tenant_id", "tenant", "id"), sa.Index("ix_delivery_log_at", "at"))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime]
    tenant: Mapped[str | None] = mapped_column(sa.String(128))
    token_name: Mapped[str] = mapped_column(sa.String(128))
    channel: Mapped[str] = mapped_column(sa.String(16))
    envelope_from: Mapped[str] = mapped_column(sa.String(320))
    recipient_count: Mapped[int]
    recipient_domains: Mapped[list[str]]
    notification: Mapped[str | None] = mapped_column(sa.String(64))
    message_id: Mapped[str] = mapped_column(sa.String(320))
    size_bytes: Mapped[int]
    outcome: Mapped[str] = mapped_column(sa.String(32))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    smtp_code: Mapped[int | None]
    smtp_enhanced_code: Mapped[str | None] = mapped_column(sa.String(16))
    smtp_message: Mapped[str | None] = mapped_column(sa.String(MAX_REPLY_TEXT))
    accepted_count: Mapped[int | None]
    rejected_count: Mapped[int | None]
    duration_ms: Mapped[int | None]


class IdempotencyRecord(Base):
    """An Idempotency-Key of one token: claimed before sending, the answer kept after."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (sa.UniqueConstraint("token_name", "key_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    token_name: Mapped[str] = mapped_column(sa.String(128))
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime]
    status: Mapped[int | None]
    answer: Mapped[dict[str, Any] | None]


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Claim:
    """What claiming a key found: ``owned`` (go ahead and send), or the stored answer, or a send in progress."""

    def __init__(self, *, owned: bool, request_hash: str, status: int | None = None, answer: dict[str, Any] | None = None) -> None:
        self.owned = owned
        self.request_hash = request_hash
        self.status = status
        self.answer = answer


class DeliveryLog:
    """Rows of the delivery log, the idempotency keys, and their retention."""

    def __init__(self, db: Database, *, retention_days: int) -> None:
        self.db = db
        self.retention_days = retention_days
        self._purged_at = time.monotonic() - PURGE_INTERVAL_SECONDS / 2
        self._purge_lock = threading.Lock()
        self._ids = IdBlocks(db)
        self._writer = BatchWriter(db, DeliveryRecord.__table__)
        # Rows of messages being sent without an Idempotency-Key: written with their outcome.
        self._started: dict[int, dict[str, Any]] = {}

    def start(self, entry: dict[str, Any], claim: tuple[str, str, str] | None = None) -> tuple[int, Claim | None]:
        """The row id of a message about to be sent (and the claim of its key): its id, and what the key held.

        ``claim`` is (token name, key, request hash): the key and the row are
        written before sending. When another request holds the key, nothing is
        written and the id is 0. Without a key the row is written, with its
        outcome, by the batch writer (``finish``).
        """
        self._maybe_purge()
        row_id = self._ids.next()
        row = {"id": row_id, "at": utcnow(), "outcome": "sending", **entry}
        if claim is None:
            self._started[row_id] = row
            return row_id, None
        try:
            with self.db.transaction() as session:
                found = self._claimed(session, claim)
                if found is not None:
                    return 0, found
                session.execute(sa.insert(DeliveryRecord), [row])
                token_name, key, request_hash = claim
                session.add(IdempotencyRecord(
                    token_name=token_name, key_hash=key_hash(key), request_hash=request_hash, created_at=utcnow()
                ))
        except IntegrityError:
            # Another request claimed the key between our look and our insert.
            with self.db.read() as session:
                found = self._claimed(session, claim, writing=False)
            return 0, found or Claim(owned=False, request_hash=claim[2])
        return row_id, Claim(owned=True, request_hash=claim[2])

    def _claimed(self, session: Any, claim: tuple[str, str, str], *, writing: bool = True) -> Claim | None:
        token_name, key, _request_hash = claim
        cutoff = utcnow() - dt.timedelta(seconds=IDEMPOTENCY_SECONDS)
        row = session.execute(
            sa.select(IdempotencyRecord).where(
                IdempotencyRecord.token_name == token_name, IdempotencyRecord.key_hash == key_hash(key)
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.created_at < cutoff and writing:
            # Expired: forgotten (the purge deletes it; here it no longer counts).
            session.execute(sa.delete(IdempotencyRecord).where(IdempotencyRecord.id == row.id))
            return None
        return Claim(owned=False, request_hash=row.request_hash, status=row.status, answer=row.answer)

    def finish(
        self, row_id: int, outcome: dict[str, Any], *, claim: tuple[str, str, str] | None = None,
        answer: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """Record what the mail server answered; keep the answer for the key, or free the key (``answer`` None)."""
        started = self._started.pop(row_id, None)
        if started is not None:
            self._writer.add({**NO_OUTCOME, **started, **outcome})
            return
        try:
            with self.db.transaction() as session:
                session.execute(sa.update(DeliveryRecord).where(DeliveryRecord.id == row_id).values(**outcome))
                if claim is not None:
                    where = (IdempotencyRecord.token_name == claim[0], IdempotencyRecord.key_hash == key_hash(claim[1]))
                    if answer is None:
                        session.execute(sa.delete(IdempotencyRecord).where(*where))
                    else:
                        session.execute(sa.update(IdempotencyRecord).where(*where).values(status=answer[0], answer=answer[1]))
        except sa.exc.SQLAlchemyError as exc:
            # The message went (or did not) whatever the log says: the caller still gets the answer.
            if not is_unavailable(exc):
                raise
            log.warning("delivery log not updated", extra={"delivery_id": row_id, "error": type(exc).__name__})

    def flush(self) -> None:
        """Write the rows this process holds (readers call it, so that a send is listed as soon as it is answered)."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def page(self, *, tenant: str | None, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; ``next_before`` continues the listing."""
        query = sa.select(DeliveryRecord).order_by(DeliveryRecord.id.desc()).limit(limit + 1)
        if tenant is not None:
            query = query.where(DeliveryRecord.tenant == tenant)
        if before is not None:
            query = query.where(DeliveryRecord.id < before)
        self.flush()
        with self.db.read() as session:
            rows = list(session.execute(query).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return [view(row) for row in rows], (rows[-1].id if more and rows else None)

    def get(self, row_id: int) -> dict[str, Any] | None:
        self.flush()
        with self.db.read() as session:
            row = session.get(DeliveryRecord, row_id)
            return None if row is None else view(row)

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._purged_at < PURGE_INTERVAL_SECONDS or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._purged_at = now
            self.purge()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("delivery log purge failed", extra={"error": type(exc).__name__})
        finally:
            self._purge_lock.release()

    def purge(self) -> dict[str, int]:
        """Delete log rows older than the retention and idempotency keys older than 24 h."""
        log_cutoff = utcnow() - dt.timedelta(days=self.retention_days)
        key_cutoff = utcnow() - dt.timedelta(seconds=IDEMPOTENCY_SECONDS)
        with self.db.transaction() as session:
            rows = session.execute(sa.delete(DeliveryRecord).where(DeliveryRecord.at < log_cutoff)).rowcount
            keys = session.execute(sa.delete(IdempotencyRecord).where(IdempotencyRecord.created_at < key_cutoff)).rowcount
        return {"deliveries": rows or 0, "idempotency_keys": keys or 0}


def view(row: DeliveryRecord) -> dict[str, Any]:
    """A delivery log row as the API shows it."""
    return {
        "id": row.id,
        "at": iso_utc(row.at),
        "tenant": row.tenant,
        "token_name": row.token_name,
        "channel": row.channel,
        "envelope_from": row.envelope_from,
        "recipient_count": row.recipient_count,
        "recipient_domains": row.recipient_domains,
        "notification": row.notification,
        "message_id": row.message_id,
        "size_bytes": row.size_bytes,
        "outcome": row.outcome,
        "error_code": row.error_code,
        "smtp": {"code": row.smtp_code, "enhanced_code": row.smtp_enhanced_code, "message": row.smtp_message},
        "accepted_count": row.accepted_count,
        "rejected_count": row.rejected_count,
        "duration_ms": row.duration_ms,
    }
