"""``smtpconf serve --workers 4``: one token request per instance and token lifetime, every worker using that
token, and the token never on disk in plaintext."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.faults.test_rotation_workers import per_worker
from tests.fixtures.oauth_servers import CC_CLIENT_ID, CC_SECRET, MAILBOX, OAuthLab
from tests.fixtures.server import RunningService, service_env

WORKERS = 4
EFFECTIVE = "/v1/smtp/effective?include_password=true"


def test_four_workers_ask_the_token_endpoint_once_and_share_the_token(tmp_path: Path, oauth: OAuthLab, smtp_ca_pem):
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY,
        SMTPCONF_SMTP_ALLOWED_PORTS=str(oauth.xoauth2.port), REQUESTS_CA_BUNDLE=str(oauth.ca_bundle),
    )
    settings = {
        "host": "localhost", "port": oauth.xoauth2.port, "ca_certificate_pem": smtp_ca_pem, "from_email": MAILBOX,
        "username": MAILBOX, "auth": {
            "method": "oauth2", "flow": "client_credentials", "token_url": oauth.tokens.token_url, "client_id": CC_CLIENT_ID,
            "client_secret": {"source": "plaintext", "value": CC_SECRET}, "scope": "smtp.send",
        },
    }
    with RunningService(env, workers=WORKERS, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('shared-admin', 'admin')}"}
        sender = {"Authorization": f"Bearer {server.token('shared-sender', 'secret-reader')}"}
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
        workers = worker_pids(server.process.pid)
        assert len(workers) == WORKERS

        answers = per_worker(server.port, workers, EFFECTIVE, sender)
        checks = [requests.post(server.url + "/v1/smtp/validate", json={}, headers=admin, timeout=20).json() for _ in range(4)]

    assert {status for status, _ in answers.values()} == {200}, answers
    assert len({body["access_token"] for _, body in answers.values()}) == 1
    assert [check["ok"] for check in checks] == [True] * 4, checks
    assert oauth.tokens.endpoint.count() == 1
    token = oauth.tokens.endpoint.issued[0].encode()
    on_disk = [path for path in tmp_path.rglob("*") if path.is_file() and token in path.read_bytes()]
    assert on_disk == []
    assert list((tmp_path / "smtpconf.db.generations.tokens").iterdir()), "the token is shared through its sealed file"
