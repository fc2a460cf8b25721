"""Changes reach every worker of an instance on its next request, and other instances through the database."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from service.app import create_app
from service.board import Board, connection_slot, secret_slot
from service.propagation import Change
from tests.api.test_internal_secrets import effective_password, use_internal, write_secret
from tests.conftest import MASTER_KEY, Tokens

WAIT = 10.0
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def workers(make_app, tmp_path, count: int = 2, **overrides):
    """Apps sharing one board: what the workers of one ``smtpconf serve`` are."""
    board = tmp_path / "instance.generations"
    Board(board).close()
    return [make_app(generations_file=str(board), **overrides) for _ in range(count)]


class Statements:
    """Counts the SQL statements an app's engine runs for requests made from this thread
    (background threads, such as the safety poll, are not requests)."""

    def __init__(self, app) -> None:
        self.count = 0
        self.thread = threading.get_ident()
        self.engine = app.extensions["smtpconf"].db.engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() == self.thread and statement.strip().upper() != "BEGIN":
            self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


# the board


def test_a_bump_is_seen_by_another_mapping_of_the_same_file_and_scoped_to_its_slot(tmp_path):
    one, two = Board(tmp_path / "g"), Board(tmp_path / "g")
    before = two.read()
    one.bump([Change("secret", "corp-vault", "mail/a")])
    after = two.read()
    changed = [slot for slot in range(len(after)) if after[slot] != before[slot]]
    assert changed == [0, secret_slot("corp-vault", "mail/a")]
    assert two.origin == one.origin
    assert Board(tmp_path / "other").origin != one.origin


def test_a_worker_killed_while_holding_the_board_lock_does_not_block_the_others(tmp_path):
    board = Board(tmp_path / "g")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker that takes the lock and dies holding it
        os.close(read)
        with board._locked():
            os.write(write, b"x")
            time.sleep(60)
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    board.bump([Change("settings")])
    assert time.monotonic() - started < 2


# one instance, one view


def test_a_settings_change_through_one_worker_is_served_by_another_on_its_next_request(make_app, tmp_path, system_settings):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    assert a.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin")).status_code == 200
    reader = tokens.headers("reader")
    assert b.get("/v1/smtp/effective", headers=reader).json["from_name"] == system_settings["from_name"]
    for n in range(5):
        changed = a.put("/v1/smtp", json={**system_settings, "from_name": f"Name {n}"}, headers=tokens.headers("admin"))
        assert changed.status_code == 200
        assert b.get("/v1/smtp/effective", headers=reader).json["from_name"] == f"Name {n}"


def test_a_cached_effective_read_makes_no_database_round_trip(make_app, tmp_path, system_settings):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    a.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    reader = tokens.headers("secret-reader")
    assert b.get("/v1/smtp/effective?include_password=true", headers=reader).status_code == 200
    assert b.get("/v1/smtp/effective", headers=tokens.headers("reader")).status_code == 200
    statements = Statements(second)
    try:
        for _ in range(20):
            assert b.get("/v1/smtp/effective?include_password=true", headers=reader).status_code == 200
        assert statements.count == 0
        a.put("/v1/smtp", json={**system_settings, "from_name": "Changed"}, headers=tokens.headers("admin"))
        assert b.get("/v1/smtp/effective", headers=tokens.headers("reader")).json["from_name"] == "Changed"
        assert statements.count == 1  # the settings table, read once after the change
    finally:
        statements.close()


def test_an_internal_rotation_through_one_worker_is_served_by_another_on_its_next_request(make_app, tmp_path):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    write_secret(a, tokens, "smtp/relay", "v0")
    use_internal(a, tokens)
    assert effective_password(b, tokens).json["password"] == "v0"
    for n in range(1, 6):
        assert write_secret(a, tokens, "smtp/relay", f"v{n}").status_code == 200
        assert effective_password(b, tokens).json["password"] == f"v{n}"


def test_invalidating_one_secret_marks_only_that_secret_in_the_other_workers(make_app, tmp_path):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    for name in ("smtp/relay", "smtp/other"):
        write_secret(a, tokens, name, f"{name}-1")
    use_internal(a, tokens, secret="smtp/other")
    assert effective_password(b, tokens).json["password"] == "smtp/other-1"
    use_internal(a, tokens, secret="smtp/relay")
    assert effective_password(b, tokens).json["password"] == "smtp/relay-1"
    cache = second.extensions["smtpconf"].secrets.cache
    relay, other = sorted(cache.keys(), key=lambda key: key.secret != "smtp/relay")
    invalidated = a.post(
        "/v1/secret-cache/invalidate", json={"provider": "internal", "secret": "smtp/relay"},
        headers=tokens.headers("security"),
    )
    assert invalidated.status_code == 200
    second.extensions["smtpconf"].secrets.sync()
    assert cache.peek(relay).stale is True
    assert cache.peek(other).stale is False


def test_an_invalidation_keeps_the_last_good_value_for_every_worker(make_app, tmp_path):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    write_secret(a, tokens, "smtp/relay", "last-good")
    use_internal(a, tokens)
    for client in (a, b):
        assert effective_password(client, tokens).json["password"] == "last-good"
    a.post("/v1/secret-cache/invalidate", json={}, headers=tokens.headers("security"))
    # The store cannot be read now: the next resolution asks it and falls back on the last good value.
    for app in (first, second):
        store = app.extensions["smtpconf"].secrets.store
        store.read = _unreachable
    for client in (a, b):
        body = effective_password(client, tokens).json
        assert body["password"] == "last-good" and body["password_stale"] is True


def _unreachable(*_args: Any, **_kwargs: Any) -> Any:
    from providers.base import ProviderUnavailable

    raise ProviderUnavailable("the store cannot be reached")


def test_narrowing_the_allow_list_purges_the_value_even_for_stale_serving(make_app, tmp_path):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    write_secret(a, tokens, "smtp/relay", "soon-forbidden")
    use_internal(a, tokens)
    assert effective_password(b, tokens).json["password"] == "soon-forbidden"
    internal = a.get("/v1/secret-providers/internal", headers=tokens.headers("security")).json
    document = {k: internal[k] for k in ("type", "cache_ttl_seconds", "max_stale_seconds")}
    narrowed = a.put(
        "/v1/secret-providers/internal", json={**document, "allowed_secrets": ["smtp/other"]},
        headers=tokens.headers("security"),
    )
    assert narrowed.status_code == 200, narrowed.json
    refused = effective_password(b, tokens)
    assert refused.status_code == 503 and refused.json["reason"] == "secret_not_allowed"
    assert second.extensions["smtpconf"].secrets.cache.keys() == []


def test_a_connection_edit_marks_only_that_connections_values(make_app, tmp_path):
    first, second = workers(make_app, tmp_path)
    tokens = Tokens(first)
    a = first.test_client()
    write_secret(a, tokens, "smtp/relay", "internal-value")
    use_internal(a, tokens)
    assert effective_password(second.test_client(), tokens).json["password"] == "internal-value"
    secrets = second.extensions["smtpconf"].secrets
    (key,) = secrets.cache.keys()
    assert connection_slot("internal") != connection_slot("corp-vault")
    a.put(
        "/v1/secret-providers/corp-vault",
        json={"type": "hashicorp_vault", "url": "http://127.0.0.1:9", "mount": "kv",
              "auth": {"method": "token", "token": {"env": "NOT_SET"}}, "allowed_secrets": ["mail/*"]},
        headers=tokens.headers("security"),
    )
    secrets.sync()
    assert secrets.cache.peek(key).stale is False
    internal = a.get("/v1/secret-providers/internal", headers=tokens.headers("security")).json
    a.put(
        "/v1/secret-providers/internal",
        json={k: internal[k] for k in ("type", "allowed_secrets", "cache_ttl_seconds", "max_stale_seconds")},
        headers=tokens.headers("security"),
    )
    secrets.sync()
    assert secrets.cache.peek(key).stale is True


# other instances


@ON_SQLITE
def test_separate_boards_on_sqlite_meet_through_the_safety_poll(make_app, tmp_path, system_settings):
    first = make_app(generations_file=str(tmp_path / "a"), secret_sync_interval_seconds=0.2)
    second = make_app(generations_file=str(tmp_path / "b"), secret_sync_interval_seconds=0.2)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    a.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    assert b.get("/v1/smtp/effective", headers=tokens.headers("reader")).json["from_name"] == system_settings["from_name"]
    a.put("/v1/smtp", json={**system_settings, "from_name": "Polled"}, headers=tokens.headers("admin"))
    wait_for(lambda: b.get("/v1/smtp/effective", headers=tokens.headers("reader")).json["from_name"] == "Polled", "the poll")


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_instances_on_postgresql_propagate_through_notify_not_the_poll(make_app, system_settings):
    # An hour between safety polls: only a notification can carry the change in time.
    first = make_app(secret_sync_interval_seconds=3600)
    second = make_app(secret_sync_interval_seconds=3600)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    wait_for(second.extensions["smtpconf"].propagator.listening.is_set, "the listener")
    write_secret(a, tokens, "smtp/relay", "first")
    use_internal(a, tokens)
    assert effective_password(b, tokens).json["password"] == "first"
    a.put("/v1/smtp", json=system_settings | {"password": {"source": "internal", "secret": "smtp/relay"}},
          headers=tokens.headers("admin"))
    wait_for(lambda: effective_password(b, tokens).json["from_name"] == system_settings["from_name"], "settings")
    write_secret(a, tokens, "smtp/relay", "second")
    wait_for(lambda: effective_password(b, tokens).json["password"] == "second", "the rotation", timeout=2)
    assert second.extensions["smtpconf"].propagator.polls == 1  # the one made when it started listening


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_terminated_listener_reconnects_and_propagation_goes_on(make_app, database_url):
    url = database_url
    first = make_app(secret_sync_interval_seconds=3600)
    second = make_app(secret_sync_interval_seconds=3600)
    tokens = Tokens(first)
    a, b = first.test_client(), second.test_client()
    propagator = second.extensions["smtpconf"].propagator
    wait_for(propagator.listening.is_set, "the listener")
    wait_for(first.extensions["smtpconf"].propagator.listening.is_set, "the other instance's listener")
    write_secret(a, tokens, "smtp/relay", "before")
    use_internal(a, tokens)
    assert effective_password(b, tokens).json["password"] == "before"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            killed = conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'smtpconf-change-listener'"
            )).scalars().all()
    finally:
        engine.dispose()
    assert len(killed) == 2 and all(killed)  # both instances' listeners
    # A change made while the listener is away is found by the re-read when it comes back.
    write_secret(a, tokens, "smtp/relay", "while-away")
    wait_for(lambda: effective_password(b, tokens).json["password"] == "while-away", "the re-read after reconnecting")
    wait_for(propagator.listening.is_set, "the listener to come back")
    write_secret(a, tokens, "smtp/relay", "after")
    wait_for(lambda: effective_password(b, tokens).json["password"] == "after", "the rotation", timeout=2)


def test_the_safety_poll_of_a_database_not_migrated_yet_warns_of_nothing_but_a_real_failure_still_warns(
    tmp_path, caplog
):
    app = create_app({"database_url": f"sqlite:///{tmp_path / 'fresh.db'}", "master_key": MASTER_KEY})
    services = app.extensions["smtpconf"]
    try:
        caplog.set_level("DEBUG", logger="smtpconf.propagation")
        caplog.clear()
        services.propagator._safety_poll(None)  # the table does not exist yet: the CLI migrates before serving
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        assert "not migrated yet" in caplog.text
        services.db.upgrade()
        polls = services.propagator.polls
        services.propagator._safety_poll(None)
        assert services.propagator.polls == polls + 1
        with services.db.transaction() as session:  # a broken table is a failure, and still said so
            session.execute(sa.text("ALTER TABLE service_state RENAME COLUMN value TO other"))
        caplog.clear()
        services.propagator._safety_poll(None)
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "safety poll of the database generations failed"
        ]
    finally:
        services.close()
