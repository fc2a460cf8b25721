"""The real server: ``smtpconf serve`` under gunicorn, spoken to over HTTP on loopback."""

from __future__ import annotations

import re
import subprocess
import sys

import requests

from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS
from tests.fixtures.server import RunningService, service_env


def test_serve_answers_http_with_several_workers(tmp_path):
    env = service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY)
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('ops-admin', 'admin')}"}
        reader = {"Authorization": f"Bearer {server.token('consumer', 'reader', 'secret-reader')}"}
        put = requests.put(server.url + "/v1/smtp", json=SYSTEM_SETTINGS, headers=admin, timeout=10)
        assert put.status_code == 200, put.text
        for _ in range(20):
            effective = requests.get(server.url + "/v1/smtp/effective?include_password=true", headers=reader, timeout=10)
            assert effective.status_code == 200
            assert effective.json()["password"] == "initial-password"
            assert effective.headers["Cache-Control"] == "no-store"
        assert requests.get(server.url + "/v1/smtp", timeout=10).status_code == 401
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        served = [
            float(m.group(1))
            for m in re.finditer(
                r'smtpconf_http_requests_total\{endpoint="/v1/smtp/effective",method="GET",status="200"\} ([0-9.e+]+)',
                metrics,
            )
        ]
        # Both workers' counts are aggregated, whichever worker answers the scrape.
        assert sum(served) == 20
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.json()["database"] == "ok"
    log = (tmp_path / "server.log").read_text()
    assert '"message": "request"' in log and "initial-password" not in log


def test_serve_refuses_to_start_without_a_master_key(tmp_path):
    env = service_env(f"sqlite:///{tmp_path / 'x.db'}", "")
    del env["SMTPCONF_MASTER_KEY"]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--bind", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "SMTPCONF_MASTER_KEY" in done.stderr


def test_token_create_prints_the_token_last_and_stores_only_its_hash(tmp_path):
    db = tmp_path / "t.db"
    env = service_env(f"sqlite:///{db}", MASTER_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "token", "create", "--name", "ci", "--role", "reader", "--role", "security"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    token = done.stdout.strip().splitlines()[-1]
    assert token.startswith("smtpconf_") and len(token) >= 43
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("t.db*"))
    assert b"api_tokens" in stored and token.encode() not in stored
    again = subprocess.run(
        [sys.executable, "-m", "service.cli", "token", "create", "--name", "ci", "--role", "reader"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 2 and "exists" in again.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", "token", "create", "--name", "x", "--role", "root"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_rotate_master_key_command_re_encrypts_under_the_first_key(tmp_path):
    import base64
    import os

    from service.crypto import KeyRing
    from service.db import Database, SmtpSettings

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with RunningService(service_env(url, MASTER_KEY), workers=1) as server:
        admin = {"Authorization": f"Bearer {server.token('admin', 'admin')}"}
        assert requests.put(server.url + "/v1/smtp", json=SYSTEM_SETTINGS, headers=admin, timeout=10).status_code == 200
    new_key = base64.b64encode(os.urandom(32)).decode()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "rotate-master-key"],
        env=service_env(url, f"{new_key},{MASTER_KEY}"), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 plaintext password" in done.stdout
    db = Database(url)
    with db.read() as session:
        sealed = session.get(SmtpSettings, "system").document["password"]["ciphertext"]
    assert KeyRing.key_id_of(sealed) == KeyRing([base64.b64decode(new_key)]).primary_id
