"""The ``smtpconf`` command: serve, db upgrade, token create, rotate-master-key, dev."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from service.config import Config, ConfigError

DEV_KEY_FILE = Path("var") / "dev-master.key"


def _services() -> Any:
    from service.app import build_services

    return build_services(Config.load())


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from service.db import Database

    Database(Config.load().database_url).upgrade()
    print("database schema is up to date")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from service.db import Database
    from service.tokens import TokenError, create_token

    db = Database(Config.load().database_url)
    db.upgrade()
    try:
        token = create_token(db, args.name, args.role, tenants=args.tenant)
    except TokenError as exc:
        print(f"smtpconf: {exc}", file=sys.stderr)
        return 2
    limited = f", for tenant(s) {', '.join(sorted(set(args.tenant)))}" if args.tenant else ""
    print(f"token {args.name!r} with role(s) {', '.join(sorted(set(args.role)))}{limited}; it is shown once:")
    print(token)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.crypto import KeyRing

    config = Config.load()
    KeyRing.from_config(config)  # refuse to start without a usable master key
    if not _upgrade_in_child(config.database_url):
        print("smtpconf: the database could not be migrated", file=sys.stderr)
        return 1
    run_gunicorn(args.bind, args.workers, tls=_tls_files(config))
    return 0


def _tls_files(config: Config) -> Any:
    """The served certificate, loaded once here (a pair that does not load stops the start), or None."""
    if not config.tls_cert_file or not config.tls_key_file:
        return None
    import ssl

    from service.transport import CertificateReloader

    try:
        return CertificateReloader(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"SMTPCONF_TLS_CERT_FILE / SMTPCONF_TLS_KEY_FILE do not load: {exc}") from None


def _upgrade_in_child(database_url: str) -> bool:
    """Migrate the schema in a forked child; whether it succeeded.

    The gunicorn master forks every worker, and a worker's resident memory
    counts the pages it inherited: migrating in the master would leave Alembic
    and an engine in each of them.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from service.db import Database

            Database(database_url).upgrade()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Run on the embedded default with a generated development key and printed tokens."""
    from service.crypto import generate_key_text
    from service.db import Database
    from service.tokens import create_token

    if not os.environ.get("SMTPCONF_MASTER_KEY") and not os.environ.get("SMTPCONF_MASTER_KEY_FILE"):
        key_file = DEV_KEY_FILE.resolve()
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key_text() + "\n")
            banner = "GENERATED a development master key"
        else:
            banner = "USING the development master key"
        os.environ["SMTPCONF_MASTER_KEY_FILE"] = str(key_file)
        line = "!" * 78
        print(
            f"{line}\n!! {banner} at {key_file} (mode 0600).\n"
            "!! For development only: production sets SMTPCONF_MASTER_KEY or SMTPCONF_MASTER_KEY_FILE.\n"
            f"!! Losing this file loses every stored password.\n{line}",
            file=sys.stderr,
        )
    config = Config.load()
    db = Database(config.database_url)
    db.upgrade()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"database: {config.database_url}")
    for name, roles in (("admin", ["admin"]), ("security", ["security"]), ("sender", ["secret-reader", "reader"])):
        token = create_token(db, f"dev-{name}-{stamp}", roles)
        print(f"{name + ' token':<16} ({', '.join(roles)}): {token}")
    tls = _tls_files(config)
    print(f"serving on http{'s' if tls else ''}://{args.bind}  (Ctrl-C stops)", flush=True)
    run_gunicorn(args.bind, args.workers, tls=tls)
    return 0


def cmd_rotate_master_key(_args: argparse.Namespace) -> int:
    from service.rotation import rotate_master_key

    services = _services()
    counts = rotate_master_key(services.db, services.keyring)
    print(
        f"re-encrypted {counts['secrets']} secret version(s) and {counts['passwords']} plaintext password(s) "
        f"under key {services.keyring.primary_id}; keys no longer in use can now be removed"
    )
    return 0


def run_gunicorn(bind: str, workers: int, tls: Any = None) -> None:
    """Serve ``service.wsgi:app`` under gunicorn, metrics aggregated across workers; HTTPS with ``tls``
    (a ``CertificateReloader``)."""
    from gunicorn.app.base import BaseApplication

    global _reloader
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="smtpconf-metrics-")
    _reloader = tls
    if not os.environ.get("SMTPCONF_GENERATIONS_FILE") and not Config.load().database_url.startswith("sqlite"):
        from service.propagation import Board

        # Created before any worker starts, and found by every worker through the
        # environment however gunicorn starts them (fork, re-exec on upgrade).
        # A SQLite database keeps its board next to the file instead, shared by
        # every process on that file.
        os.environ["SMTPCONF_GENERATIONS_FILE"] = str(Board.create_for_instance())

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", [bind])
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 8)
            self.cfg.set("timeout", 150)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("child_exit", child_exit)
            self.cfg.set("accesslog", None)
            if tls:
                self.cfg.set("certfile", tls.certfile)
                self.cfg.set("keyfile", tls.keyfile)
                self.cfg.set("ssl_context", _reloading_ssl_context)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 27's control socket sits at one path per user, shared
                # by every instance the user starts; the service does not use it.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            from service.wsgi import app

            _honour_connection_close()
            return app

    Server().run()


#: Loaded in the master before the workers fork, so that a worker started while a
#: renewal is half-written still has the last pair that loaded.
_reloader: Any = None


def _reloading_ssl_context(_conf: Any, _default_factory: Any) -> Any:
    """gunicorn asks for a context per connection: the current one, renewed when the files change."""
    return _reloader.context()


def _honour_connection_close() -> None:
    """Make gunicorn close the connection when the application answers ``Connection: close``.

    gunicorn drops hop-by-hop headers from the application and would announce
    keep-alive, then close anyway when a large unread body is left (see
    ``service.body_drain``): the client's next request on that connection fails.
    """
    from gunicorn.http import wsgi

    if getattr(wsgi.Response, "honours_connection_close", False):
        return

    class Response(wsgi.Response):  # type: ignore[misc,valid-type]
        honours_connection_close = True

        def process_headers(self, headers: list[tuple[str, str]]) -> None:
            super().process_headers(headers)
            if any(k.lower() == "connection" and v.strip().lower() == "close" for k, v in headers):
                self.force_close()

    wsgi.Response = Response


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="smtpconf", description="SMTP settings service")
    sub = top.add_subparsers(dest="command", required=True)

    for name, handler, text in (
        ("serve", cmd_serve, "run the service under gunicorn"),
        ("dev", cmd_dev, "run on SQLite with a generated development key and printed tokens"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
        p.add_argument("--workers", type=int, default=2 if name == "serve" else 1, help="gunicorn worker processes")
        p.set_defaults(handler=handler)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or migrate the schema").set_defaults(handler=cmd_db_upgrade)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="create a token and print it (last line)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", action="append", required=True, help="admin, reader, secret-reader, security or sender")
    create.add_argument(
        "--tenant", action="append", default=None, help="restrict the token to this tenant (repeatable; default: unrestricted)"
    )
    create.set_defaults(handler=cmd_token_create)

    sub.add_parser("rotate-master-key", help="re-encrypt stored secrets under the first master key").set_defaults(
        handler=cmd_rotate_master_key
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"smtpconf: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
