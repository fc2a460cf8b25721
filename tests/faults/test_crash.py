"""A gunicorn worker killed with SIGKILL under a stream of writes: no acknowledged change lost, none unaudited."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import requests

from tests.conftest import MASTER_KEY
from tests.faults import audit_events, worker_pids
from tests.fixtures.server import RunningService, service_env

WRITERS = 6
TENANTS_PER_WRITER = 2
#: Acknowledged writes wanted in every scope before the kill, and again after it.
ACKNOWLEDGED_EACH_SIDE = 3
#: How long the writes go on after the kill, for gunicorn to boot a new worker meanwhile.
AFTERMATH_SECONDS = 2.0
LOAD_DEADLINE_SECONDS = 40.0


@dataclasses.dataclass
class Put:
    """One PUT as the client saw it; ``status`` is None when the connection died without an answer."""

    seq: int
    scope: str
    body: dict[str, Any]
    after_kill: bool
    status: int | None = None
    version: int | None = None

    @property
    def request_id(self) -> str:
        return f"crash-{self.seq}"

    @property
    def path(self) -> str:
        return "/v1/smtp" if self.scope == "system" else f"/v1/tenants/{self.scope.removeprefix('tenant:')}/smtp"


def _body(scope: str, seq: int) -> dict[str, Any]:
    """A document whose port and from_name identify the request that sent it."""
    if scope == "system":
        return {
            "host": "smtp.example.com", "port": 1024 + seq, "from_email": "noreply@example.com",
            "from_name": f"req {seq}", "username": "mailer", "password": {"source": "plaintext", "value": f"pw-{seq}"},
        }
    return {"port": 1024 + seq, "from_name": f"req {seq}"}


def _shows(document: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether a stored document (defaults filled in, password redacted) is the one ``body`` submitted."""
    expected = {**body, "password": {"source": "plaintext", "value_set": True}} if "password" in body else body
    return {name: document.get(name) for name in expected} == expected


class Load:
    """Writer threads, each the only writer of its scopes, so each scope's order of requests is known."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.puts: list[Put] = []
        self.killed = threading.Event()
        self.stop = threading.Event()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(WRITERS)]

    def scopes(self, writer: int) -> list[str]:
        if writer == 0:
            return ["system"]
        return [f"tenant:t-{writer}-{k}" for k in range(TENANTS_PER_WRITER)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
            assert not thread.is_alive()

    def acknowledged(self, after_kill: bool) -> int:
        """The fewest acknowledged writes any scope has had on one side of the kill."""
        with self._lock:
            done = [put.scope for put in self.puts if put.status is not None and put.after_kill == after_kill]
        return min(done.count(scope) for writer in range(WRITERS) for scope in self.scopes(writer))

    def _write(self, writer: int) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        for scope in itertools.cycle(self.scopes(writer)):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            seq = next(self._seq)
            put = Put(seq, scope, _body(scope, seq), after_kill=self.killed.is_set())
            try:
                response = requests.put(
                    self.url + put.path, json=put.body, timeout=10,
                    headers={**self.headers, "X-Request-ID": put.request_id},
                )
            except requests.RequestException:
                pass  # cut off by the kill: stored or not, the audit trail must agree
            else:
                put.status = response.status_code
                put.version = response.json().get("version")
            with self._lock:
                self.puts.append(put)


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _assert_history_explains(puts: list[Put], audited: list[dict[str, Any]]) -> Put:
    """Check one scope's audit events against its requests (in the order sent); the request stored last."""
    sent = {put.request_id: put for put in puts}
    # One writer per scope: the stored history is a subsequence of its requests, in the order sent.
    order = [sent[event["request_id"]].seq for event in audited]
    assert order == sorted(order)
    assert audited[0]["before"] is None
    for previous, event in itertools.pairwise(audited):
        assert event["before"] == previous["after"], "a change stored without its audit event"
    for put in puts:
        if put.status == 200:
            assert audited[put.version - 1]["request_id"] == put.request_id, f"acknowledged {put.request_id} lost"
    last_acknowledged = max(put.seq for put in puts if put.status == 200)
    final = sent[audited[-1]["request_id"]]
    # Only a request cut off after the last acknowledged one may have been stored after it.
    assert final.seq == last_acknowledged or (final.seq > last_acknowledged and final.status is None)
    return final


