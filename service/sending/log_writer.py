"""Delivery log rows written off the request path: ids reserved in blocks, rows inserted in batches by one thread."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base, Database, is_unavailable

log = logging.getLogger("smtpconf.sending")

#: Ids a process takes at once: one database write per this many messages.
ID_BLOCK = 20
#: Seconds the writer waits to gather rows into one transaction.
WRITE_INTERVAL = 0.05
#: Rows held while the database cannot be written; beyond, the oldest are dropped (and said so).
MAX_PENDING = 20_000


class DeliveryIdBlock(Base):
    """The last delivery log id handed out to any process."""

    __tablename__ = "delivery_id_blocks"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(sa.BigInteger)


class IdBlocks:
    """Delivery log ids for this process, ``ID_BLOCK`` at a time from the shared counter (every worker and instance)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._next = 0
        self._end = 0
        self._pid = os.getpid()

    def next(self) -> int:
        with self._lock:
            if self._pid != os.getpid():  # a forked worker must not reuse its parent's block
                self._next = self._end = 0
                self._pid = os.getpid()
            if self._next >= self._end:
                with self.db.transaction() as session:
                    last = session.execute(
                        sa.update(DeliveryIdBlock)
                        .where(DeliveryIdBlock.name == "delivery_log")
                        .values(last_id=DeliveryIdBlock.last_id + ID_BLOCK)
                        .returning(DeliveryIdBlock.last_id)
                    ).scalar_one()
                self._next, self._end = last - ID_BLOCK + 1, last + 1
            value = self._next
            self._next += 1
            return value


class BatchWriter:
    """Inserts rows of one table in batches from a background thread; ``flush`` writes what is pending now."""

    def __init__(self, db: Database, table: sa.Table) -> None:
        self.db = db
        self.table = table
        self._pending: list[dict[str, Any]] = []
        self._wake = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread_pid: int | None = None
        self._closed = False

    def add(self, row: dict[str, Any]) -> None:
        with self._wake:
            self._pending.append(row)
            if len(self._pending) > MAX_PENDING:
                dropped = len(self._pending) - MAX_PENDING
                del self._pending[:dropped]
                log.error("delivery log rows dropped: the database could not be written", extra={"rows": dropped})
            self._wake.notify()
        self._start()

    def flush(self) -> None:
        """Write every pending row now (readers call this first, so that they see this process's sends)."""
        with self._write_lock:
            with self._wake:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                with self.db.transaction() as session:
                    session.execute(sa.insert(self.table), rows)
            except sa.exc.SQLAlchemyError as exc:
                if not is_unavailable(exc):
                    log.error("delivery log rows dropped", extra={"rows": len(rows), "error": type(exc).__name__})
                    return
                with self._wake:
                    self._pending[:0] = rows  # kept for the next attempt
                log.warning("delivery log rows not written yet", extra={"rows": len(rows), "error": type(exc).__name__})

    def close(self) -> None:
        self._closed = True
        with self._wake:
            self._wake.notify()
        self.flush()
        if self._pending:
            log.error("delivery log rows lost at shutdown", extra={"rows": len(self._pending)})

    def _start(self) -> None:
        if self._thread_pid == os.getpid():
            return
        with self._wake:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        threading.Thread(target=self._run, name="smtpconf-delivery-log", daemon=True).start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._closed:
            with self._wake:
                if not self._pending:
                    self._wake.wait(timeout=1.0)
            if self._closed:
                return
            # A short pause gathers the rows of concurrent requests into one commit.
            time.sleep(WRITE_INTERVAL)
            try:
                self.flush()
            except Exception as exc:  # the writer must outlive one bad batch
                log.error("delivery log batch failed", extra={"error": type(exc).__name__})
            if self._pending:
                time.sleep(1.0)  # the database is down: do not spin
