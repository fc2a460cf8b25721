"""How a change reaches every worker and every instance: a shared generation board, NOTIFY, a safety poll.

Every write that others must honour calls ``announce`` in its transaction with
the ``Change`` it made. That bumps the database's generation counters (the
truth a slow safety poll compares against) and, on PostgreSQL, queues a
``NOTIFY`` that the database delivers to the other instances when the
transaction commits. After the commit the instance's ``Board`` is bumped: a
small table of counters in a file-backed shared memory map, created before
the workers start, that each worker reads at the start of every request (one
8-byte read when nothing changed). Counters are scoped (settings, connection
snapshot, one slot per connection and per secret, hashed) so that one secret's
invalidation leaves every other cached value alone.

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
import mmap
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.db import PENDING_CHANGES, Database, ServiceState

log = logging.getLogger("smtpconf.propagation")

CHANNEL = "smtpconf_changes"
#: The listener's ``application_name``, as ``pg_stat_activity`` shows it.
LISTENER_NAME = "smtpconf-change-listener"
SLOTS = 1024
SIZE = SLOTS * 8
_MAGIC_VALUE = 0x31564F4E43504D53  # "SMPCONV1", little-endian: marks a board laid out as below
# Header slots.
_TOTAL, _SETTINGS, _CONNECTIONS, _ALL_SECRETS, _DB_SETTINGS, _DB_CACHE, _DB_KNOWN, _MAGIC, _ORIGIN = range(9)
# Scoped slots: one per connection name and one per (connection, secret), hashed.
_CONNECTION_BASE, _CONNECTION_COUNT = 64, 256
_SECRET_BASE, _SECRET_COUNT = 320, SLOTS - 320
_DB_SLOTS = {"settings_generation": _DB_SETTINGS, "cache_generation": _DB_CACHE}
#: Seconds between attempts to become the instance's listener, and before reconnecting after a drop.
LEADER_RETRY_SECONDS = 1.0
RECONNECT_SECONDS = 0.2
#: Longest a listener waits on its connection before checking whether it should stop or poll.
NOTIFY_WAIT_SECONDS = 0.5
#: The shortest interval between safety polls.
MIN_POLL_SECONDS = 0.1


def connection_slot(provider: str) -> int:
    return _CONNECTION_BASE + zlib.crc32(provider.encode()) % _CONNECTION_COUNT


def secret_slot(provider: str, secret: str) -> int:
    return _SECRET_BASE + zlib.crc32(f"{provider}\x00{secret}".encode()) % _SECRET_COUNT


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
            return _SETTINGS
        if self.kind == "connections":
            return _CONNECTIONS
        if self.kind == "all_secrets":
            return _ALL_SECRETS
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


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a worker learnt from the board since its last look."""

    settings: bool = False
    connections: bool = False
    all_secrets: bool = False
    connection_slots: frozenset[int] = frozenset()
    secret_slots: frozenset[int] = frozenset()

    def selects(self, provider: str, secret: str) -> bool:
        """Whether a cached value of ``provider``'s ``secret`` must be read again."""
        return (
            self.all_secrets
            or connection_slot(provider) in self.connection_slots
            or secret_slot(provider, secret) in self.secret_slots
        )


