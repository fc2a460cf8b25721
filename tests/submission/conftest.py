"""The submission lab: a database and settings made through the API, upstream aiosmtpd servers, and
``smtpconf submission`` processes started on demand."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme

from service.app import create_app
from service.tokens import create_token
from tests.conftest import MASTER_KEY
from tests.submission.harness import LOOPBACK, SubmissionProcess, non_loopback_address, submission_env, write_certificate

_names = itertools.count(1)


class Lab:
    """One database shared by the test process (settings, tokens) and the submission processes it starts."""

    def __init__(self, directory: Path, ca: trustme.CA, allowed_ports: list[int], database_url: str | None = None) -> None:
        self.directory = directory
        self.ca = ca
        self.database_url = database_url or f"sqlite:///{directory / 'smtpconf.db'}"
        self.outside = non_loopback_address()
        self.cert = write_certificate(ca, directory, "localhost", LOOPBACK, *([self.outside] if self.outside else []))
        self.allowed_ports = allowed_ports
        self.app = create_app({"database_url": self.database_url, "master_key": MASTER_KEY, "testing": True})
        self.services = self.app.extensions["smtpconf"]
        self.services.db.upgrade()
        self.client = self.app.test_client()
        self.admin = {"Authorization": f"Bearer {create_token(self.services.db, 'lab-admin', ['admin'])}"}
        self.processes: list[SubmissionProcess] = []

    def env(self, **extra: Any) -> dict[str, str]:
        return submission_env(
            self.database_url, MASTER_KEY, self.cert,
            SMTPCONF_SMTP_ALLOWED_PORTS=",".join(map(str, self.allowed_ports)), **extra,
        )

    def start(self, *, host: str = LOOPBACK, implicit_tls: bool = False, **extra: Any) -> SubmissionProcess:
        """A submission server of its own (settings as ``SMTPCONF_*`` keyword arguments)."""
        log = self.directory / f"submission-{next(_names)}.log"
        process = SubmissionProcess(self.env(**extra), log, host=host, implicit_tls=implicit_tls)
        self.processes.append(process)
        return process

    def token(self, *roles: str, tenants: list[str] | None = None) -> str:
        name = f"lab-token-{next(_names)}"
        return create_token(self.services.db, name, list(roles), tenants=tenants)

    def tenant(self, settings: dict[str, Any]) -> str:
        """A new tenant with ``settings``."""
        tenant = f"t{next(_names)}"
        response = self.client.put(f"/v1/tenants/{tenant}/smtp", json=settings, headers=self.admin)
        assert response.status_code == 200, response.json
        return tenant

    def logs(self) -> bytes:
        return b"".join(p.log_path.read_bytes() for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.services.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, smtp_ca: trustme.CA, smtp_upstreams: list[Any]) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("submission"), smtp_ca, [server.port for server in smtp_upstreams])
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def submission(lab: Lab) -> SubmissionProcess:
    """The module's ordinary submission server: STARTTLS, default limits, on loopback."""
    return lab.start()


@pytest.fixture(scope="module")
def smtp_upstreams(starttls_smtp_server: Any) -> list[Any]:
    """The upstream mail servers the module's settings may name (a module overrides it to add more)."""
    return [starttls_smtp_server]
