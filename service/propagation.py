"""How a change reaches every worker and every instance: a shared generation board, NOTIFY, a safety poll.

Every write that others must honour calls ``announce`` in its transaction with
the ``Change`` it made. That bumps the database's generation counters (the
truth a slow safety poll compares against) and, on PostgreSQL, queues a
``NOTIFY`` that the database delivers to the other instances when the
transaction commits. After the commit the instance's ``Board``
(``service.board``) is bumped, which each worker reads at the start of every
request.

One worker per instance (whichever holds the board's listener lock; the
kernel hands the lock on if it dies) listens for other instances' NOTIFYs and
polls the database's generations now and then, and bumps the board for what
it learns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.board import (
    ALL_SECRETS_SLOT,
    CONNECTIONS_SLOT,
    DB_SLOTS,
    SETTINGS_SLOT,
    TOTAL,
    Applied,
    Board,
    connection_slot,
    secret_slot,
)
from service.db import PENDING_CHANGES, Database, ServiceState

log = logging.getLogger("smtpconf.propagation")

CHANNEL = "smtpconf_changes"
#: The listener's ``application_name``, as ``pg_stat_activity`` shows it.
LISTENER_NAME = "smtpconf-change-listener"
#: Seconds between attempts to become the instance's listener, and before reconnecting after a drop.
LEADER_RETRY_SECONDS = 1.0
RECONNECT_SECONDS = 0.2
#: Longest a listener waits on its connection before checking whether it should stop or poll.
NOTIFY_WAIT_SECONDS = 0.5
#: The shortest interval between safety polls.
MIN_POLL_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class Change:
    """Something every worker and instance must honour on its next request."""

    #: ``settings`` (settings rows), ``connections`` (the connection documents),
    #: ``connection`` (every cached value of ``provider``), ``secret`` (one secret
    #: of ``provider``, every version) or ``all_secrets``.
    kind: str
    provider: str | None = None
    secret: str | None = None

    @property
    def slot(self) -> int:
        if self.kind == "settings":
            return SETTINGS_SLOT
        if self.kind == "connections":
            return CONNECTIONS_SLOT
        if self.kind == "all_secrets":
            return ALL_SECRETS_SLOT
        assert self.provider is not None
        if self.kind == "connection":
            return connection_slot(self.provider)
        assert self.secret is not None
        return secret_slot(self.provider, self.secret)

    @property
    def database_key(self) -> str:
        """The database generation a safety poll compares for this kind of change."""
        return "settings_generation" if self.kind in ("settings", "connections") else "cache_generation"

    def encode(self) -> list[str | None]:
        return [self.kind, self.provider, self.secret]


SETTINGS = Change("settings")
ALL_SECRETS = Change("all_secrets")


def connection_edited(name: str) -> tuple[Change, Change]:
    """A connection's document changed: reload the documents, refetch its values."""
    return Change("connections"), Change("connection", name)


def refetch(provider: str | None, secret: str | None = None) -> Change:
    """Values to read from their manager again: all, one connection's, or one secret's."""
    if provider is None:
        return ALL_SECRETS
    return Change("connection", provider) if secret is None else Change("secret", provider, secret)


def announce(session: Session, *changes: Change) -> dict[str, int]:
    """In a write's transaction: bump the database generations, NOTIFY (PostgreSQL), and have
    the instance's board bumped once the transaction commits. Returns the new generations."""
    generations: dict[str, int] = {}
    for key in sorted({change.database_key for change in changes}):
        bumped = session.execute(
            sa.update(ServiceState)
            .where(ServiceState.key == key)
            .values(value=ServiceState.value + 1)
            .returning(ServiceState.value)
        )
        generations[key] = int(bumped.scalar_one())
    database: Database | None = session.info.get("database")
    if session.get_bind().dialect.name == "postgresql":
        payload = {"o": database.origin if database else "", "c": [c.encode() for c in changes], "g": generations}
        session.execute(sa.select(sa.func.pg_notify(CHANNEL, json.dumps(payload, separators=(",", ":")))))
    session.info.setdefault(PENDING_CHANGES, []).append((changes, generations))
    return generations


