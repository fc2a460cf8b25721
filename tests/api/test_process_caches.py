"""What a worker keeps in memory between requests, and when it lets go of it."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy import event

import service.settings as settings_module
from service.db import ApiToken, SmtpSettings
from service.tokens import TOKEN_CACHE_SECONDS, Authenticator, create_token
from tests.conftest import MASTER_KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_token_works_at_once_and_a_removed_one_stops_within_the_cache_lifetime(app):
    db = app.extensions["smtpconf"].db
    clock = Clock()
    authenticate = Authenticator(db, clock=clock)
    assert authenticate("smtpconf_not-issued-yet") is None
    token = create_token(db, "fresh", ["reader"])
    assert authenticate(token).name == "fresh"  # unknown tokens were not remembered
    with db.transaction() as session:
        session.execute(sa.delete(ApiToken).where(ApiToken.name == "fresh"))
    assert authenticate(token).name == "fresh"
    clock.now += TOKEN_CACHE_SECONDS
    assert authenticate(token) is None


def test_effective_settings_follow_a_write_through_the_same_instance_at_once(client, tokens, system_settings):
    reader = tokens.headers("reader")
    client.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    client.put("/v1/tenants/acme/smtp", json={"from_name": "ACME"}, headers=tokens.headers("admin"))
    first = client.get("/v1/tenants/acme/smtp/effective", headers=reader)
    assert first.json["from_name"] == "ACME"
    client.put("/v1/tenants/acme/smtp", json={"from_name": "ACME Mail"}, headers=tokens.headers("admin"))
    second = client.get("/v1/tenants/acme/smtp/effective", headers=reader)
    assert second.json["from_name"] == "ACME Mail" and second.headers["ETag"] != first.headers["ETag"]
    client.delete("/v1/tenants/acme/smtp", headers=tokens.headers("admin"))
    assert client.get("/v1/tenants/acme/smtp/effective", headers=reader).json["from_name"] == system_settings["from_name"]


def test_an_idle_app_does_not_load_the_secret_manager_client_libraries(sqlite_url):
    script = (
        "import sys\n"
        "from service.app import create_app\n"
        f"create_app({{'database_url': {sqlite_url!r}, 'master_key': {MASTER_KEY!r}}})\n"
        "print(sorted(m for m in ('hvac', 'azure.identity', 'azure.keyvault.secrets', 'msal') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


class Queries:
    """Counts the statements an app's engine runs that mention ``table``."""

    def __init__(self, app, table: str) -> None:
        self.table = table
        self.count = 0
        self._lock = threading.Lock()
        self.engine = app.extensions["smtpconf"].db.engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn, _cursor, statement: str, *_args) -> None:
        if self.table in statement:
            with self._lock:
                self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def test_concurrent_reads_after_a_change_read_the_settings_table_and_each_token_once(app, client, tokens, system_settings):
    client.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    reader = tokens.headers("reader")
    start = threading.Barrier(20)

    def read(_: int) -> str:
        start.wait(timeout=10)
        return app.test_client().get("/v1/smtp/effective", headers=reader).json["from_name"]

    settings, token_lookups = Queries(app, "smtp_settings"), Queries(app, "api_tokens")
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            assert list(pool.map(read, range(20))) == [system_settings["from_name"]] * 20
        assert (settings.count, token_lookups.count) == (1, 1)
    finally:
        settings.close()
        token_lookups.close()


def test_a_starting_worker_warms_up_settings_connections_and_the_system_password(make_app, client, tokens, system_settings):
    client.put("/v1/secrets/smtp/relay", json={"value": "warm"}, headers=tokens.headers("security"))
    internal = {**system_settings, "password": {"source": "internal", "secret": "smtp/relay"}}
    assert client.put("/v1/smtp", json=internal, headers=tokens.headers("admin")).status_code == 200
    worker = make_app()
    services = worker.extensions["smtpconf"]
    assert services.secrets.cache.keys() == []
    services.warm()
    assert [key.secret for key in services.secrets.cache.keys()] == ["smtp/relay"]
    statements = Queries(worker, "smtp_settings")
    try:
        body = worker.test_client().get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader")).json
        assert body["password"] == "warm" and statements.count == 0
    finally:
        statements.close()


def test_a_stored_password_is_decrypted_once_and_a_rotated_one_is_served_next(app, client, tokens, system_settings):
    admin, sender = tokens.headers("admin"), tokens.headers("secret-reader")
    client.put("/v1/smtp", json=system_settings, headers=admin)
    client.put("/v1/tenants/acme/smtp", json={"password": {"source": "plaintext", "value": "acme-1"}}, headers=admin)
    url = "/v1/tenants/acme/smtp/effective?include_password=true"
    first = client.get(url, headers=sender)
    keyring = app.extensions["smtpconf"].keyring
    decrypted: list[str] = []
    original = keyring.decrypt

    def counting(token: str, context: str) -> str:
        decrypted.append(context)
        return original(token, context)

    keyring.decrypt = counting
    again = client.get(url, headers=sender)
    # Not decrypted again, and resolved when it was decrypted: the same bytes as before.
    assert decrypted == [] and again.data == first.data and first.json["password"] == "acme-1"
    client.put("/v1/tenants/acme/smtp", json={"password": {"source": "plaintext", "value": "acme-2"}}, headers=admin)
    rotated = client.get(url, headers=sender)
    assert rotated.json["password"] == "acme-2" and rotated.json["password_version"] != first.json["password_version"]
    assert decrypted == ["smtp_settings:tenant:acme:password"]
    assert rotated.json["password_resolved_at"] >= first.json["password_resolved_at"]


def test_thousands_of_tenants_polled_in_turn_are_merged_once_each(app, client, tokens, system_settings, monkeypatch):
    """Senders of many tenants polling at random are answered from the documents kept, as one tenant is."""
    client.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    now = dt.datetime.now(dt.UTC)
    with app.extensions["smtpconf"].db.transaction() as session:
        session.execute(sa.insert(SmtpSettings), [
            {"scope": f"tenant:t-{i}", "document": {"from_name": f"Tenant {i}"}, "version": 1, "updated_at": now,
             "updated_by": "test"}
            for i in range(3000)
        ])
    merges = []
    real_merge = settings_module.merge
    monkeypatch.setattr(settings_module, "merge", lambda *args: merges.append(args[2]) or real_merge(*args))
    reader = tokens.headers("reader")
    for _round in range(2):
        for i in range(3000):
            assert client.get(f"/v1/tenants/t-{i}/smtp/effective", headers=reader).json["from_name"] == f"Tenant {i}"
    assert len(merges) == 3000 and len(set(merges)) == 3000
