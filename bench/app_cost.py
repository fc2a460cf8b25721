"""The application's own cost per request, without any server: the service's routes against a bare Flask app.

Run from the project root: ``python bench/app_cost.py [--profile PATH]``. Each
request is built as the front builds it and run through the WSGI app in this
process (metrics in multiprocess mode and JSON request logs to a file, as under
``smtpconf serve``); the figure is the process's CPU time per request, best of
several rounds (steadier than wall-clock time on a shared machine). With ``--profile``, the cProfile of the route is printed,
top 30 by cumulative time.
"""

from __future__ import annotations

import base64
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUNDS = 5
REQUESTS = 2000


def environ_for(path: str, headers: dict[str, str]) -> Callable[[], dict[str, Any]]:
    from service.front.request import Request, build_environ

    base = {
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
        "SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.input_terminated": True,
    }
    request = Request()
    request.method, request.url = b"GET", path.encode()
    request.headers = [(b"Host", b"127.0.0.1:8080")] + [(k.encode(), v.encode()) for k, v in headers.items()]
    return lambda: build_environ(base, request)


def per_request_us(app: Any, make: Callable[[], dict[str, Any]], expect: str) -> float:
    from service.front.pool import call

    status = call(app, make())[0]
    assert status.startswith(expect), status
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(REQUESTS):
            call(app, make())
        best = min(best, (time.process_time() - started) / REQUESTS * 1e6)
    return best


def main() -> None:
    profile_path = sys.argv[2] if len(sys.argv) == 3 and sys.argv[1] == "--profile" else None
    workdir = Path(tempfile.mkdtemp(prefix="smtpconf-app-cost-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir)
    os.environ["SMTPCONF_DATABASE_URL"] = f"sqlite:///{workdir / 'smtpconf.db'}"
    os.environ["SMTPCONF_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    from service.db import Database
    from service.tokens import create_token

    Database(os.environ["SMTPCONF_DATABASE_URL"]).upgrade()
    db = Database(os.environ["SMTPCONF_DATABASE_URL"])
    admin = create_token(db, "cost-admin", ["admin"])
    security = create_token(db, "cost-security", ["security"])
    sender = create_token(db, "cost-sender", ["secret-reader"])
    db.dispose()
    log = open(workdir / "requests.log", "w")
    sys.stderr = log  # the JSON request log is written, as in production, but not onto the terminal
    from bench.bare_flask import app as bare_app
    from service.app import create_app
    from service.front.pool import call

    app = create_app()
    # The password from the internal store: held in memory once read, as a secret manager's would be.
    for path, token, body in (
        ("/v1/secrets/smtp/relay", security, b'{"value": "relay-password"}'),
        ("/v1/smtp", admin, b'{"host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com",'
                            b' "username": "m", "password": {"source": "internal", "secret": "smtp/relay"}}'),
        ("/v1/tenants/t-1/smtp", admin, b'{"from_name": "Tenant 1"}'),
    ):
        put = environ_for(path, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})()
        put.update(REQUEST_METHOD="PUT", CONTENT_LENGTH=str(len(body)), **{"wsgi.input": io.BytesIO(body)})
        answer = call(app, put)
        assert answer[0][:3] in ("200", "201"), answer
    effective = environ_for("/v1/smtp/effective?include_password=true", {"Authorization": f"Bearer {sender}"})
    if profile_path is not None:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(REQUESTS):
            call(app, effective())
        profile.disable()
        profile.dump_stats(profile_path)
        pstats.Stats(profile, stream=sys.__stdout__).sort_stats("cumulative").print_stats(30)
        return
    figures = {
        "bare Flask {status: ok}": per_request_us(bare_app, environ_for("/healthz", {}), "200"),
        "service /healthz": per_request_us(app, environ_for("/healthz", {}), "200"),
        "service effective + password": per_request_us(app, effective, "200"),
        "service tenant's, + password": per_request_us(app, environ_for(
            "/v1/tenants/t-1/smtp/effective?include_password=true", {"Authorization": f"Bearer {sender}"}), "200"),
    }
    bare = figures["bare Flask {status: ok}"]
    for name, value in figures.items():
        print(f"{name:<32} {value:8.1f} us CPU/request  {value / bare:5.2f}x bare Flask", file=sys.__stdout__)


if __name__ == "__main__":
    main()