def test_killed_worker_loses_no_acknowledged_write_and_audits_exactly_what_was_stored(database_url, tmp_path):
    env = service_env(database_url, MASTER_KEY)
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('crash-admin', 'admin')}"}
        security = {"Authorization": f"Bearer {server.token('crash-security', 'security')}"}
        sender = {"Authorization": f"Bearer {server.token('crash-sender', 'secret-reader')}"}
        master = server.process.pid
        workers_before = worker_pids(master)
        assert len(workers_before) == 2

        load = Load(server.url, admin)
        load.start()
        try:
            _wait_for(lambda: load.acknowledged(False) >= ACKNOWLEDGED_EACH_SIDE, 20, "writes before the kill")
            victim = min(workers_before)
            os.kill(victim, signal.SIGKILL)
            load.killed.set()
            killed_at = time.monotonic()
            _wait_for(
                lambda: len(worker_pids(master) - workers_before) == 1
                and load.acknowledged(True) >= ACKNOWLEDGED_EACH_SIDE
                and time.monotonic() > killed_at + AFTERMATH_SECONDS,
                20,
                "a respawned worker and writes after the kill",
            )
        finally:
            load.join()
        workers_after = worker_pids(master)
        assert len(workers_after) == 2 and victim not in workers_after and server.process.poll() is None
        assert {put.status for put in load.puts} <= {200, None}, "every answered PUT succeeded"

        events = [
            e for e in audit_events(server.url, security)
            if e["action"] == "smtp_settings.put" and (e["request_id"] or "").startswith("crash-")
        ]
        by_request = {e["request_id"]: e for e in events}
        assert len(by_request) == len(events), "one audit event per stored request"
        sent = {put.request_id: put for put in load.puts}
        assert set(by_request) <= set(sent), "no audit event for a request nobody sent"
        cut_off = [put for put in load.puts if put.status is None]
        print(
            f"\n{database_url.split(':')[0]}: {len(load.puts)} PUTs, {len(cut_off)} cut off by the kill, "
            f"{sum(put.request_id in by_request for put in cut_off)} of those stored"
        )

        history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            put = sent[event["request_id"]]
            assert event["target"] == put.scope and _shows(event["after"], put.body)
            history[put.scope].append(event)
        for scope in (scope for writer in range(WRITERS) for scope in load.scopes(writer)):
            puts = sorted((put for put in load.puts if put.scope == scope), key=lambda put: put.seq)
            final = _assert_history_explains(puts, history[scope])
            stored = requests.get(server.url + final.path, headers=admin, timeout=10).json()
            assert stored["version"] == len(history[scope]) and _shows(stored, final.body)

        system = requests.get(server.url + "/v1/smtp/effective?include_password=true", headers=sender, timeout=10).json()
        final_system = history["system"][-1]["request_id"]
        assert system["password"] == f"pw-{sent[final_system].seq}"


def test_sigterm_under_writes_drains_in_flight_requests_and_loses_no_acknowledged_write(database_url, tmp_path):
    env = service_env(database_url, MASTER_KEY)
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        admin = {"Authorization": f"Bearer {server.token('term-admin', 'admin')}"}
        security = {"Authorization": f"Bearer {server.token('term-security', 'security')}"}
        load = Load(server.url, admin)
        load.start()
        try:
            _wait_for(lambda: load.acknowledged(False) >= ACKNOWLEDGED_EACH_SIDE, 20, "writes before the shutdown")
            load.killed.set()
            os.kill(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=30)
        finally:
            load.join()
        assert server.process.returncode == 0, "a graceful shutdown"
    answered = [put for put in load.puts if put.status is not None]
    assert {put.status for put in answered} == {200}
    # Every request that reached a worker before the shutdown was answered; later ones were refused at connect.
    log = (tmp_path / "server.log").read_text()
    assert "was sent SIGKILL" not in log, "workers had to be killed"

    with RunningService(env, workers=1, log_path=tmp_path / "restarted.log") as restarted:
        events = [
            e for e in audit_events(restarted.url, security)
            if e["action"] == "smtp_settings.put" and (e["request_id"] or "").startswith("crash-")
        ]
        sent = {put.request_id: put for put in load.puts}
        history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            history[sent[event["request_id"]].scope].append(event)
        for scope in (scope for writer in range(WRITERS) for scope in load.scopes(writer)):
            puts = sorted((put for put in load.puts if put.scope == scope), key=lambda put: put.seq)
            final = _assert_history_explains(puts, history[scope])
            stored = requests.get(restarted.url + final.path, headers=admin, timeout=10).json()
            assert stored["version"] == len(history[scope]) and _shows(stored, final.body)
