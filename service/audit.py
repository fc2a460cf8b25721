"""The audit trail: every change, written in the same transaction as the change."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.db import AuditEvent, iso_utc, utcnow
from service.observability import current_request_id


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add one audit event to ``session``'s transaction. Callers pass redacted documents."""
    session.add(
        AuditEvent(
            at=utcnow(),
            actor=actor,
            action=action,
            target=target,
            before=before,
            after=after,
            request_id=current_request_id(),
        )
    )


def page(session: Session, *, limit: int, before_id: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """Events newest first, ``limit`` at a time; returns the page and the next cursor."""
    query = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": row.id,
            "at": iso_utc(row.at),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "before": row.before,
            "after": row.after,
            "request_id": row.request_id,
        }
        for row in rows
    ]
    return items, (rows[-1].id if more and rows else None)
