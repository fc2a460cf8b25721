"""Every benchmark, one table at the end: ``python bench/run.py`` from the project root (``make bench``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    http_service,
    propagation,
    serving_stacks,
    slow_clients,
    smtp_check_vs_smtplib,
    submission,
    warmup,
    xoauth2_vs_smtplib,
)
from bench.harness import print_table, require_wrk

SMTP_ROUNDS = 100
#: Seconds of load with each TTL in the warm-up benchmark.
WARMUP_LOAD_SECONDS = 30


def main() -> int:
    require_wrk()
    started = time.monotonic()
    # The check engine first: its SMTP server process is forked before any thread starts.
    figures = smtp_check_vs_smtplib.measure(SMTP_ROUNDS)
    figures += xoauth2_vs_smtplib.measure(SMTP_ROUNDS)
    figures += submission.measure()
    figures += http_service.measure()
    figures += serving_stacks.measure()
    figures += slow_clients.measure()
    figures += propagation.figures(50)
    figures += warmup.measure(WARMUP_LOAD_SECONDS)
    print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s on loopback; other work on the machine "
          "only worsens them (load runs take each endpoint's best run, check timings the median)")
    print_table(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
