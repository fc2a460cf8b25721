"""The database down, locked or read-only: senders keep reading from memory, the rest gets 503 database_unavailable."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.db import is_unavailable
from service.tokens import create_token
from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS

EFFECTIVE = "/v1/smtp/effective"
TENANT_EFFECTIVE = "/v1/tenants/acme/smtp/effective"
#: A probe must answer well within a load balancer's usual timeout.
READYZ_BUDGET_SECONDS = 2.0


def _app(url: str, **overrides: Any) -> Flask:
    # A lock is waited for only briefly, so an outage shows within the background ping's second.
    config = {
        "database_url": url,
        "master_key": MASTER_KEY,
        "testing": True,
        "secret_sync_interval_seconds": 60,
        "database_timeout_seconds": 0.3,
        **overrides,
    }
    return create_app(config)


class Setup:
    """An app with settings stored and read once, and a token per role."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        db = app.extensions["smtpconf"].db
        db.upgrade()
        self.admin = {"Authorization": "Bearer " + create_token(db, "outage-admin", ["admin"])}
        self.sender = {"Authorization": "Bearer " + create_token(db, "outage-sender", ["secret-reader", "reader"])}
        self.security = {"Authorization": "Bearer " + create_token(db, "outage-security", ["security"])}
        # Created now, never used before the outage: the service has not seen it.
        self.unseen = {"Authorization": "Bearer " + create_token(db, "outage-unseen", ["reader"])}
        assert self.client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=self.admin).status_code == 200
        tenant = {"from_email": "alerts@acme.example", "from_name": "ACME"}
        assert self.client.put("/v1/tenants/acme/smtp", json=tenant, headers=self.admin).status_code == 200
        for path in (EFFECTIVE, TENANT_EFFECTIVE, EFFECTIVE + "?include_password=true"):
            answer = self.client.get(path, headers=self.sender)
            assert answer.status_code == 200 and "settings_stale" not in answer.json
        assert self.client.get("/v1/secret-providers", headers=self.security).status_code == 200

    def expire_token_memory(self) -> None:
        """Make the worker ask the database for every token again, as it does a few seconds later."""
        authenticate = self.app.extensions["smtpconf"].authenticate
        authenticate._known = {digest: (at - authenticate.ttl, who) for digest, (at, who) in authenticate._known.items()}

    def close(self) -> None:
        self.app.extensions["smtpconf"].close()


def _assert_unavailable(answer: Any) -> None:
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    assert answer.json["code"] == "database_unavailable"
    assert int(answer.headers["Retry-After"]) > 0


