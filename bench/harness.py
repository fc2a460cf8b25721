"""What the benchmarks share: the wrk load generator, a loopback SMTP server process, worker memory, the result table."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import trustme

from tests.fixtures.smtp_servers import start_starttls_smtp_server

#: Prints one JSON line when wrk finishes: totals and latency percentiles in microseconds.
_WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "bad_status": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclasses.dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int


@dataclasses.dataclass(frozen=True)
class Figure:
    """One line of the final table."""

    name: str
    value: float
    goal: str
    met: bool | None
    detail: str
    fmt: str = "{:.2f}"

    def cells(self) -> list[str]:
        verdict = {True: "yes", False: "NO", None: "-"}[self.met]
        return [self.name, self.fmt.format(self.value), self.goal, verdict, self.detail]


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: run ./scripts/bench (it installs the Debian package as root).")
    return found


def wrk(
    url: str,
    *,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
    request_lua: str = "",
) -> Load:
    """Load ``url`` for ``seconds`` over ``connections`` keep-alive connections (one wrk thread)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(request_lua + _WRK_REPORT)
    argv = [require_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", script.name]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    try:
        done = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 30, check=True)
    finally:
        os.unlink(script.name)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        requests=report["requests"],
        rps=report["requests"] / (report["duration_us"] / 1e6),
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        failures=report["socket_errors"] + report["bad_status"],
    )


def checked(load: Load, what: str) -> Load:
    """A run with failed requests measured the wrong thing: stop rather than print a figure."""
    if load.failures or not load.requests:
        raise SystemExit(f"{what}: {load.failures} of {load.requests} requests failed under load")
    return load


def interleaved_medians(first: Callable[[], object], second: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall times in ms, alternating the two so that drift on a busy machine weighs on both alike."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for function, taken in zip((first, second), samples):
            started = time.perf_counter()
            function()
            taken.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _serve_smtp(ca: trustme.CA, channel: Connection) -> None:
    server = start_starttls_smtp_server(ca)
    channel.send(server.port)
    channel.recv()
    server.stop()


@contextmanager
def smtp_server_process(ca: trustme.CA) -> Iterator[int]:
    """A STARTTLS+AUTH aiosmtpd server in a child process, as a real one would be; yields its port."""
    channel, child_channel = multiprocessing.Pipe()
    # fork hands the CA object to the child as is; the caller has started no threads yet.
    child = multiprocessing.get_context("fork").Process(target=_serve_smtp, args=(ca, child_channel), daemon=True)
    child.start()
    try:
        if not channel.poll(10):
            raise SystemExit("The SMTP server process did not start.")
        yield channel.recv()
    finally:
        channel.send("stop")
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: the children of the master process."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def print_table(figures: list[Figure]) -> None:
    header = ["figure", "measured", "goal", "met", "detail"]
    rows = [header] + [f.cells() for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    for index, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
        if index == 0:
            print(line)
    print(line)
