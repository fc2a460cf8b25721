"""Connection reuse on the real server: an answer given without reading the body never breaks the next request."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest
import requests

from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS
from tests.fixtures.server import RunningService, service_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningService, str]]:
    tmp = tmp_path_factory.mktemp("keep-alive")
    env = service_env(f"sqlite:///{tmp / 'smtpconf.db'}", MASTER_KEY)
    with RunningService(env, workers=2, log_path=tmp / "server.log") as running:
        yield running, running.token("keep-alive-admin", "admin")


class RawConnection:
    """One HTTP/1.1 connection, spoken to byte by byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        """The next response, or None when the server closed the connection first."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self._recv()
            if not chunk:
                return None
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = self._recv()
            assert chunk, "connection closed inside a response body"
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        return not self.buffer and self._recv() == b""

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()


def put_request(token: str, body: bytes, *, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    if chunked:
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in _parts(body, 16 * 1024)) + b"0\r\n\r\n"
    return head + body


def _parts(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def oversized(size: int) -> bytes:
    return b'{"host": "' + b"a" * size + b'"}'


def test_after_a_413_for_a_70_kb_body_the_next_request_on_the_connection_is_answered(server):
    running, token = server
    connection = RawConnection(running.port)
    try:
        connection.send(put_request(token, oversized(70_000)) + HEALTH)
        first = connection.response()
        assert first is not None and first[0] == 413
        second = connection.response()
        if second is None:
            pytest.fail(f"the server closed the connection after announcing {first[1].get('connection')!r}")
        assert second[0] == 200 and second[2] == b'{"status": "ok"}'
        assert first[1]["connection"] == "keep-alive"
    finally:
        connection.close()


def test_a_body_too_large_to_drain_is_answered_with_connection_close_and_the_connection_closed(server):
    running, token = server
    connection = RawConnection(running.port)
    try:
        connection.send(put_request(token, oversized(2_000_000)))
        first = connection.response()
        assert first is not None and first[0] == 413
        assert first[1]["connection"] == "close"
        assert connection.closed_by_server()
    finally:
        connection.close()


@pytest.mark.parametrize("size", [70_000, 2_000_000], ids=["drained", "closed"])
def test_a_chunked_oversized_body_never_breaks_the_next_request(server, size):
    running, token = server
    connection = RawConnection(running.port)
    try:
        connection.send(put_request(token, oversized(size), chunked=True))
        first = connection.response()
        assert first is not None and first[0] == 413
        if first[1]["connection"] == "close":
            assert size > 1024 * 1024 and connection.closed_by_server()
            return
        connection.send(HEALTH)
        second = connection.response()
        assert second is not None and second[0] == 200
    finally:
        connection.close()


def test_a_401_for_a_body_sent_without_a_token_leaves_the_connection_usable(server):
    running, _ = server
    connection = RawConnection(running.port)
    try:
        body = b'{"host": "' + b"a" * 50_000 + b'"}'
        request = (
            f"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        connection.send(request + HEALTH)
        first, second = connection.response(), connection.response()
        assert first is not None and first[0] == 401
        assert second is not None and second[0] == 200
    finally:
        connection.close()


def test_a_session_that_reuses_its_connection_keeps_working_after_a_413(server):
    running, token = server
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        too_large = session.put(running.url + "/v1/smtp", data=oversized(70_000), timeout=10,
                                headers={"Content-Type": "application/json"})
        assert too_large.status_code == 413
        saved = session.put(running.url + "/v1/smtp", json=SYSTEM_SETTINGS, timeout=10)
        assert saved.status_code == 200, saved.text
