"""Open sending sessions kept per settings level, for the same settings and credential only, closed when idle."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable, Mapping

from service.smtp_check.policy import DestinationPolicy, Resolver
from service.smtp_check.request import AccessToken, ResolvedPassword
from service.smtp_check.session import Session

log = logging.getLogger("smtpconf.sending")

#: A session nobody used for this long is closed (mail servers drop idle clients after a few minutes).
IDLE_SECONDS = 30.0
#: Idle sessions kept per settings level at most (one per concurrent sender is enough).
MAX_IDLE_PER_LEVEL = 16
#: The settings that decide where a session goes and how it authenticates.
SESSION_FIELDS = ("host", "port", "security", "insecure_skip_verify", "ca_certificate_pem", "username", "domain", "auth", "timeout_seconds")
# A per-process key: the pool tells credentials apart by a keyed digest, never keeping another copy of one.
_DIGEST_KEY = secrets.token_bytes(32)


def pool_key(settings: Mapping[str, Any], credential: ResolvedPassword | AccessToken | None) -> str:
    """What a reusable session must match: the session settings and the credential in use."""
    fields = json.dumps({name: settings.get(name) for name in SESSION_FIELDS}, sort_keys=True, default=str)
    value = "" if credential is None else credential.value
    return hmac.new(_DIGEST_KEY, f"{fields}\0{value}".encode(), hashlib.sha256).hexdigest()


class Pool:
    """Idle sessions by settings level (``system``, ``tenant:acme``), all for one key at a time.

    A level's key changes when its settings or its credential change (a
    rotation): the sessions of the old key are closed at the next checkout,
    and one checked in under an old key is closed instead of kept.
    """

    def __init__(
        self,
        policy: DestinationPolicy,
        resolver: Callable[[], Resolver],
        *,
        fips_mode: bool = False,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.fips_mode = fips_mode
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[str, tuple[str, list[Session]]] = {}
        self._reaper_pid: int | None = None

    def checkout(self, level: str, key: str, settings: Mapping[str, Any]) -> Session:
        """An idle open session for ``key``, or a new one not yet opened."""
        with self._lock:
            kept = self._idle.get(level)
            retired: list[Session] = []
            session = None
            if kept is not None and kept[0] != key:
                retired = kept[1]
                del self._idle[level]
            elif kept is not None and kept[1]:
                session = kept[1].pop()
        for old in retired:
            old.quit()
        return session if session is not None else self.new_session(settings)

    def new_session(self, settings: Mapping[str, Any]) -> Session:
        return Session(settings, self.policy, self.resolver(), fips_mode=self.fips_mode)

    def checkin(self, level: str, key: str, session: Session) -> None:
        """Keep an open session for the next message of ``level`` (or close it when its key is no longer current)."""
        if not session.usable:
            session.close()
            return
        with self._lock:
            kept = self._idle.setdefault(level, (key, []))
            keep = kept[0] == key and len(kept[1]) < MAX_IDLE_PER_LEVEL
            if keep:
                kept[1].append(session)
        if not keep:
            session.quit()
            return
        self._start_reaper()

    def close(self) -> None:
        """Close every idle session."""
        with self._lock:
            sessions = [session for _key, kept in self._idle.values() for session in kept]
            self._idle.clear()
        for session in sessions:
            session.quit()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(kept) for _key, kept in self._idle.values())

    def reap(self) -> None:
        """Close the sessions idle longer than ``idle_seconds``."""
        now = time.monotonic()
        expired: list[Session] = []
        with self._lock:
            for level, (key, kept) in list(self._idle.items()):
                fresh = [session for session in kept if now - session.last_used < self.idle_seconds]
                expired += [session for session in kept if now - session.last_used >= self.idle_seconds]
                if fresh:
                    self._idle[level] = (key, fresh)
                else:
                    del self._idle[level]
        for session in expired:
            session.quit()

    def _start_reaper(self) -> None:
        # One reaper per process: gunicorn workers fork, and a thread does not survive a fork.
        if self._reaper_pid == os.getpid():
            return
        with self._lock:
            if self._reaper_pid == os.getpid():
                return
            self._reaper_pid = os.getpid()
        threading.Thread(target=self._reap_forever, name="smtpconf-sending-reaper", daemon=True).start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(max(0.05, self.idle_seconds / 4))
            try:
                self.reap()
            except Exception as exc:  # the reaper must outlive one bad close
                log.warning("closing idle sessions failed", extra={"error": type(exc).__name__})
