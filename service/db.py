"""Storage: SQLAlchemy 2 models, the engine, and Alembic migrations."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger("smtpconf.db")


#: ``Session.info`` key under which a transaction collects the changes it announced.
PENDING_CHANGES = "pending_changes"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso_utc(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, as every response and audit event shows time."""
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class UTCDateTime(sa.TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.timezone.utc) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[str]: sa.JSON()}


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    roles: Mapped[list[str]]
    created_at: Mapped[dt.datetime]
    #: The tenants a restricted token may act for; None: every tenant and the system level.
    tenants: Mapped[list[str] | None] = mapped_column(sa.JSON(), nullable=True, default=None)


class SmtpSettings(Base):
    """One settings document: scope ``system`` or ``tenant:<id>``."""

    __tablename__ = "smtp_settings"

    scope: Mapped[str] = mapped_column(sa.String(160), primary_key=True)
    document: Mapped[dict[str, Any]]
    version: Mapped[int]
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(128))


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(sa.String(128))
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str] = mapped_column(sa.String(300))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None] = mapped_column(sa.String(128))


class SecretProviderConnection(Base):
    __tablename__ = "secret_providers"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    document: Mapped[dict[str, Any]]
    version: Mapped[int]
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(128))


class InternalSecret(Base):
    __tablename__ = "internal_secrets"

    name: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    current_version: Mapped[int]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(sa.String(128))


