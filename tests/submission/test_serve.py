"""``smtpconf serve`` with SMTPCONF_SUBMISSION_BIND runs the submission server beside the HTTP workers: it relays,
its messages are counted in /metrics, it is started again when it dies, and it stops with serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import trustme

from tests.conftest import MASTER_KEY
from tests.fixtures.server import RunningService, free_port
from tests.submission.harness import LOOPBACK, submission_env, write_certificate
from tests.submission.test_relay import legacy_message, starttls_settings


def listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.settimeout(5)
            return sock.recv(4).startswith(b"220")
    except OSError:
        return False


def wait_until(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def submission_child(serve_pid: int) -> int:
    for pid in children(serve_pid):
        if b"submission" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no submission child")


@pytest.fixture
def served(tmp_path, smtp_ca, starttls_smtp_server):
    port = free_port()
    cert = write_certificate(smtp_ca, tmp_path, "localhost", LOOPBACK)
    env = submission_env(
        f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, cert,
        SMTPCONF_SUBMISSION_BIND=f"{LOOPBACK}:{port}", SMTPCONF_SMTP_ALLOWED_PORTS=str(starttls_smtp_server.port),
    )
    env.pop("SMTPCONF_TLS_CERT_FILE")  # the HTTP side in plain HTTP; the submission server needs none on loopback
    env.pop("SMTPCONF_TLS_KEY_FILE")
    with RunningService(env, workers=1, log_path=tmp_path / "serve.log") as service:
        wait_until(lambda: listening(port))
        yield service, port


def test_serve_runs_the_submission_server_and_counts_its_messages(served, smtp_ca_pem, starttls_smtp_server):
    import smtplib

    service, port = served
    admin = {"Authorization": f"Bearer {service.token('ops-admin', 'admin')}"}
    settings = starttls_settings(starttls_smtp_server, smtp_ca_pem)
    assert requests.put(service.url + "/v1/smtp", json=settings, headers=admin, timeout=10).status_code == 200
    token = service.token("legacy-printer", "sender")
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.login("*", token)
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
    assert len(starttls_smtp_server.messages) == 1
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert 'smtpconf_messages_total{channel="smtp",outcome="sent"} 1.0' in metrics


def test_a_submission_server_that_dies_is_started_again_and_stops_with_serve(served):
    service, port = served
    first = submission_child(service.process.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not listening(port), 10)
    wait_until(lambda: listening(port))
    second = submission_child(service.process.pid)
    assert second != first
    service.stop()
    wait_until(lambda: gone(second), 40)
    assert not listening(port)


def test_submission_alone_refuses_to_start_without_a_bind(tmp_path):
    env = submission_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, write_certificate(
        trustme.CA(), tmp_path, "localhost"))
    done = subprocess.run([sys.executable, "-m", "service.cli", "submission"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "SMTPCONF_SUBMISSION_BIND" in done.stderr


def test_dev_starts_a_submission_server_and_says_how_to_send_to_it(tmp_path):
    import smtplib

    from service.cli import DEV_SUBMISSION_BIND

    assert DEV_SUBMISSION_BIND == "127.0.0.1:2525"
    port = free_port()
    env = submission_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY, write_certificate(
        trustme.CA(), tmp_path, "localhost"), SMTPCONF_SUBMISSION_BIND=f"{LOOPBACK}:{port}")
    env.pop("SMTPCONF_TLS_CERT_FILE")
    env.pop("SMTPCONF_TLS_KEY_FILE")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", "--bind", f"{LOOPBACK}:{free_port()}"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("serving on"):
                break
        output = "".join(lines)
        mailer = next(line.split(": ")[-1].strip() for line in lines if line.startswith("mailer token"))
        assert f"swaks --server {LOOPBACK} --port {port} --auth PLAIN --auth-user '*' --auth-password {mailer}" in output
        wait_until(lambda: listening(port))
        with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
            assert client.login("*", mailer)[0] == 235
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=40)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["serve-stopped", "serve-killed"])
def test_the_submission_server_does_not_outlive_serve(served, signum):
    service, port = served
    child = submission_child(service.process.pid)
    # Only the serve process is signalled: on SIGTERM it stops its child; killed, the child notices by itself.
    os.kill(service.process.pid, signum)
    wait_until(lambda: gone(child), 40)
    wait_until(lambda: not listening(port), 10)


@pytest.mark.parametrize("whole_group", [False, True], ids=["serve-signalled", "process-group-signalled"])
def test_serve_stops_promptly_and_does_not_start_the_submission_server_again_on_the_way_out(served, whole_group):
    # SIGTERM to serve alone (a service manager's main-process kill), or to its whole process group (a
    # terminal's Ctrl-C, a control-group kill). The HTTP workers are forked from serve: one must not stop the
    # submission server and then wait for a process that is not its child, held until gunicorn kills it at the
    # 10 s graceful limit; and a submission server that stopped on the same signal is not started again.
    service, port = served
    assert listening(port)
    child = submission_child(service.process.pid)
    began = time.monotonic()
    if whole_group:
        os.killpg(service.process.pid, signal.SIGTERM)
    else:
        os.kill(service.process.pid, signal.SIGTERM)
    service.process.wait(timeout=40)
    took = time.monotonic() - began
    log = service.log_path.read_text(errors="replace")
    assert "starting it again" not in log
    assert log.count('"submission server stopping"') == 1
    assert gone(child)
    assert took < 8, f"serve took {took:.1f} s to stop: a worker was held to the graceful limit"