def _served(client: FlaskClient, path: str, headers: dict[str, str], *, stale: bool, timeout: float = 10) -> Any:
    """The answer once the worker has noticed the outage (or the recovery): its background ping
    looks every second, as effective reads are served from memory without asking the database."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200, (path, answer.get_data(as_text=True))
        if answer.json.get("settings_stale", False) is stale or time.monotonic() > deadline:
            assert answer.json.get("settings_stale", False) is stale, answer.json
            return answer
        time.sleep(0.1)


def _timed_readyz(client: FlaskClient) -> tuple[Any, float]:
    started = time.monotonic()
    answer = client.get("/readyz")
    return answer, time.monotonic() - started


def _stored_version(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT version FROM smtp_settings WHERE scope = 'system'")).scalar_one()
    finally:
        engine.dispose()


def _audit_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "smtpconf.db"


@pytest.fixture
def sqlite_setup(sqlite_file: Path) -> Iterator[Setup]:
    setup = Setup(_app(f"sqlite:///{sqlite_file}"))
    yield setup
    setup.close()


def test_sqlite_locked_for_writing_refuses_writes_with_503_and_keeps_serving(sqlite_setup, sqlite_file):
    s = sqlite_setup
    url = f"sqlite:///{sqlite_file}"
    version, audited = _stored_version(url), _audit_count(url)
    holder = sqlite3.connect(sqlite_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        changed = {**SYSTEM_SETTINGS, "from_name": "During the lock"}
        _assert_unavailable(s.client.put("/v1/smtp", json=changed, headers=s.admin))
        _assert_unavailable(s.client.delete("/v1/tenants/acme/smtp", headers=s.admin))
        _assert_unavailable(s.client.put("/v1/secrets/smtp/relay", json={"value": "v"}, headers=s.security))
        # Reads still work: nothing is stale.
        answer = s.client.get(EFFECTIVE, headers=s.sender)
        assert answer.status_code == 200 and "settings_stale" not in answer.json
        assert s.client.get("/v1/smtp", headers=s.admin).status_code == 200
        ready, took = _timed_readyz(s.client)
        assert ready.status_code == 200 and ready.json["database"] == "read_only"
        assert ready.json["status"] == "degraded"
        assert took < READYZ_BUDGET_SECONDS
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (_stored_version(url), _audit_count(url)) == (version, audited), "a refused write left something behind"
    changed = {**SYSTEM_SETTINGS, "from_name": "After the lock"}
    assert s.client.put("/v1/smtp", json=changed, headers=s.admin).status_code == 200
    assert s.client.get(EFFECTIVE, headers=s.sender).json["from_name"] == "After the lock"
    assert s.client.get("/readyz").json == {**s.client.get("/readyz").json, "status": "ok", "database": "ok"}


def test_sqlite_locked_entirely_serves_effective_settings_from_memory_marked_stale(sqlite_setup, sqlite_file):
    s = sqlite_setup
    # In WAL mode an exclusive lock needs every other connection closed first.
    s.app.extensions["smtpconf"].db.dispose()
    holder = sqlite3.connect(sqlite_file, isolation_level=None, timeout=5)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # not even readers get in
    s.expire_token_memory()
    try:
        _served(s.client, EFFECTIVE, s.sender, stale=True)
        for path in (EFFECTIVE, TENANT_EFFECTIVE, EFFECTIVE + "?include_password=true"):
            answer = s.client.get(path, headers=s.sender)
            assert answer.status_code == 200, (path, answer.get_data(as_text=True))
            assert answer.json["settings_stale"] is True
        with_password = s.client.get(EFFECTIVE + "?include_password=true", headers=s.sender).json
        assert with_password["password"] == SYSTEM_SETTINGS["password"]["value"]
        assert s.client.get(TENANT_EFFECTIVE, headers=s.sender).json["from_name"] == "ACME"
        # What needs the database: 503, never 500.
        _assert_unavailable(s.client.get("/v1/smtp", headers=s.admin))
        _assert_unavailable(s.client.get("/v1/audit", headers=s.security))
        _assert_unavailable(s.client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=s.admin))
        # A token the service never saw cannot be checked.
        _assert_unavailable(s.client.get(EFFECTIVE, headers=s.unseen))
        # The whole table was read before: a tenant without an override inherits, as it did then.
        other = s.client.get("/v1/tenants/never-read/smtp/effective", headers=s.sender)
        assert other.status_code == 200 and other.json["settings_stale"] is True
        assert other.json["from_name"] == SYSTEM_SETTINGS["from_name"]
        # An instance that never read the settings has nothing to serve.
        fresh = _app(f"sqlite:///{sqlite_file}")
        try:
            fresh.extensions["smtpconf"].authenticate._known = dict(s.app.extensions["smtpconf"].authenticate._known)
            _assert_unavailable(fresh.test_client().get(EFFECTIVE, headers=s.sender))
            assert fresh.test_client().get("/readyz").status_code == 503
        finally:
            fresh.extensions["smtpconf"].close()
        ready, took = _timed_readyz(s.client)
        assert ready.status_code == 200 and ready.json["database"] == "down" and ready.json["status"] == "degraded"
        assert took < READYZ_BUDGET_SECONDS
    finally:
        holder.close()
    _served(s.client, EFFECTIVE, s.sender, stale=False)
    assert s.client.get(EFFECTIVE, headers=s.unseen).status_code == 200
    assert s.client.get("/readyz").json["database"] == "ok"


def test_sqlite_read_only_file_serves_reads_and_refuses_writes(sqlite_setup, sqlite_file):
    s = sqlite_setup
    s.close()
    # The same database opened read-only, as on a read-only volume (root ignores file modes).
    read_only = _app(f"sqlite:///file:{sqlite_file}?mode=ro&uri=true")
    client = read_only.test_client()
    try:
        answer = client.get(EFFECTIVE + "?include_password=true", headers=s.sender)
        assert answer.status_code == 200 and "settings_stale" not in answer.json
        assert answer.json["password"] == SYSTEM_SETTINGS["password"]["value"]
        assert client.get("/v1/tenants/acme/smtp", headers=s.admin).status_code == 200
        _assert_unavailable(client.put("/v1/smtp", json={**SYSTEM_SETTINGS, "port": 2525}, headers=s.admin))
        _assert_unavailable(client.post("/v1/secret-cache/invalidate", json={}, headers=s.security))
        ready, took = _timed_readyz(client)
        assert ready.status_code == 200 and ready.json["database"] == "read_only"
        assert took < READYZ_BUDGET_SECONDS
    finally:
        read_only.extensions["smtpconf"].close()
    assert _stored_version(f"sqlite:///{sqlite_file}") == 1


@pytest.mark.postgres
def test_postgresql_stopped_serves_senders_from_memory_refuses_the_rest_and_recovers(own_postgres):
    url = own_postgres.url
    s = Setup(_app(url, database_timeout_seconds=2))
    try:
        version = _stored_version(url)
        own_postgres.halt()
        try:
            s.expire_token_memory()
            _served(s.client, EFFECTIVE, s.sender, stale=True)
            for path in (EFFECTIVE, TENANT_EFFECTIVE, EFFECTIVE + "?include_password=true"):
                answer = s.client.get(path, headers=s.sender)
                assert answer.status_code == 200, (path, answer.get_data(as_text=True))
                assert answer.json["settings_stale"] is True
            _assert_unavailable(s.client.put("/v1/smtp", json={**SYSTEM_SETTINGS, "port": 2525}, headers=s.admin))
            _assert_unavailable(s.client.get("/v1/tenants/acme/smtp", headers=s.admin))
            _assert_unavailable(s.client.get("/v1/secret-providers", headers=s.security))
            _assert_unavailable(s.client.get(EFFECTIVE, headers=s.unseen))
            ready, took = _timed_readyz(s.client)
            assert ready.status_code == 200
            assert ready.json["database"] == "down" and ready.json["status"] == "degraded"
            assert took < READYZ_BUDGET_SECONDS
        finally:
            own_postgres.resume()
        # Back without a restart: the ping on checkout replaces the dead connections.
        _recovers(s)
        assert s.client.put("/v1/smtp", json={**SYSTEM_SETTINGS, "port": 2525}, headers=s.admin).status_code == 200
        assert _stored_version(url) == version + 1
        assert s.client.get(EFFECTIVE, headers=s.sender).json["port"] == 2525
        assert s.client.get("/readyz").json["database"] == "ok"
    finally:
        s.close()


def _recovers(s: Setup, within: float = 15.0) -> None:
    """Effective reads stop being stale once the database answers again (asked again after a short back-off)."""
    deadline = time.monotonic() + within
    while True:
        answer = s.client.get(EFFECTIVE, headers=s.sender)
        assert answer.status_code == 200
        if "settings_stale" not in answer.json:
            return
        assert time.monotonic() < deadline, "still stale after the database came back"
        time.sleep(0.1)


def _postgres_processes(server: Any) -> list[int]:
    """The postmaster and its children (backends and helpers), from /proc."""
    postmaster = int((server.dir / "data" / "postmaster.pid").read_text().split()[0])
    children: list[int] = []
    for task in Path(f"/proc/{postmaster}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [postmaster, *children]


def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


@pytest.mark.postgres
def test_postgresql_hung_costs_a_bounded_wait_then_answers_from_memory(own_postgres):
    # Frozen, not stopped: its sockets stay open and nothing answers on them.
    s = Setup(_app(own_postgres.url, database_timeout_seconds=1))
    # libpq waits at least 2 s to connect; the watchdog cuts a statement after 1 s.
    budget = 4.0
    processes = _postgres_processes(own_postgres)
    try:
        for pid in processes:
            os.kill(pid, signal.SIGSTOP)
        try:
            s.expire_token_memory()
            read, took = _timed(lambda: s.client.get(EFFECTIVE, headers=s.sender))
            assert read.status_code == 200 and read.json["settings_stale"] is True and took < budget
            write, took = _timed(lambda: s.client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=s.admin))
            _assert_unavailable(write)
            assert took < budget
            ready, took = _timed(lambda: s.client.get("/readyz"))
            assert ready.json["database"] == "down" and took < budget
            level, took = _timed(lambda: s.client.get("/v1/smtp", headers=s.admin))
            _assert_unavailable(level)
            assert took < budget
        finally:
            for pid in processes:
                os.kill(pid, signal.SIGCONT)
        _recovers(s)
        assert s.client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=s.admin).status_code == 200
    finally:
        s.close()


def test_a_database_with_nothing_read_yet_is_down_for_readyz(tmp_path):
    (tmp_path / "absent" / "dir-that-is-a-file").mkdir(parents=True)  # a directory where the file should be
    app = _app(f"sqlite:///{tmp_path / 'absent' / 'dir-that-is-a-file'}")
    try:
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.json["status"] == "down" and ready.json["database"] == "down"
    finally:
        app.extensions["smtpconf"].close()


def test_only_outages_count_as_the_database_being_unavailable():
    outage = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    broken = sa.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed"))
    duplicate = sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert is_unavailable(outage) and is_unavailable(broken)
    assert not is_unavailable(duplicate)
    assert not is_unavailable(ValueError("not a database error"))


@pytest.mark.postgres
def test_no_statement_stays_watched_after_it_ends_however_it_ends(own_postgres):
    # A watch left behind would later cut whatever connection then holds that socket.
    from service.db import Database, PasswordAccess, utcnow

    db = Database(own_postgres.url, timeout=5)
    try:
        db.upgrade()
        row = {"token_name": "t", "source": "s", "secret": "x", "version": "1"}
        with db.transaction() as session:
            session.add(PasswordAccess(**row, first_at=utcnow()))
        for _ in range(3):
            with pytest.raises(sa.exc.IntegrityError):
                with db.transaction() as session:
                    session.add(PasswordAccess(**row, first_at=utcnow()))
        with pytest.raises(sa.exc.ProgrammingError):
            with db.read() as session:
                session.execute(sa.text("SELECT no_such_column FROM password_access"))
        with db.read() as session:
            assert session.execute(sa.text("SELECT count(*) FROM password_access")).scalar_one() == 1
        assert db.watchdog is not None and db.watchdog._inflight == {}
    finally:
        db.dispose()
