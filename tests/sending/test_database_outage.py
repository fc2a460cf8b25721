"""Sending while the database cannot be written: a bounded 503 where the database is needed first, never a 500."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.sending.conftest import MESSAGE, settings_for


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite only: another connection holding its write lock is the outage."""
    return sqlite_url


def test_with_the_database_locked_a_keyed_send_is_503_and_a_keyless_one_is_logged_afterwards(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server, database_timeout_seconds=0.5)
    assert client.put("/v1/smtp", json=settings_for(plain_smtp_server), headers=tokens.headers("admin")).status_code == 200
    sender = tokens.headers("sender")
    admin = tokens.headers("admin")
    assert client.get("/v1/whoami", headers=admin).status_code == 200  # the admin token is known before the lock
    assert client.post("/v1/messages", json=MESSAGE, headers=sender).status_code == 200
    database = app.extensions["smtpconf"].db.url.removeprefix("sqlite:///")
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        keyed = client.post("/v1/messages", json=MESSAGE, headers={**sender, "Idempotency-Key": "during-the-lock"})
        assert keyed.status_code == 503 and keyed.json["code"] == "database_unavailable", keyed.json
        assert time.monotonic() - started < 3
        assert len(plain_smtp_server.messages) == 1  # nothing was sent without its key stored first
        keyless = client.post("/v1/messages", json=MESSAGE, headers=sender)
        assert keyless.status_code == 200, keyless.json
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(plain_smtp_server.messages) == 2
    rows = client.get("/v1/messages", headers=admin).json["items"]
    assert [row["outcome"] for row in rows] == ["sent", "sent"]
    assert keyless.json["id"] in [row["id"] for row in rows]
