"""Storage: SQLAlchemy 2 models, the engine, and Alembic migrations."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


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


class ServiceState(Base):
    """Counters shared by every instance on one database (change generations)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger)


class Database:
    """The engine and a session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine = sa.create_engine(url, **kwargs)
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

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions(bind=self._read_engine) as session:
            yield session

    def _after_commit(self, session: Session) -> None:
        pending = session.info.pop(PENDING_CHANGES, None)
        if pending and self.on_commit is not None:
            self.on_commit(pending)

    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision."""
        from alembic import command

        with self.engine.begin() as connection:
            cfg = alembic_config(connection)
            command.upgrade(cfg, "head")

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


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
