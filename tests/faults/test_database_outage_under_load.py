"""PostgreSQL stopped for 10 s under read and write load: senders keep reading, writes get 503, all recovers alone."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any, Self

import pytest
import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.fixtures.server import RunningService, service_env

OUTAGE_SECONDS = 10.0
READERS = 3
WRITERS = 2
#: Reads answered before the outage: with each on a new connection, every worker has served many.
WARM_READS = 200
LOAD_DEADLINE_SECONDS = 120.0
#: An effective read during the outage must not wait for the database.
READ_LATENCY_BUDGET_SECONDS = 3.0
PATHS = ("/v1/smtp/effective?include_password=true", "/v1/tenants/base/smtp/effective", "/v1/smtp/effective")


@dataclasses.dataclass(frozen=True)
class Answer:
    """One request as the client saw it (monotonic times); ``status`` 0: no HTTP answer at all."""

    kind: str
    sent_at: float
    took: float
    status: int
    body: dict[str, Any]
    retry_after: str | None = None
    tenant: str | None = None


class Load:
    """Readers of the effective settings and writers of new tenant overrides, each request on a new connection."""

    def __init__(self, url: str, sender: dict[str, str], admin: dict[str, str]) -> None:
        self.url = url
        self.sender = sender
        self.admin = admin
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(READERS)]
        self._threads += [threading.Thread(target=self._write, daemon=True) for _ in range(WRITERS)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def of(self, kind: str, since: float = 0.0) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.kind == kind and a.sent_at >= since]

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, Any], str | None, float, float]:
        sent_at = time.monotonic()
        try:
            response = requests.request(method, self.url + path, json=body, headers=headers, timeout=30)
            status, parsed = response.status_code, response.json()
            retry_after = response.headers.get("Retry-After")
        except (requests.RequestException, ValueError):
            status, parsed, retry_after = 0, {}, None
        return status, parsed, retry_after, sent_at, time.monotonic() - sent_at

    def _read(self, reader: int) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        for n in itertools.count():
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            status, body, retry_after, sent_at, took = self._call("GET", PATHS[(n + reader) % len(PATHS)], self.sender)
            self._record(Answer("read", sent_at, took, status, body, retry_after))

    def _write(self) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            seq = next(self._seq)
            tenant = f"w{seq}"
            status, body, retry_after, sent_at, took = self._call(
                "PUT", f"/v1/tenants/{tenant}/smtp", self.admin, {"from_name": f"write {seq}", "port": 2525}
            )
            self._record(Answer("write", sent_at, took, status, body, retry_after, tenant))
            if status == 503:
                time.sleep(0.05)  # a client honouring Retry-After would wait longer; keep some pressure on


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.postgres
def test_postgresql_stopped_under_load_fails_no_read_refuses_writes_with_503_and_recovers(own_postgres, tmp_path):
    env = service_env(own_postgres.url, MASTER_KEY, SMTPCONF_DATABASE_TIMEOUT_SECONDS="2")
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('outage-admin', 'admin')}"}
        sender = {"Authorization": f"Bearer {server.token('outage-sender', 'secret-reader', 'reader')}"}
        system = {
            "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
            "password": {"source": "plaintext", "value": "db-outage-password"},
        }
        assert requests.put(server.url + "/v1/smtp", json=system, headers=admin, timeout=10).status_code == 200
        assert requests.put(server.url + "/v1/tenants/base/smtp", json={"from_name": "Base"}, headers=admin, timeout=10).status_code == 200
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2

        with Load(server.url, sender, admin) as load:
            _wait_for(lambda: len(load.of("read")) >= WARM_READS and len(load.of("write")) >= 10, 60, "load before the outage")
            assert all(a.status == 200 for a in load.of("write")), "writes failed before the outage"
            own_postgres.halt()
            stopped = time.monotonic()
            try:
                _wait_for(lambda: any(a.status == 503 for a in load.of("write", stopped)), 10, "a refused write")
                probe_sent = time.monotonic()
                ready = requests.get(server.url + "/readyz", timeout=10)
                probe_took = time.monotonic() - probe_sent
                _wait_for(lambda: time.monotonic() > stopped + OUTAGE_SECONDS, OUTAGE_SECONDS + 1, "the outage to last")
            finally:
                resuming = time.monotonic()
                own_postgres.resume()
            restarted = time.monotonic()

            def recovered() -> bool:
                writes = [a for a in load.of("write", restarted) if a.status == 200]
                reads = load.of("read", restarted)[-30:]
                return len(writes) >= 10 and len(reads) == 30 and not any("settings_stale" in a.body for a in reads)

            _wait_for(recovered, 30, "writes and fresh reads after PostgreSQL came back")
        answers = load.answers

        assert not [a for a in answers if a.status == 500], "an answer with status 500"
        reads, writes = load.of("read"), load.of("write")
        assert [a.status for a in reads] == [200] * len(reads), "an effective read was not answered 200"
        assert {a.status for a in writes} <= {200, 503}, {a.status for a in writes}
        refused = [a for a in writes if a.status == 503]
        assert refused, "no write was refused: the outage did not happen"
        assert all(a.body.get("code") == "database_unavailable" and a.retry_after and int(a.retry_after) > 0 for a in refused)
        # From one sync interval after the stop until the server is started again.
        during = [a for a in reads if a.sent_at >= stopped + 1 and a.sent_at + a.took < resuming]
        assert during, "no read fell in the outage"
        assert all(a.body.get("settings_stale") is True for a in during), "a read during the outage was not marked stale"
        assert max(a.took for a in during) < READ_LATENCY_BUDGET_SECONDS
        assert ready.status_code == 200 and ready.json()["database"] == "down" and ready.json()["status"] == "degraded"
        assert probe_took < 3.0
        with_password = [a for a in during if isinstance(a.body.get("password"), str)]
        assert with_password and all(a.body["password"] == "db-outage-password" for a in with_password)

        # Every acknowledged write is stored (each wrote a tenant of its own).
        acknowledged = [a for a in writes if a.status == 200]
        for answer in acknowledged:
            stored = requests.get(f"{server.url}/v1/tenants/{answer.tenant}/smtp", headers=admin, timeout=10)
            assert stored.status_code == 200, answer.tenant
            assert stored.json()["from_name"] == f"write {answer.tenant.removeprefix('w')}"
        assert worker_pids(server.process.pid) == workers, "the service was restarted"
        assert requests.get(server.url + "/readyz", timeout=10).json()["database"] == "ok"
        print(
            f"\n{len(reads)} effective reads (all 200, {len(during)} during the outage, all stale, "
            f"slowest {max(a.took for a in during) * 1000:.0f} ms); {len(acknowledged)} writes acknowledged and stored, "
            f"{len(refused)} refused with 503; /readyz answered in {probe_took * 1000:.0f} ms during the outage; "
            f"recovered {time.monotonic() - restarted:.1f} s after the restart"
        )
