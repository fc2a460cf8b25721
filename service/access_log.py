"""Who read which password version: the first read of each, recorded once in ``password_access``."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.db import Database, PasswordAccess, is_unavailable, utcnow


class AccessLog:
    """Records the first time a token reads a password version; never the value."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._noted: set[tuple[str, str, str, str]] = set()
        self._noting: set[tuple[str, str, str, str]] = set()

    def note(self, token_name: str, source: str, label: str, version: str | None) -> None:
        key = (token_name, source, label, version or "")
        if key in self._noted or not self.db.reachable:
            return  # during an outage the reading is noted when the database is back and it is read again
        with self._lock:
            if key in self._noting:
                return  # another thread is recording it; the read need not wait for that
            self._noting.add(key)
        try:
            with self.db.transaction() as session:
                exists = session.scalar(
                    sa.select(PasswordAccess.id).where(
                        PasswordAccess.token_name == key[0],
                        PasswordAccess.source == key[1],
                        PasswordAccess.secret == key[2],
                        PasswordAccess.version == key[3],
                    )
                )
                if exists is None:
                    session.add(
                        PasswordAccess(token_name=key[0], source=key[1], secret=key[2], version=key[3], first_at=utcnow())
                    )
            self._noted.add(key)
        except IntegrityError:
            self._noted.add(key)  # another worker recorded it first
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # Bookkeeping must not stop a sender; noted on a later read.
        finally:
            with self._lock:
                self._noting.discard(key)
