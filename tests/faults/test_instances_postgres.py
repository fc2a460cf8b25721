"""Two ``smtpconf serve`` instances on one real PostgreSQL: one listener per instance, propagation
through NOTIFY, and a listener whose backend is terminated comes back without losing a change."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from service.propagation import LISTENER_NAME
from tests.conftest import MASTER_KEY
from tests.faults.test_rotation_workers import get
from tests.fixtures.server import RunningService, service_env

pytestmark = pytest.mark.postgres
EFFECTIVE = "/v1/smtp/effective?include_password=true"


def listeners(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = :name"),
            {"name": LISTENER_NAME},
        ).scalars())


def wait_for(condition: Any, what: str, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def test_instances_propagate_through_one_listener_each_and_survive_its_termination(postgres, tmp_path):
    url = postgres.create()
    engine = sa.create_engine(url)
    # An hour between safety polls: only NOTIFY, or the re-read after a reconnection, can carry a change.
    env = service_env(url, MASTER_KEY, SMTPCONF_SECRET_SYNC_INTERVAL_SECONDS="3600")
    try:
        with RunningService(env, workers=2, log_path=tmp_path / "a.log") as a, \
                RunningService(env, workers=2, log_path=tmp_path / "b.log") as b:
            security = {"Authorization": f"Bearer {a.token('pg-security', 'security')}"}
            admin = {"Authorization": f"Bearer {a.token('pg-admin', 'admin')}"}
            sender = {"Authorization": f"Bearer {a.token('pg-sender', 'secret-reader')}"}
            wait_for(lambda: len(listeners(engine)) == 2, "one listener per instance", 30)

            def rotate(value: str) -> None:
                response = requests.put(f"{a.url}/v1/secrets/smtp/relay", json={"value": value}, headers=security, timeout=10)
                assert response.status_code in (200, 201), response.text

            def b_serves(value: str) -> bool:
                return all(get(b.port, EFFECTIVE, sender)[1].get("password") == value for _ in range(4))

            rotate("v0")
            settings = {
                "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
                "password": {"source": "internal", "secret": "smtp/relay"},
            }
            assert requests.put(f"{a.url}/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
            wait_for(lambda: b_serves("v0"), "instance B to serve the first value", 10)
            delays = []
            for n in range(1, 11):
                rotate(f"v{n}")
                delays.append(wait_for(lambda: b_serves(f"v{n}"), f"rotation {n} on instance B", 5))
            assert max(delays) < 1.0, delays

            with engine.begin() as conn:
                terminated = conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name "
                            "AND datname = current_database()"), {"name": LISTENER_NAME},
                ).scalars().all()
            assert terminated == [True, True]
            rotate("while-away")  # perhaps before the listeners are back: the re-read on reconnecting finds it
            wait_for(lambda: b_serves("while-away"), "the change made while the listener was away", 10)
            wait_for(lambda: len(listeners(engine)) == 2, "the listeners to come back", 10)
            rotate("after")
            assert wait_for(lambda: b_serves("after"), "a rotation after the reconnection", 5) < 1.0
    finally:
        engine.dispose()
