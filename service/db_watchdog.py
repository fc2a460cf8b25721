"""Statements a hung PostgreSQL server leaves unanswered, cut at their deadline."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event


class StatementWatchdog:
    """Cuts the connection of a statement that a hung server leaves unanswered past its deadline.

    A PostgreSQL server that stops answering without closing its sockets (a
    frozen host, SIGSTOP) would hold a query, and the request waiting for it,
    for ever: libpq has no client-side timeout once connected. Shutting the
    socket down makes the driver fail the statement as a lost connection,
    which the service answers as ``database_unavailable``.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._inflight: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._owner: int | None = None  # the process whose thread watches (workers are forked)
        self._dialect: Any = None

    def attach(self, engine: sa.Engine) -> None:
        """Watch every statement of ``engine``, and the ping that checks a pooled connection out."""
        self._dialect = engine.dialect
        event.listen(engine, "checkout", self._ping_on_checkout)
        event.listen(engine, "before_cursor_execute", self._before_statement)
        event.listen(engine, "after_cursor_execute", self._after_statement)
        # Whatever happened to a statement, its watch ends when its
        # connection goes back to the pool or is discarded.
        for name in ("checkin", "invalidate", "soft_invalidate", "close"):
            event.listen(engine, name, self._connection_released)

    def _ping_on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Pessimistic disconnect handling: a connection the database dropped
        # (a restart) is replaced before use, and a hung one is cut here.
        key = id(dbapi_connection)
        try:
            self.watch(key, dbapi_connection.fileno())
            self._dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"ping failed ({type(exc).__name__})") from exc
        finally:
            self.done(key)

    # One statement at a time runs on a DBAPI connection: watches are keyed by it.

    def _before_statement(self, conn: sa.Connection, _cursor: Any, *_args: Any) -> None:
        if conn.get_execution_options().get("no_deadline"):
            return
        dbapi_connection = conn.connection.dbapi_connection
        if dbapi_connection is not None:
            self.watch(id(dbapi_connection), dbapi_connection.fileno())

    def _after_statement(self, conn: sa.Connection, _cursor: Any, *_args: Any) -> None:
        self.done(id(conn.connection.dbapi_connection))

    def _connection_released(self, dbapi_connection: Any, *_args: Any) -> None:
        if dbapi_connection is not None:
            self.done(id(dbapi_connection))

    def watch(self, key: int, fd: int) -> None:
        with self._lock:
            self._inflight[key] = (time.monotonic() + self.limit, fd)
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="smtpconf-db-watchdog", daemon=True).start()

    def done(self, key: int) -> None:
        # Under the lock: once this returns, the watchdog will not touch the
        # socket, so its connection may close it (and the number be reused).
        with self._lock:
            self._inflight.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(min(0.25, self.limit / 4))
            now = time.monotonic()
            # Under the lock: a statement still registered has not returned, so its
            # socket is still its connection's and cannot have been reused.
            with self._lock:
                for key, (deadline, fd) in list(self._inflight.items()):
                    if deadline <= now:
                        del self._inflight[key]
                        _shut_down(fd)


def _shut_down(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