class Board:
    """Generation counters in a file-backed shared memory map, one file per instance.

    Reads are lock-free (aligned 8-byte words); increments take an exclusive
    ``flock`` on the file, which the kernel releases if the holder dies, and a
    thread lock (``flock`` does not exclude threads sharing a descriptor).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._thread_lock = threading.Lock()
        self._fd_pid = -1
        self._fd = -1
        with self._locked():
            fd = self._descriptor()
            if os.fstat(fd).st_size != SIZE:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
            if self._word(_MAGIC) != _MAGIC_VALUE:
                self._map[:] = bytes(SIZE)
                self._set(_ORIGIN, int.from_bytes(secrets.token_bytes(8), "little"))
                self._set(_MAGIC, _MAGIC_VALUE)

    @classmethod
    def create_for_instance(cls) -> Path:
        """A fresh board in a private directory, for ``smtpconf serve`` to hand to its workers."""
        directory = Path(tempfile.mkdtemp(prefix="smtpconf-board-"))
        path = directory / "generations"
        cls(path).close()
        return path

    @property
    def origin(self) -> str:
        """The instance's id: workers sharing a board are one instance."""
        return f"{self._word(_ORIGIN):016x}"

    def total(self) -> int:
        """How many bumps the board has seen: the hot path reads only this."""
        return self._word(_TOTAL)

    def read(self) -> tuple[int, ...]:
        """Every counter, as one consistent picture (never half of a bump)."""
        with self._locked():
            return struct.unpack_from(f"<{SLOTS}Q", self._map, 0)

    def bump(self, changes: Iterable[Change], generations: dict[str, int] | None = None) -> None:
        """Bump each change's slot (once per slot) and the total; note the database generations
        the changes produced, so that the safety poll does not take them for others' changes."""
        slots = {change.slot for change in changes}
        with self._locked():
            for slot in slots:
                self._set(slot, self._word(slot) + 1)
            for key, value in (generations or {}).items():
                slot = _DB_SLOTS[key]
                # Only the successor of what the board knows: a skipped value may be
                # another instance's change, which the safety poll must still see.
                if self._word(slot) == value - 1:
                    self._set(slot, value)
            self._set(_TOTAL, self._word(_TOTAL) + 1)

    def reconcile(self, generations: dict[str, int]) -> bool:
        """Compare the database's generations with those the board knows; bump broadly for any
        change that came by no other way. Whether anything was bumped."""
        settings = generations.get("settings_generation", 0)
        cache = generations.get("cache_generation", 0)
        with self._locked():
            if not self._word(_DB_KNOWN):
                self._set(_DB_SETTINGS, settings)
                self._set(_DB_CACHE, cache)
                self._set(_DB_KNOWN, 1)
                return False
            bumped = False
            if self._word(_DB_SETTINGS) != settings:
                self._set(_DB_SETTINGS, settings)
                self._set(_SETTINGS, self._word(_SETTINGS) + 1)
                self._set(_CONNECTIONS, self._word(_CONNECTIONS) + 1)
                bumped = True
            if self._word(_DB_CACHE) != cache:
                # Which secrets changed is not known here: every value is read again.
                self._set(_DB_CACHE, cache)
                self._set(_ALL_SECRETS, self._word(_ALL_SECRETS) + 1)
                bumped = True
            if bumped:
                self._set(_TOTAL, self._word(_TOTAL) + 1)
            return bumped

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError, AttributeError):
            self._map.close()
        if self._fd >= 0 and self._fd_pid == os.getpid():
            os.close(self._fd)
            self._fd = -1

    def _word(self, slot: int) -> int:
        return struct.unpack_from("<Q", self._map, slot * 8)[0]

    def _set(self, slot: int, value: int) -> None:
        struct.pack_into("<Q", self._map, slot * 8, value & 0xFFFFFFFFFFFFFFFF)

    def _descriptor(self) -> int:
        # flock locks belong to an open file description: a descriptor inherited
        # across fork would be shared with the parent and exclude nothing.
        if self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd_pid = os.getpid()
        return self._fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


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
        self._seen_total = self._seen[_TOTAL]
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
            if current[_TOTAL] == self._seen_total:
                return  # another thread of this process applied it meanwhile
            previous = self._seen
            changed = [slot for slot in range(SLOTS) if current[slot] != previous[slot]]
            applied = Applied(
                settings=_SETTINGS in changed,
                connections=_CONNECTIONS in changed,
                all_secrets=_ALL_SECRETS in changed,
                connection_slots=frozenset(s for s in changed if _CONNECTION_BASE <= s < _CONNECTION_BASE + _CONNECTION_COUNT),
                secret_slots=frozenset(s for s in changed if s >= _SECRET_BASE),
            )
            # Applied before the new total is recorded, so that a thread seeing the
            # new total can rely on the caches being already marked.
            for subscriber in self._subscribers:
                subscriber(applied)
            self._seen, self._seen_total = current, current[_TOTAL]

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
            generations = {k: int(v) for k, v in note.get("g", {}).items() if k in _DB_SLOTS}
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
            log.warning("safety poll of the database generations failed", extra={"error": type(exc).__name__})
            return
        self.polls += 1
        if self.board.reconcile(generations):
            log.info("safety poll found changes announced by no other way")


def board_path(configured: str | None, database_url: str) -> tuple[Path, bool]:
    """Where the instance's board lives, and whether this process made it up (and removes it).

    An explicit path (``smtpconf serve`` sets one before its workers start) wins;
    a SQLite file keeps its board next to it, so every process on that file
    shares one; otherwise the process gets a private one.
    """
    if configured:
        return Path(configured), False
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = url.database.removeprefix("file:")  # a URI filename (mode=ro...)
        return Path(f"{database}.generations"), False
    return private_board_path(), True


def private_board_path() -> Path:
    """A board file of this process's own."""
    fd, name = tempfile.mkstemp(prefix="smtpconf-generations-")
    os.close(fd)
    return Path(name)
