"""Workers replaced one after another under a stream of new connections: no client is reset or refused."""

from __future__ import annotations

import os
import signal
import threading
import time

import requests

from tests.conftest import MASTER_KEY
from tests.faults import worker_pids
from tests.fixtures.server import RunningService, service_env

CLIENTS = 4
REPLACEMENTS = 12


def test_a_worker_told_to_stop_answers_every_connection_it_accepted(tmp_path):
    # Each request is a new connection: a worker stopping meanwhile may have accepted one in the same turn
    # of its loop as the SIGTERM. That connection must be answered, not reset as the worker exits.
    env = service_env(f"sqlite:///{tmp_path / 'smtpconf.db'}", MASTER_KEY)
    with RunningService(env, workers=2, log_path=tmp_path / "server.log") as server:
        stop = threading.Event()
        outcomes: list[object] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    response = requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=10)
                    outcomes.append(response.status_code)
                except requests.RequestException as exc:
                    outcomes.append(repr(exc))

        def wait_for(condition, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, "timed out"
                time.sleep(0.02)

        threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            for round_ in range(REPLACEMENTS):
                wait_for(lambda: len(worker_pids(server.process.pid)) == 2)
                victim = sorted(worker_pids(server.process.pid))[round_ % 2]
                os.kill(victim, signal.SIGTERM)
                wait_for(lambda: victim not in worker_pids(server.process.pid) and len(worker_pids(server.process.pid)) == 2)
                served = len(outcomes)
                wait_for(lambda: len(outcomes) >= served + 50)  # the new worker is serving before the next one goes
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
    failures = [outcome for outcome in outcomes if outcome != 200]
    assert not failures, failures[:5]
    assert len(outcomes) >= REPLACEMENTS * 50
