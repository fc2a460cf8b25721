"""The token check reads the database off the event loop: a lookup stuck behind a lock holds up that AUTH only,
while every other connection is answered at once. On PostgreSQL, where a test can hold a table lock."""

from __future__ import annotations

import base64
import threading
import time

import pytest
import sqlalchemy as sa

from tests.submission.conftest import Lab
from tests.submission.harness import LOOPBACK, Raw

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_lab(tmp_path_factory, smtp_ca, postgres):
    lab = Lab(tmp_path_factory.mktemp("submission-pg"), smtp_ca, [25], database_url=postgres.create())
    yield lab
    lab.close()


def test_a_token_lookup_waiting_on_the_database_blocks_no_other_connection(pg_lab):
    server = pg_lab.start()
    token = pg_lab.token("sender")
    waiting = Raw(LOOPBACK, server.port, timeout=30)
    waiting.reply()
    waiting.command("EHLO waiting.example.test")
    engine = sa.create_engine(pg_lab.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    replies: list[str] = []
    with engine.connect() as lock:
        lock.exec_driver_sql("BEGIN")
        lock.exec_driver_sql("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        credentials = base64.b64encode(f"\0*\0{token}".encode()).decode()
        auth = threading.Thread(target=lambda: replies.append(waiting.command(f"AUTH PLAIN {credentials}")))
        auth.start()
        time.sleep(0.5)  # the AUTH has reached the server and waits for the table
        assert replies == []
        # Answered while the lock is held: a loop blocked by the lookup could not answer before the COMMIT below.
        other = Raw(LOOPBACK, server.port, timeout=30)
        assert other.reply().startswith("220")
        assert other.command("EHLO other.example.test").startswith("250")
        assert other.command("NOOP").startswith("250")
        assert replies == []  # still waiting: the lock is held
        lock.exec_driver_sql("COMMIT")
    auth.join(timeout=20)
    assert replies and replies[0].startswith("235 2.7.0")
    other.close()
    waiting.close()
    engine.dispose()


def test_with_the_database_down_a_new_token_is_454_and_a_known_one_keeps_sending(tmp_path, smtp_ca, own_postgres, starttls_smtp_server,
                                                                      smtp_ca_pem):
    import smtplib

    from tests.submission.harness import connect
    from tests.submission.test_relay import legacy_message, starttls_settings

    lab = Lab(tmp_path, smtp_ca, [starttls_smtp_server.port], database_url=own_postgres.url)
    try:
        lab.client.put("/v1/smtp", json=starttls_settings(starttls_smtp_server, smtp_ca_pem), headers=lab.admin)
        server = lab.start(SMTPCONF_DATABASE_TIMEOUT_SECONDS=2)
        known, unknown = lab.token("sender"), lab.token("sender")
        client = connect(server, lab.ca)
        client.login("*", known)  # the process has now seen this token in the database
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
        own_postgres.halt()
        try:
            started = time.monotonic()
            stranger = connect(server, lab.ca)
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                stranger.login("*", unknown)
            assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (454, b"4.7.0")
            stranger.quit()
            client.mail("printer@legacy.example")
            client.rcpt("ada@example.com")
            # Settings come from memory and the delivery log row waits for the database: the mail goes.
            code, _ = client.data(legacy_message().as_string())
            assert code == 250
            assert time.monotonic() - started < 20
        finally:
            own_postgres.resume()
        client.quit()
        assert len(starttls_smtp_server.messages) == 2
    finally:
        lab.close()
