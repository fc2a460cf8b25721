"""Slow, idle and non-reading clients against the real server: ordinary requests keep being answered."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from typing import Callable, Iterator

import pytest
import requests

from tests.conftest import MASTER_KEY
from tests.fixtures.server import RunningService, service_env

HEADER_TIMEOUT = 1.5
WRITE_TIMEOUT = 3.0
#: Ordinary requests made while the slow clients hold their connections, and how long each may take.
ORDINARY = 20
ORDINARY_BOUND_SECONDS = 5.0
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    env = service_env(
        f"sqlite:///{tmp / 'smtpconf.db'}", MASTER_KEY,
        SMTPCONF_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT), SMTPCONF_BODY_MIN_BYTES_PER_SECOND="100",
        SMTPCONF_WRITE_TIMEOUT_SECONDS=str(WRITE_TIMEOUT),
    )
    with RunningService(env, workers=2, log_path=tmp / "server.log") as running:
        yield running


def ordinary_requests_answered(url: str) -> list[object]:
    """Each of ``ORDINARY`` requests on a new connection: its status, or the error it met."""
    outcomes: list[object] = []
    for _ in range(ORDINARY):
        try:
            outcomes.append(requests.get(url + "/healthz", timeout=ORDINARY_BOUND_SECONDS).status_code)
        except requests.RequestException as exc:
            outcomes.append(repr(exc))
    return outcomes


def connect(port: int, **options: int) -> socket.socket:
    sock = socket.socket()
    for name, value in options.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing the connection; None if it was still open at ``deadline``."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


class Trickle:
    """Connections that each send ``head`` whole, then one byte of ``rest`` every half second until stopped."""

    def __init__(self, port: int, count: int, head: bytes, rest: bytes) -> None:
        self.socks = [connect(port) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(head)
        self.rest = rest
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        position = 0
        while not self.stop.wait(0.5) and position < len(self.rest):
            for sock in self.socks:
                try:
                    sock.send(self.rest[position : position + 1])
                except OSError:
                    pass  # closed by the server: what the test expects
            position += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


def while_held(make: Callable[[], Trickle], url: str) -> tuple[list[object], Trickle]:
    trickle = make()
    try:
        return ordinary_requests_answered(url), trickle
    except BaseException:
        trickle.close()
        raise


def assert_all_closed_with_408(trickle: Trickle) -> None:
    deadline = time.monotonic() + 10 * HEADER_TIMEOUT
    for sock in trickle.socks:
        received = read_until_closed(sock, deadline)
        assert received is not None, "a trickling connection was still open long after the deadline"
        assert received.startswith(b"HTTP/1.1 408 "), received[:80]


def test_connections_trickling_their_headers_neither_stop_ordinary_requests_nor_stay_open(server):
    outcomes, trickle = while_held(
        lambda: Trickle(server.port, 100, b"G", b"ET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100),
        server.url,
    )
    try:
        assert outcomes == [200] * ORDINARY
        assert_all_closed_with_408(trickle)
    finally:
        trickle.close()


def test_connections_trickling_a_body_neither_stop_ordinary_requests_nor_stay_open(server):
    head = (
        b"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )
    outcomes, trickle = while_held(lambda: Trickle(server.port, 100, head, b"{" + b" " * 200), server.url)
    try:
        assert outcomes == [200] * ORDINARY
        assert_all_closed_with_408(trickle)
    finally:
        trickle.close()


def test_two_thousand_idle_keep_alive_connections_stay_usable_and_cost_ordinary_requests_nothing(server):
    idle: list[socket.socket] = []
    try:
        for _ in range(2000):
            sock = connect(server.port)
            idle.append(sock)
            sock.sendall(HEALTH)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert ordinary_requests_answered(server.url) == [200] * ORDINARY
        for sock in idle[::200]:  # they were kept, not dropped
            sock.sendall(HEALTH)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_never_reads_its_answers_costs_ordinary_requests_nothing_and_is_closed(server):
    # 200 requests for a 100 KB document, on a connection whose receive buffer is tiny and never read.
    sock = connect(server.port, SO_RCVBUF=4096)
    try:
        sock.sendall(b"GET /openapi.yaml HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200)
        started = time.monotonic()
        assert ordinary_requests_answered(server.url) == [200] * ORDINARY
        # Left alone past the write deadline, the connection is closed by the server.
        time.sleep(max(0.0, WRITE_TIMEOUT + 1 - (time.monotonic() - started)))
        assert read_until_closed(sock, time.monotonic() + 30) is not None
    finally:
        sock.close()


def test_over_the_connection_cap_a_client_is_refused_at_once_and_served_again_below_it(tmp_path):
    env = service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, SMTPCONF_MAX_CONNECTIONS_PER_WORKER="20")
    with RunningService(env, workers=1, log_path=tmp_path / "server.log") as running:
        held = []
        try:
            for _ in range(20):
                sock = connect(running.port)
                sock.sendall(HEALTH)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
                held.append(sock)
            refused = connect(running.port)
            received = read_until_closed(refused, time.monotonic() + 5)
            refused.close()
            assert received is not None and received.startswith(b"HTTP/1.1 503 ")
            assert b'"code": "too_many_connections"' in received
            held.pop().close()
            deadline = time.monotonic() + 10
            while True:  # the server sees the close a moment later
                status = requests.get(running.url + "/healthz", timeout=5).status_code
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status == 200
        finally:
            for sock in held:
                sock.close()


def test_a_request_past_its_time_bound_is_answered_503_and_frees_its_thread(tmp_path, silent_server):
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY,
        SMTPCONF_REQUEST_TIMEOUT_SECONDS="1.5", SMTPCONF_SMTP_ALLOWED_PORTS=str(silent_server.port),
    )
    settings = {
        "host": silent_server.host, "port": silent_server.port, "security": "none",
        "from_email": "noreply@example.com", "timeout_seconds": 60,
    }
    with RunningService(env, workers=1, log_path=tmp_path / "server.log") as running:
        admin = {"Authorization": f"Bearer {running.token('stuck-admin', 'admin')}"}
        assert requests.put(running.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200

        def stuck() -> requests.Response:
            return requests.post(running.url + "/v1/smtp/test-connection", json={}, headers=admin, timeout=20)

        # More stuck requests than the worker has threads (8): each is answered, and so is what comes after.
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: stuck(), range(12)))
        assert [answer.status_code for answer in answers] == [503] * 12
        assert all(answer.json()["code"] == "request_time_exceeded" for answer in answers)
        assert ordinary_requests_answered(running.url) == [200] * ORDINARY


def test_a_body_over_the_fronts_cap_is_refused_before_it_is_read_and_headers_over_64_kib_too(server):
    for head, status in (
        (b"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 17000000\r\n\r\n", b"413"),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    ):
        sock = connect(server.port)
        try:
            try:
                sock.sendall(head)
            except OSError:
                pass  # the server may answer and close before the last bytes of a long head are sent
            received = read_until_closed(sock, time.monotonic() + 5)
            assert received is not None and received.startswith(b"HTTP/1.1 " + status + b" "), received
        finally:
            sock.close()
