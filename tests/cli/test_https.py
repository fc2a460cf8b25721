"""HTTPS served by ``smtpconf serve`` itself, with a renewed certificate picked up under load."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from cryptography import x509

from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS
from tests.fixtures.server import RunningService, service_env


def write_pair(ca: trustme.CA, directory: Path, name: str) -> tuple[Path, Path, int]:
    """A new certificate and key for 127.0.0.1, written beside the served ones; its serial number."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    serial = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number
    return cert, key, serial


def served_serial(port: int, ca_file: str) -> int:
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def workers_of(server: RunningService) -> list[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.fixture
def tls_service(tmp_path: Path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key, serial = write_pair(ca, tmp_path, "first")
    served_cert, served_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    os.replace(cert, served_cert)
    os.replace(key, served_key)
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY,
        SMTPCONF_TLS_CERT_FILE=str(served_cert), SMTPCONF_TLS_KEY_FILE=str(served_key),
    )
    with RunningService(env, workers=2, log_path=tmp_path / "server.log", verify=str(ca_file)) as server:
        yield {"server": server, "ca": ca, "ca_file": str(ca_file), "dir": tmp_path, "serial": serial,
               "cert": served_cert, "key": served_key}


def test_the_password_is_served_over_https_with_the_configured_certificate(tls_service):
    server = tls_service["server"]
    admin = {"Authorization": f"Bearer {server.token('tls-admin', 'admin')}"}
    sender = {"Authorization": f"Bearer {server.token('tls-sender', 'secret-reader')}"}
    assert requests.put(server.url + "/v1/smtp", json=SYSTEM_SETTINGS, headers=admin, verify=server.verify, timeout=10).ok
    response = requests.get(server.url + "/v1/smtp/effective?include_password=true", headers=sender,
                            verify=server.verify, timeout=10)
    assert response.status_code == 200 and response.json()["password"] == "initial-password"
    assert served_serial(server.port, tls_service["ca_file"]) == tls_service["serial"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/healthz", timeout=10)  # the system store does not know the private CA


def test_a_renewed_certificate_is_picked_up_under_load_without_a_failed_request(tls_service):
    server, ca_file = tls_service["server"], tls_service["ca_file"]
    stop = threading.Event()
    outcomes: list[Any] = []

    def load() -> None:
        while not stop.is_set():
            try:
                # A new connection each time: each one is a new handshake with the current certificate.
                response = requests.get(server.url + "/healthz", headers={"Connection": "close"},
                                        verify=ca_file, timeout=10)
                outcomes.append(response.status_code)
            except requests.RequestException as exc:
                outcomes.append(repr(exc))

    def wait_for(condition, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 20)
        new_cert, new_key, new_serial = write_pair(tls_service["ca"], tls_service["dir"], "renewed")
        # The certificate lands first and the key a moment later, as a renewal that writes
        # file by file does: in between, the pair does not match and must not be served.
        os.replace(new_cert, tls_service["cert"])
        mismatch_started = time.monotonic()
        # A worker that starts meanwhile (here: each one is replaced) still serves the last pair that loaded.
        for worker in workers_of(server):
            os.kill(worker, signal.SIGTERM)
            wait_for(lambda: worker not in workers_of(server) and len(workers_of(server)) == 2)
        served_during_mismatch = len(outcomes)
        wait_for(lambda: time.monotonic() - mismatch_started > 1.5 and len(outcomes) > served_during_mismatch + 20)
        os.replace(new_key, tls_service["key"])
        wait_for(lambda: served_serial(server.port, ca_file) == new_serial)
        after_renewal = len(outcomes)
        wait_for(lambda: len(outcomes) >= after_renewal + 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    failures = [outcome for outcome in outcomes if outcome != 200]
    assert not failures, failures[:5]
    assert len(outcomes) >= 60


def test_a_certificate_that_does_not_load_stops_the_service_from_starting(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.crt").write_text("not a certificate")
    (tmp_path / "bad.key").write_text("not a key")
    env = service_env(
        f"sqlite:///{tmp_path / 'x.db'}", MASTER_KEY,
        SMTPCONF_TLS_CERT_FILE=str(tmp_path / "bad.crt"), SMTPCONF_TLS_KEY_FILE=str(tmp_path / "bad.key"),
    )
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--bind", "127.0.0.1:1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "SMTPCONF_TLS_CERT_FILE" in done.stderr


def test_failed_and_stalled_handshakes_are_closed_and_do_not_hold_connection_slots(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key, _ = write_pair(ca, tmp_path, "served")
    env = service_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, SMTPCONF_TLS_CERT_FILE=str(cert),
        SMTPCONF_TLS_KEY_FILE=str(key), SMTPCONF_MAX_CONNECTIONS_PER_WORKER="6", SMTPCONF_HEADER_TIMEOUT_SECONDS="1",
    )
    with RunningService(env, workers=1, log_path=tmp_path / "server.log", verify=str(ca_file)) as server:
        # Six connections speak plain HTTP to the TLS port, six say nothing at all: each holds a slot for a while.
        plain = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(6)]
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(6)]
        try:
            for sock in plain:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for sock in plain + silent:  # closed by the server: the failed handshake at once, the silent at the deadline
                try:
                    assert sock.recv(65536) == b""
                except ConnectionResetError:
                    pass
            for _ in range(12):
                response = requests.get(server.url + "/healthz", headers={"Connection": "close"}, verify=str(ca_file),
                                        timeout=10)
                assert response.status_code == 200
        finally:
            for sock in plain + silent:
                sock.close()


def test_a_stopping_service_does_not_wait_on_an_idle_tls_client_that_never_reads(tls_service):
    # A keep-alive client idle in its pool reads nothing, so it never answers the server's close_notify. The
    # worker's drain must not hold on it until the master's graceful limit (10 s) kills the worker.
    server, ca_file = tls_service["server"], tls_service["ca_file"]
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            began = time.monotonic()
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=40)
            took = time.monotonic() - began
    assert took < 8, f"the service took {took:.1f} s to stop: a worker was held to the graceful limit"