class Propagator:
    """One process's view of the board: applies what changed before a request uses its caches,
    and, in the worker that leads, listens to the other instances and polls the database."""

    def __init__(self, db: Database, board: Board, *, poll_interval: float, own_board: bool = False) -> None:
        self.db = db
        self.board = board
        # A floor: an interval of 0 would spin on a database that is down.
        self.poll_interval = max(poll_interval, MIN_POLL_SECONDS)
        self._own_board = own_board
        self._lock = threading.Lock()
        self._seen = board.read()
        self._seen_total = self._seen[TOTAL]
        self._subscribers: list[Callable[[Applied], None]] = []
        self._stop = threading.Event()
        #: Set while this process leads and (on PostgreSQL) its LISTEN is in place.
        self.listening = threading.Event()
        self.polls = 0
        db.origin = board.origin
        db.on_commit = self._committed
        self._thread: threading.Thread | None = None

    def subscribe(self, subscriber: Callable[[Applied], None]) -> None:
        self._subscribers.append(subscriber)

    def start(self) -> None:
        """Start competing to be the instance's listener (a daemon thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._lead, name="smtpconf-propagation", daemon=True)
            self._thread.start()

    def poll(self) -> None:
        """Apply what other workers and instances announced; cheap when nothing did."""
        if self.board.total() == self._seen_total:
            return
        with self._lock:
            current = self.board.read()
            if current[TOTAL] == self._seen_total:
                return  # another thread of this process applied it meanwhile
            applied = Applied.between(self._seen, current)
            # Applied before the new total is recorded, so that a thread seeing the
            # new total can rely on the caches being already marked.
            for subscriber in self._subscribers:
                subscriber(applied)
            self._seen, self._seen_total = current, current[TOTAL]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.board.close()
        if self._own_board:
            # The board and what lives next to it: the listener lock, readiness, shared access tokens.
            for suffix in ("", ".listener", ".health"):
                with contextlib.suppress(OSError):
                    Path(f"{self.board.path}{suffix}").unlink()
            shutil.rmtree(f"{self.board.path}.tokens", ignore_errors=True)

    def _committed(self, pending: list[tuple[tuple[Change, ...], dict[str, int]]]) -> None:
        for changes, generations in pending:
            self.board.bump(changes, generations)

    # the leading worker

    def _lead(self) -> None:
        fd = os.open(f"{self.board.path}.listener", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while not self._stop.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    self._stop.wait(LEADER_RETRY_SECONDS)  # another worker leads; take over if it dies
            else:
                return
            if self.db.engine.dialect.name == "postgresql":
                self._listen()
            else:
                while not self._stop.is_set():
                    self._safety_poll(None)
                    self._stop.wait(self.poll_interval)
        finally:
            os.close(fd)  # releases the lock

    def _listen(self) -> None:
        import psycopg

        url = self.db.engine.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # Whatever was announced while nobody listened is found by re-reading.
                    self._safety_poll(conn)
                    self.listening.set()
                    next_poll = time.monotonic() + self.poll_interval
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=NOTIFY_WAIT_SECONDS):
                            self._notified(note.payload)
                        if time.monotonic() >= next_poll:
                            self._safety_poll(conn)
                            next_poll = time.monotonic() + self.poll_interval
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("change listener lost its database connection; reconnecting", extra={"error": type(exc).__name__})
                self._stop.wait(RECONNECT_SECONDS)
            finally:
                self.listening.clear()

    def _notified(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            if note.get("o") == self.board.origin:
                return  # this instance's own write: its board was bumped at commit
            changes = [Change(*fields) for fields in note["c"]]
            generations = {k: int(v) for k, v in note.get("g", {}).items() if k in DB_SLOTS}
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a malformed change notification")
            return
        self.board.bump(changes, generations)

    def _safety_poll(self, conn: Any) -> None:
        try:
            if conn is not None:
                generations = {key: int(value) for key, value in conn.execute("SELECT key, value FROM service_state")}
            else:
                with self.db.read() as session:
                    rows = session.execute(sa.select(ServiceState.key, ServiceState.value))
                    generations = {key: int(value) for key, value in rows}
        except Exception as exc:
            if conn is not None:
                raise
            if _not_migrated_yet(exc):
                # An app opened on a database before its migrations ran (the CLI migrates, then serves): the
                # next poll after the upgrade reads the table. Nothing has failed.
                log.debug("safety poll: the database is not migrated yet")
            else:
                log.warning("safety poll of the database generations failed", extra={"error": type(exc).__name__})
            return
        self.polls += 1
        if self.board.reconcile(generations):
            log.info("safety poll found changes announced by no other way")


def _not_migrated_yet(exc: Exception) -> bool:
    """The generations table does not exist (SQLite's "no such table", PostgreSQL's "relation ... does not
    exist"): the driver's own message, not the statement SQLAlchemy quotes beside it."""
    message = str(getattr(exc, "orig", "")).lower()
    return "service_state" in message and ("no such table" in message or "does not exist" in message)
