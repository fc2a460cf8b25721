"""Each secret manager's reachability for ``/readyz``, as requests and probes on any worker last saw it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

from providers.base import ProviderError, ProviderUnavailable
from service.secrets import SecretsService

log = logging.getLogger("smtpconf.readiness")

#: Seconds between background checks of each manager.
READINESS_INTERVAL = 5.0
SLOTS = 256
_SLOT = 64
# name hash (u32), status (u8), padding, then the detail code (up to 56 bytes of UTF-8).
_HEAD = struct.Struct("<IB3x")
_DETAIL = _SLOT - _HEAD.size
STATUSES = ("", "ok", "degraded", "down")


class HealthBoard:
    """Per-connection status in a file-backed shared memory map next to the generation board.

    Every worker of an instance maps the same file, so what one worker's
    request learns, ``/readyz`` on any worker reports at once. Slots are
    hashed by connection name; a name whose slot another name took reads as
    not checked yet. Writes take a ``flock`` and happen only on a change.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._thread_lock = threading.Lock()
        self._fd_pid = -1
        self._fd = -1
        self._closed = False
        with self._locked():
            fd = self._descriptor()
            if os.fstat(fd).st_size != SLOTS * _SLOT:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SLOTS * _SLOT)
            self._map = mmap.mmap(fd, SLOTS * _SLOT)

    def get(self, name: str) -> tuple[str, str | None] | None:
        """(status, detail) last recorded for ``name``, or None."""
        offset, digest = _slot(name)
        with self._locked():
            if self._closed:
                return None  # the app is going away; a background check that answers late finds nothing
            held, status = _HEAD.unpack_from(self._map, offset)
            detail = bytes(self._map[offset + _HEAD.size : offset + _SLOT]).rstrip(b"\0").decode("utf-8", "replace")
        if held != digest or not 0 < status < len(STATUSES):
            return None
        return STATUSES[status], detail or None

    def set(self, name: str, status: str, detail: str | None) -> None:
        if self.get(name) == (status, detail):
            return  # the hot path: a fetch that went as the last one did writes nothing
        offset, digest = _slot(name)
        encoded = (detail or "").encode("utf-8")[:_DETAIL]
        with self._locked():
            if self._closed:
                return
            _HEAD.pack_into(self._map, offset, digest, STATUSES.index(status))
            self._map[offset + _HEAD.size : offset + _SLOT] = encoded.ljust(_DETAIL, b"\0")

    def close(self) -> None:
        with self._thread_lock:
            self._closed = True
            with contextlib.suppress(BufferError, ValueError, AttributeError):
                self._map.close()
            if self._fd >= 0 and self._fd_pid == os.getpid():
                os.close(self._fd)
                self._fd = -1

    def _descriptor(self) -> int:
        # flock locks belong to an open file description: one per process, never inherited.
        if self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd_pid = os.getpid()
        return self._fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._closed:
                yield
                return
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


def _slot(name: str) -> tuple[int, int]:
    digest = zlib.crc32(name.encode("utf-8"))
    return (digest % SLOTS) * _SLOT, digest


class Readiness:
    """What is known of each connection's manager: set by every fetch (a failure, a timeout, or a
    last good value served because the manager did not answer in time) and by probes; never waits."""

    def __init__(self, secrets: SecretsService, board: HealthBoard, *, interval: float = READINESS_INTERVAL) -> None:
        self.secrets = secrets
        self.board = board
        self.interval = interval
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._checking: set[str] = set()
        secrets.cache.on_outcome = self.fetched

    def fetched(self, name: str, status: str, code: str | None) -> None:
        """A fetch answered (ok, or failed with a last good value to serve or none), or is slow."""
        self.board.set(name, status, code if status != "ok" else None)

    def observed(self, name: str, ok: bool, code: str | None) -> None:
        """A check reached (or failed to reach) ``name``'s manager."""
        if ok:
            self.board.set(name, "ok", None)
            return
        # Degraded while cached values still serve; down when nothing can be served.
        serving = code == ProviderUnavailable.code and self.secrets.cache.has_values(provider=name)
        self.board.set(name, "degraded" if serving else "down", code or "error")

    def report(self) -> dict[str, dict[str, Any]]:
        """Each connection: ok, degraded (down or hung, cached values still serve) or down."""
        connections = self.secrets.snapshot()
        now = time.monotonic()
        if now - self._checked_at >= self.interval:
            self._checked_at = now
            for name, record in connections.items():
                self._check_in_background(name, record)
        report: dict[str, dict[str, Any]] = {}
        for name in connections:
            known = self.board.get(name)
            if known is None:
                report[name] = {"status": "ok", "detail": "not_checked_yet"}
            elif known[0] == "ok":
                report[name] = {"status": "ok"}
            else:
                report[name] = {"status": known[0], "detail": known[1] or "error"}
        return report

    def check_connection(self, name: str) -> dict[str, Any]:
        """``POST /v1/secret-providers/{name}/check``: ask the manager now."""
        record = self.secrets.connections.get(name)
        started = time.monotonic()
        try:
            self.secrets.provider(name, record).check()
            error = None
        except ProviderError as exc:
            error = {"code": exc.code, "message": exc.message}
        self.observed(name, error is None, error and error["code"])
        elapsed = int((time.monotonic() - started) * 1000)
        return {"ok": error is None, "status": "ok" if error is None else "down", "error": error, "elapsed_ms": elapsed}

    def _check_in_background(self, name: str, record: dict[str, Any]) -> None:
        with self._lock:
            if name in self._checking:
                return  # the last check has not answered yet (a hung manager): its outcome will come
            self._checking.add(name)

        def check() -> None:
            try:
                self.secrets.provider(name, record).check()
                self.observed(name, True, None)
            except ProviderError as exc:
                self.observed(name, False, exc.code)
            except Exception as exc:  # a provider bug must not kill readiness
                log.warning("readiness check failed", extra={"provider": name, "error": type(exc).__name__})
                self.observed(name, False, "provider_error")
            finally:
                with self._lock:
                    self._checking.discard(name)

        threading.Thread(target=check, name=f"readiness:{name}", daemon=True).start()
