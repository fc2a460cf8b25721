"""Slow and idle clients against the server: the p99 of ordinary requests while they hold their connections.

Run from the project root: ``python bench/slow_clients.py``. On loopback,
against ``smtpconf serve`` (2 workers, its own front) and, for contrast, plain
``gunicorn service.wsgi:app`` (2 gthread workers, 8 threads, what the service
ran before): first quiet, then while a separate process holds 300 connections
trickling their headers (a byte every 2 s, reconnecting when closed), 300
trickling a body (``Content-Length: 60000``, a byte every 2 s) and 10,000 idle
keep-alive connections (each has made one request). The ordinary requests are
wrk's: ``/healthz`` and the effective settings with the password, 4
connections. Goal: p99 under 50 ms with no timeout.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench.harness import Figure, Load, print_table, rss_mb, worker_pids, wrk
from tests.fixtures.server import RunningService, free_port, service_env

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
WORKERS = 2
TRICKLING_HEADERS = 300
TRICKLING_BODIES = 300
IDLE = 10_000
TRICKLE_SECONDS = 2.0
SECONDS = 10
CONNECTIONS = 4
P99_GOAL_MS = 50.0
EFFECTIVE = "/v1/smtp/effective?include_password=true"


# -- the slow clients (run in a child process: ``python bench/slow_clients.py --hold PORT``) -------------


async def _trickle(port: int, request: bytes, stop: asyncio.Event) -> None:
    """One connection sending ``request`` a byte every ``TRICKLE_SECONDS``; a new one when the server closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(TRICKLE_SECONDS)
            continue
        try:
            for position in range(len(request)):
                writer.write(request[position : position + 1])
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(65536), TRICKLE_SECONDS)
                    break  # answered (408) or closed: start over
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    break
        except OSError:
            pass
        finally:
            writer.close()


async def _idle(port: int, held: list[asyncio.StreamWriter]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b'{"status": "ok"}')
    held.append(writer)


async def _hold(port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = asyncio.Event()
    held: list[asyncio.StreamWriter] = []
    refused = 0
    for start in range(0, IDLE, 500):
        outcomes = await asyncio.gather(*(_idle(port, held) for _ in range(start, min(IDLE, start + 500))),
                                        return_exceptions=True)
        refused += sum(isinstance(outcome, BaseException) for outcome in outcomes)
    headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"s" * 400 + b"\r\n\r\n"
    body = b"PUT /v1/smtp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\n" + b" " * 60000
    # The body's connections send their headers at once, then trickle.
    tasks = [asyncio.ensure_future(_trickle(port, headers, stop)) for _ in range(TRICKLING_HEADERS)]
    tasks += [asyncio.ensure_future(_trickle_body(port, body, stop)) for _ in range(TRICKLING_BODIES)]
    print(f"holding {len(held)} idle ({refused} not opened), {len(tasks)} trickling", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    stop.set()
    for writer in held:
        writer.close()
    for task in tasks:
        task.cancel()


async def _trickle_body(port: int, request: bytes, stop: asyncio.Event) -> None:
    head, _, body = request.partition(b"\r\n\r\n")
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(TRICKLE_SECONDS)
            continue
        try:
            writer.write(head + b"\r\n\r\n")
            for position in range(len(body)):
                writer.write(body[position : position + 1])
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(65536), TRICKLE_SECONDS)
                    break
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    break
        except OSError:
            pass
        finally:
            writer.close()


# -- the measurement --------------------------------------------------------------------------------------


class PlainGunicorn:
    """``gunicorn service.wsgi:app`` as someone running it themselves would (gthread, 8 threads)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "plain-gunicorn.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-k", "gthread", "--threads", "8",
             "-b", f"127.0.0.1:{self.port}", "--no-control-socket", "service.wsgi:app"],
            env={**env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="smtpconf-metrics-")},
            stdout=self.log, stderr=self.log, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise SystemExit("gunicorn did not become healthy")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        self.log.close()


def ordinary(url: str, sender: dict[str, str]) -> tuple[Load, Load]:
    return (wrk(url + "/healthz", seconds=SECONDS, connections=CONNECTIONS),
            wrk(url + EFFECTIVE, seconds=SECONDS, connections=CONNECTIONS, headers=sender))


def figures(name: str, label: str, loads: tuple[Load, Load]) -> list[Figure]:
    out = []
    for path, load in zip(("/healthz", "effective+password"), loads):
        # wrk reports no latency for requests never answered: none answered is a failure, not a p99 of 0.
        met = bool(load.requests) and load.p99_ms < P99_GOAL_MS and not load.failures
        out.append(Figure(f"{name}, {label}: {path} p99 ms", load.p99_ms, f"< {P99_GOAL_MS:.0f}", met,
                          f"{load.requests} answered ({load.rps:.0f} req/s), {load.failures} failed or timed out",
                          "{:.2f}"))
    return out


def measure() -> list[Figure]:
    table: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="smtpconf-slow-") as tmp:
        workdir = Path(tmp)
        env = service_env(f"sqlite:///{workdir / 'smtpconf.db'}", MASTER_KEY)
        served = RunningService(env, workers=WORKERS, log_path=workdir / "serve.log")
        try:
            admin = {"Authorization": f"Bearer {served.token('bench-admin', 'admin')}"}
            sender = {"Authorization": f"Bearer {served.token('bench-sender', 'secret-reader')}"}
            requests.put(served.url + "/v1/smtp", headers=admin, timeout=30, json={
                "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "mailer",
                "password": {"source": "plaintext", "value": "bench-password"},
            }).raise_for_status()
            plain = PlainGunicorn(env, workdir)
            try:
                for name, url, port in (("smtpconf serve", served.url, served.port),
                                        ("plain gunicorn gthread", plain.url, plain.port)):
                    table += figures(name, "quiet", ordinary(url, sender))
                    holder = subprocess.Popen([sys.executable, __file__, "--hold", str(port)], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True)
                    assert holder.stdout is not None and holder.stdin is not None
                    ready = holder.stdout.readline().strip()
                    time.sleep(TRICKLE_SECONDS * 2)  # every trickling connection open and under way
                    table += figures(name, "slow clients", ordinary(url, sender))
                    if name == "smtpconf serve":
                        table.append(Figure(
                            "smtpconf serve: RSS of the biggest worker holding them (MB)",
                            max(rss_mb(pid) for pid in worker_pids(served.process.pid)), "-", None,
                            f"{WORKERS} workers", "{:.1f}"))
                    holder.stdin.close()
                    holder.wait(timeout=60)
                    table.append(Figure(f"{name}: the slow clients", 0, "-", None, ready, "{:.0f}"))
            finally:
                plain.stop()
        finally:
            served.stop()
    return table


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--hold":
        asyncio.run(_hold(int(sys.argv[2])))
        sys.exit(0)
    started = time.monotonic()
    result = measure()
    print(f"\nSlow clients on loopback ({TRICKLING_HEADERS} trickling headers, {TRICKLING_BODIES} trickling bodies, "
          f"{IDLE:,} idle keep-alives), wrk {CONNECTIONS} connections {SECONDS} s; {time.monotonic() - started:.0f} s")
    print_table(result)
