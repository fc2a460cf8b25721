"""HTTP/1.1 as the service's front speaks it, on the real server: pipelining, HEAD, HTTP/1.0, 100-continue, half-close."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from tests.cli.test_keep_alive import HEALTH, RawConnection
from tests.conftest import MASTER_KEY
from tests.fixtures.server import RunningService, service_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("front-http")
    with RunningService(service_env(f"sqlite:///{tmp / 'smtpconf.db'}", MASTER_KEY), workers=1,
                        log_path=tmp / "server.log") as running:
        yield running


def response_head(connection: RawConnection) -> tuple[int, dict[str, str]]:
    """The next response's status and headers only (the answer to a HEAD)."""
    while b"\r\n\r\n" not in connection.buffer:
        chunk = connection._recv()
        assert chunk, "closed before the head"
        connection.buffer += chunk
    head, connection.buffer = connection.buffer.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


def test_pipelined_requests_are_answered_in_order_and_a_head_answer_has_no_body(server):
    connection = RawConnection(server.port)
    try:
        connection.send(HEALTH + b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                        + b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + HEALTH)
        first, second = connection.response(), connection.response()
        assert first is not None and first[0] == 200 and first[2] == b'{"status": "ok"}'
        assert second is not None and second[0] == 404 and second[1]["content-type"] == "application/problem+json"
        # HEAD: the headers of the GET (its length too) and no body, so the next answer is read cleanly.
        head_status, head_headers = response_head(connection)
        assert head_status == 200 and head_headers["content-length"] == str(len(b'{"status": "ok"}'))
        last = connection.response()
        assert last is not None and last[0] == 200 and last[2] == b'{"status": "ok"}'
    finally:
        connection.close()


def test_an_http_1_0_request_is_answered_and_the_connection_closed(server):
    connection = RawConnection(server.port)
    try:
        connection.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = connection.response()
        assert answer is not None and answer[0] == 200 and answer[1]["connection"] == "close"
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_a_client_expecting_100_continue_is_told_to_send_its_body(server):
    connection = RawConnection(server.port)
    try:
        body = b'{"host": "x"}'
        connection.send(b"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = connection.response()
        assert interim is not None and interim[0] == 100
        connection.send(body)
        final = connection.response()
        assert final is not None and final[0] == 401
    finally:
        connection.close()


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(server):
    connection = RawConnection(server.port)
    try:
        connection.send(HEALTH)
        connection.sock.shutdown(socket.SHUT_WR)
        answer = connection.response()
        assert answer is not None and answer[0] == 200
        assert connection.closed_by_server()
    finally:
        connection.close()
