"""Fault tests on the real server (``smtpconf serve`` under gunicorn), and the helpers they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


def worker_pids(master_pid: int) -> set[int]:
    """The gunicorn workers: the children of the master process (read from /proc)."""
    children: set[int] = set()
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        try:
            children.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended while we looked
    return children


def audit_events(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The whole audit trail, oldest first, following ``next_before`` from page to page."""
    events: list[dict[str, Any]] = []
    query = "limit=500"
    for _ in range(1000):
        page = requests.get(f"{url}/v1/audit?{query}", headers=headers, timeout=10)
        assert page.status_code == 200, page.text
        body = page.json()
        events += body["items"]
        if body["next_before"] is None:
            return events[::-1]
        query = f"limit=500&before={body['next_before']}"
    raise AssertionError("the audit trail did not end after 1000 pages")