class InternalSecretVersion(Base):
    __tablename__ = "internal_secret_versions"

    name: Mapped[str] = mapped_column(
        sa.String(256), sa.ForeignKey("internal_secrets.name", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    ciphertext: Mapped[str] = mapped_column(sa.Text)
    key_id: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(sa.String(128))


class PasswordAccess(Base):
    """Who read which password version: once per token and version, never the value."""

    __tablename__ = "password_access"
    __table_args__ = (sa.UniqueConstraint("token_name", "source", "secret", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    token_name: Mapped[str] = mapped_column(sa.String(128))
    source: Mapped[str] = mapped_column(sa.String(64))
    secret: Mapped[str] = mapped_column(sa.String(512))
    version: Mapped[str] = mapped_column(sa.String(128))
    first_at: Mapped[dt.datetime]


class EventKey(Base):
    """The key a secret manager's events must carry for one connection: only its hash."""

    __tablename__ = "event_keys"

    provider: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("secret_providers.name", ondelete="CASCADE"), primary_key=True
    )
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(sa.String(128))


class ServiceState(Base):
    """Counters shared by every instance on one database (change generations)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger)


#: How long a connection attempt (PostgreSQL) or a wait for SQLite's write lock may take.
DEFAULT_TIMEOUT_SECONDS = 5.0
#: After a failed attempt, how long the database is not asked again (PostgreSQL).
FAIL_FAST_SECONDS = 1.0
#: How long the readiness probe waits for SQLite's write lock.
PROBE_LOCK_WAIT_MS = 200
#: SQLSTATEs that mean "not now" rather than "wrong": read-only transaction (a standby),
#: operator intervention (shutdown, starting up), insufficient resources (too many connections).
_UNAVAILABLE_SQLSTATES = ("25006", "57P", "53")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used now (down, restarting, locked, read-only).

    The one place that decides it: the HTTP layer answers these with 503
    ``database_unavailable``, and the in-memory paths fall back on what they
    hold. Anything else (a constraint violated, a bug) stays an error.
    """
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    return False


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


class Database:
    """The engine and a session factory for one database URL.

    It also remembers whether the last attempt to read succeeded
    (``reachable``), so that what is served from memory during an outage can
    say that it may be stale.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.timeout = timeout
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if path and path != ":memory:" and not path.startswith("file:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The busy timeout bounds how long a write waits for a lock another
            # process holds: long enough for writers to queue, short enough that
            # a locked file becomes a quick 503.
            kwargs["connect_args"] = {"timeout": timeout, "check_same_thread": False}
        elif url.startswith("postgresql"):
            # libpq's default is to wait for ever; a server that does not answer
            # must become a quick 503 (and a fast /readyz), not a hung request.
            kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout))}
            # The ping on checkout is done below, under the watchdog.
            kwargs["pool_pre_ping"] = False
        self._unreachable_since: float | None = None
        self._watch: tuple[threading.Event, threading.Thread] | None = None
        self._failed_at = 0.0
        self.engine = sa.create_engine(url, **kwargs)
        self.watchdog: StatementWatchdog | None = None
        if self.engine.dialect.name == "postgresql":
            self.watchdog = StatementWatchdog(timeout)
            event.listen(self.engine, "checkout", self._ping_on_checkout)
            event.listen(self.engine, "before_cursor_execute", self._before_statement)
            event.listen(self.engine, "after_cursor_execute", self._after_statement)
            # Whatever happened to a statement, its watch ends when its
            # connection goes back to the pool or is discarded.
            for name in ("checkin", "invalidate", "soft_invalidate", "close"):
                event.listen(self.engine, name, self._connection_released)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling defers BEGIN; take it over so
            # that a write transaction starts with BEGIN IMMEDIATE and two
            # writers queue instead of failing with "database is locked".
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info={"database": self})
        #: The instance id written into change notifications, and who hears of committed changes.
        self.origin = ""
        self.on_commit: Callable[[list[Any]], None] | None = None
        event.listen(self._sessions, "after_commit", self._after_commit)
        event.listen(self._sessions, "after_rollback", _drop_pending)
        self._read_engine = self.engine.execution_options(sqlite_deferred=True)
        ping_kwargs = {k: v for k, v in kwargs.items() if k != "pool_pre_ping"}
        self._ping_engine = sa.create_engine(url, poolclass=sa.pool.NullPool, **ping_kwargs) if self.is_sqlite else self.engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def _ping_on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Pessimistic disconnect handling: a connection the database dropped
        # (a restart) is replaced before use, and a hung one is cut by the watchdog.
        key = id(dbapi_connection)
        try:
            self.watchdog.watch(key, dbapi_connection.fileno())  # type: ignore[union-attr]
            self.engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"ping failed ({type(exc).__name__})") from exc
        finally:
            self.watchdog.done(key)  # type: ignore[union-attr]

    # One statement at a time runs on a DBAPI connection: watches are keyed by it.

    def _before_statement(self, conn: sa.Connection, _cursor: Any, *_args: Any) -> None:
        if conn.get_execution_options().get("no_deadline"):
            return
        dbapi_connection = conn.connection.dbapi_connection
        if dbapi_connection is not None:
            self.watchdog.watch(id(dbapi_connection), dbapi_connection.fileno())  # type: ignore[union-attr]

    def _after_statement(self, conn: sa.Connection, _cursor: Any, *_args: Any) -> None:
        self.watchdog.done(id(conn.connection.dbapi_connection))  # type: ignore[union-attr]

    def _connection_released(self, dbapi_connection: Any, *_args: Any) -> None:
        if dbapi_connection is not None:
            self.watchdog.done(id(dbapi_connection))  # type: ignore[union-attr]

    @property
    def reachable(self) -> bool:
        """Whether the last attempt to use the database succeeded."""
        return self._unreachable_since is None

    def unreachable_within(self, seconds: float) -> bool:
        """Whether an attempt to use the database failed less than ``seconds`` ago, and none succeeded since."""
        return self._unreachable_since is not None and time.monotonic() - self._failed_at < seconds

    def _failed(self, exc: BaseException, *, reading: bool) -> None:
        # A SQLite file that is locked for writing or read-only still serves
        # reads; only a failed read makes it unreachable. A PostgreSQL server
        # that refuses a write transaction this way is down for reads too.
        if is_unavailable(exc) and (reading or not self.is_sqlite):
            self._failed_at = time.monotonic()
            if self._unreachable_since is None:
                self._unreachable_since = self._failed_at

    def _fail_fast(self) -> None:
        # A server that hangs costs a whole timeout per attempt: right after a
        # failure, requests are refused at once instead of each waiting again.
        # (SQLite fails fast by itself, and is asked again at once when unlocked.)
        if not self.is_sqlite and self.unreachable_within(FAIL_FAST_SECONDS):
            raise sa.exc.OperationalError(None, None, ConnectionError("the database was unreachable moments ago"))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        self._fail_fast()
        try:
            with self._sessions() as session, session.begin():
                yield session
        except sa.exc.SQLAlchemyError as exc:
            self._failed(exc, reading=False)
            raise
        self._unreachable_since = None

    @contextmanager
    def read(self) -> Iterator[Session]:
        self._fail_fast()
        try:
            with self._sessions(bind=self._read_engine) as session:
                yield session
        except sa.exc.SQLAlchemyError as exc:
            self._failed(exc, reading=True)
            raise
        self._unreachable_since = None

    def _after_commit(self, session: Session) -> None:
        pending = session.info.pop(PENDING_CHANGES, None)
        if pending and self.on_commit is not None:
            self.on_commit(pending)

    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision."""
        from alembic import command

        # A migration may legitimately take longer than any request should.
        with self.engine.execution_options(no_deadline=True).begin() as connection:
            cfg = alembic_config(connection)
            command.upgrade(cfg, "head")

    def ping(self, *, pooled: bool = True) -> None:
        """Read from the database once; raises when it cannot be used.

        ``pooled=False``: on a connection of its own, closed at once, so that a
        background ping never leaves a SQLite file open between pings.
        """
        if pooled:
            self._fail_fast()
        try:
            with (self._read_engine if pooled else self._ping_engine).connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            self._failed(exc, reading=True)
            raise
        self._unreachable_since = None

    def watch(self, interval: float = 1.0) -> None:
        """Keep ``reachable`` true to the database in the background, with a ping every ``interval`` seconds.

        Effective reads are served from memory and never ask the database, so
        without this a worker would neither notice an outage (and mark what it
        serves as stale) nor notice the recovery.
        """
        if self._watch is not None:
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    self.ping(pooled=False)
                except Exception as exc:
                    if not is_unavailable(exc):
                        log.warning("database ping failed", extra={"error": type(exc).__name__})

        thread = threading.Thread(target=run, name="smtpconf-database-watch", daemon=True)
        self._watch = (stop, thread)
        thread.start()

    def dispose(self) -> None:
        """Close the pooled connections (new ones are opened as needed)."""
        self.engine.dispose()

    def close(self) -> None:
        """Stop the background ping and close every connection."""
        if self._watch is not None:
            stop, thread = self._watch
            stop.set()
            thread.join(timeout=5)
            self._watch = None
        self.engine.dispose()
        self._ping_engine.dispose()

    def writable(self) -> bool:
        """Whether a write can be made now (SQLite: the file is neither locked nor read-only).

        A write that is rolled back: it takes the write lock and writes a page,
        waiting for the lock only briefly, as a probe must answer fast.
        """
        if not self.is_sqlite:
            return True
        import sqlite3

        try:
            raw = self.engine.raw_connection()
        except sa.exc.SQLAlchemyError as exc:
            if is_unavailable(exc):
                return False
            raise
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
                connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        finally:
            raw.close()
        return True


def _drop_pending(session: Session) -> None:
    session.info.pop(PENDING_CHANGES, None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    deferred = conn.get_execution_options().get("sqlite_deferred")
    conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def alembic_config(connection: sa.Connection) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg
