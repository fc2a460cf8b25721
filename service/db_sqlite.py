"""SQLite as the service uses it: WAL, BEGIN IMMEDIATE for writers, and a probe of whether it can write now."""

from __future__ import annotations

import sqlite3
from typing import Any

import sqlalchemy as sa

#: How long the readiness probe waits for SQLite's write lock.
PROBE_LOCK_WAIT_MS = 200


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_begin(conn: sa.Connection) -> None:
    deferred = conn.get_execution_options().get("sqlite_deferred")
    conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def sqlite_writable(raw: Any, timeout: float) -> bool:
    """Whether a write can be made now on the pooled connection ``raw`` (closed after): the file is
    neither locked nor read-only. A write that is rolled back: it takes the write lock and writes a
    page, waiting for the lock only briefly, as a probe must answer fast.
    """
    try:
        # On the driver's connection: SQLAlchemy would begin a transaction
        # (BEGIN IMMEDIATE, with the long wait) before the first PRAGMA.
        connection = raw.dbapi_connection
        connection.execute(f"PRAGMA busy_timeout = {PROBE_LOCK_WAIT_MS}")
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("UPDATE service_state SET value = value")
        except sqlite3.OperationalError:
            return False
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    finally:
        raw.close()
    return True
