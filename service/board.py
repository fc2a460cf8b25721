"""The instance's generation board: counters in a file-backed shared memory map that every worker reads.

A small table of counters, created before the workers start, that each
worker reads at the start of every request (one 8-byte read when nothing
changed). Counters are scoped (settings, connection snapshot, one slot per
connection and per secret, hashed) so that one secret's invalidation leaves
every other cached value alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import mmap
import os
import secrets
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import sqlalchemy as sa

SLOTS = 1024
SIZE = SLOTS * 8
_MAGIC_VALUE = 0x31564F4E43504D53  # "SMPCONV1", little-endian: marks a board laid out as below
# Header slots.
TOTAL, SETTINGS_SLOT, CONNECTIONS_SLOT, ALL_SECRETS_SLOT, _DB_SETTINGS, _DB_CACHE, _DB_KNOWN, _MAGIC, _ORIGIN = range(9)
# Scoped slots: one per connection name and one per (connection, secret), hashed.
_CONNECTION_BASE, _CONNECTION_COUNT = 64, 256
_SECRET_BASE, _SECRET_COUNT = 320, SLOTS - 320
DB_SLOTS = {"settings_generation": _DB_SETTINGS, "cache_generation": _DB_CACHE}


class Slotted(Protocol):
    """A change, as the board sees it: the counter it bumps."""

    @property
    def slot(self) -> int: ...


def connection_slot(provider: str) -> int:
    return _CONNECTION_BASE + zlib.crc32(provider.encode()) % _CONNECTION_COUNT


def secret_slot(provider: str, secret: str) -> int:
    return _SECRET_BASE + zlib.crc32(f"{provider}\x00{secret}".encode()) % _SECRET_COUNT


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a worker learnt from the board since its last look."""

    settings: bool = False
    connections: bool = False
    all_secrets: bool = False
    connection_slots: frozenset[int] = frozenset()
    secret_slots: frozenset[int] = frozenset()

    @classmethod
    def between(cls, previous: tuple[int, ...], current: tuple[int, ...]) -> "Applied":
        """What changed from one picture of the board (``Board.read``) to a later one."""
        changed = [slot for slot in range(SLOTS) if current[slot] != previous[slot]]
        return cls(
            settings=SETTINGS_SLOT in changed,
            connections=CONNECTIONS_SLOT in changed,
            all_secrets=ALL_SECRETS_SLOT in changed,
            connection_slots=frozenset(s for s in changed if _CONNECTION_BASE <= s < _CONNECTION_BASE + _CONNECTION_COUNT),
            secret_slots=frozenset(s for s in changed if s >= _SECRET_BASE),
        )

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
        return self._word(TOTAL)

    def read(self) -> tuple[int, ...]:
        """Every counter, as one consistent picture (never half of a bump)."""
        with self._locked():
            return struct.unpack_from(f"<{SLOTS}Q", self._map, 0)

    def bump(self, changes: Iterable[Slotted], generations: dict[str, int] | None = None) -> None:
        """Bump each change's slot (once per slot) and the total; note the database generations
        the changes produced, so that the safety poll does not take them for others' changes."""
        slots = {change.slot for change in changes}
        with self._locked():
            for slot in slots:
                self._set(slot, self._word(slot) + 1)
            for key, value in (generations or {}).items():
                slot = DB_SLOTS[key]
                # Only the successor of what the board knows: a skipped value may be
                # another instance's change, which the safety poll must still see.
                if self._word(slot) == value - 1:
                    self._set(slot, value)
            self._set(TOTAL, self._word(TOTAL) + 1)

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
                self._set(SETTINGS_SLOT, self._word(SETTINGS_SLOT) + 1)
                self._set(CONNECTIONS_SLOT, self._word(CONNECTIONS_SLOT) + 1)
                bumped = True
            if self._word(_DB_CACHE) != cache:
                # Which secrets changed is not known here: every value is read again.
                self._set(_DB_CACHE, cache)
                self._set(ALL_SECRETS_SLOT, self._word(ALL_SECRETS_SLOT) + 1)
                bumped = True
            if bumped:
                self._set(TOTAL, self._word(TOTAL) + 1)
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
