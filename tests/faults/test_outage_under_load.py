"""OpenBao stopped while senders read the password: stale values keep every read answered, then recovery."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.fixtures.server import RunningService, service_env

PASSWORD = "outage-password-41c7"
CONNECTION = "outage-vault"
CACHE_TTL_SECONDS = 1
MAX_STALE_SECONDS = 20
READERS = 4
EFFECTIVE = "/v1/smtp/effective?include_password=true"


@dataclasses.dataclass(frozen=True)
class Read:
    """One effective read as the client saw it (monotonic times)."""

    sent_at: float
    answered_at: float
    status: int  # 0 when no HTTP answer came
    body: dict[str, Any]


class Readers:
    """Threads reading the effective settings continuously, each request on a new connection
    so that both workers serve them."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.reads: list[Read] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, daemon=True) for _ in range(READERS)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def since(self, moment: float) -> list[Read]:
        with self._lock:
            return [read for read in self.reads if read.sent_at >= moment]

    def _read(self) -> None:
        deadline = time.monotonic() + 90
        while not self.stop.is_set() and time.monotonic() < deadline:
            sent_at = time.monotonic()
            try:
                response = requests.get(self.url + EFFECTIVE, headers=self.headers, timeout=10)
                status, body = response.status_code, response.json()
            except (requests.RequestException, ValueError):
                status, body = 0, {}  # no usable answer at all: counted as a failed read
            read = Read(sent_at, time.monotonic(), status, body)
            with self._lock:
                self.reads.append(read)


def _holds_connection_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_ip, remote_port = fields[2].split(":")
        if remote_ip == "0100007F" and int(remote_port, 16) == port and fields[3] == "01" and fields[9] in inodes:
            return True
    return False


def _provider_status(url: str) -> str:
    return requests.get(url + "/readyz", timeout=10).json()["providers"][CONNECTION]["status"]


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_openbao_outage_under_load_fails_no_read_and_recovers_without_restart(openbao, tmp_path):
    mount = f"kv-outage-{time.time_ns() % 10**9}"
    openbao.enable_kv(mount, version=2)
    openbao.write_secret(mount, "mail/smtp", {"password": PASSWORD})
    policy = openbao.kv_read_policy(f"{mount}-read", mount, version=2)
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, OUTAGE_VAULT_TOKEN=openbao.create_token([policy])
    )
    openbao_port = int(openbao.url.rsplit(":", 1)[1])
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        security = {"Authorization": f"Bearer {server.token('outage-security', 'security')}"}
        admin = {"Authorization": f"Bearer {server.token('outage-admin', 'admin')}"}
        sender = {"Authorization": f"Bearer {server.token('outage-sender', 'secret-reader')}"}
        connection = {
            "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
            "auth": {"method": "token", "token": {"env": "OUTAGE_VAULT_TOKEN"}}, "allowed_secrets": ["mail/*"],
            "cache_ttl_seconds": CACHE_TTL_SECONDS, "max_stale_seconds": MAX_STALE_SECONDS, "timeout_seconds": 2,
        }
        created = requests.put(f"{server.url}/v1/secret-providers/{CONNECTION}", json=connection, headers=security, timeout=10)
        assert created.status_code == 201, created.text
        settings = {
            "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
            "password": {"source": "hashicorp_vault", "provider": CONNECTION, "path": "mail/smtp", "key": "password"},
        }
        assert requests.put(server.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200

        # Each worker has its own cache: both must have fetched the value once before the outage.
        # Until /readyz is asked, only a fetch opens a connection to OpenBao, and every answer was right.
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        with ThreadPoolExecutor(max_workers=50) as pool:
            for _ in range(10):
                answers = list(pool.map(lambda _: requests.get(server.url + EFFECTIVE, headers=sender, timeout=10), range(50)))
                assert [a.status_code for a in answers] == [200] * 50
                assert {a.json()["password"] for a in answers} == {PASSWORD}
                if all(_holds_connection_to(pid, openbao_port) for pid in workers):
                    break
        assert all(_holds_connection_to(pid, openbao_port) for pid in workers), "a worker never fetched the password"
        assert _provider_status(server.url) == "ok"

        with Readers(server.url, sender) as readers:
            _wait_for(lambda: len(readers.since(0)) >= 20, 15, "reads before the outage")
            with openbao.outage():
                outage_started = time.monotonic()
                _wait_for(lambda: _provider_status(server.url) == "degraded", 15, "/readyz to report degraded")
                _wait_for(lambda: time.monotonic() > outage_started + CACHE_TTL_SECONDS + 2, 5, "stale reads")
                outage_ended = time.monotonic()
            restarted = time.monotonic()

            def recovered() -> bool:
                latest = readers.since(restarted)[-30:]
                return len(latest) == 30 and not any("password_stale" in read.body for read in latest)

            _wait_for(recovered, 15, "fresh reads after OpenBao came back")
            _wait_for(lambda: _provider_status(server.url) == "ok", 15, "/readyz to report ok again")

        assert outage_ended - outage_started < MAX_STALE_SECONDS / 2
        reads = readers.since(0)
        assert [read.status for read in reads] == [200] * len(reads), "an effective read failed"
        assert {read.body["password"] for read in reads} == {PASSWORD}
        # Past the TTL, with OpenBao down for the whole request, only the stale value can answer.
        past_ttl = [
            read for read in reads
            if read.sent_at >= outage_started + CACHE_TTL_SECONDS and read.answered_at < outage_ended
        ]
        assert past_ttl, "no read fell in the outage"
        assert all(read.body.get("password_stale") is True for read in past_ttl)
        assert all("password_stale" in read.body["warnings"] for read in past_ttl)
        assert worker_pids(server.process.pid) == workers, "the service was not restarted"
        print(f"\n{len(reads)} effective reads, {len(past_ttl)} served stale during the outage, none failed")
