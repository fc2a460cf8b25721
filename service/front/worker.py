"""A gunicorn worker whose front is an event loop: ``worker_class="service.front.worker.FrontWorker"``."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import ssl
import time
from typing import Any

from gunicorn.workers.base import Worker

from service.config import Config
from service.front.connection import Connection
from service.front.shared import Front, Limits
from service.front.pool import AppPool

#: File descriptors a worker keeps for itself (database, secret managers, logs) beside its clients.
RESERVED_FDS = 256


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def limits(config: Config, open_files: int) -> Limits:
    return Limits(
        header_timeout=config.header_timeout_seconds,
        body_min_bytes_per_second=config.body_min_bytes_per_second,
        keepalive_timeout=config.keepalive_timeout_seconds,
        request_timeout=config.request_timeout_seconds,
        write_timeout=config.write_timeout_seconds,
        max_connections=max(1, min(config.max_connections_per_worker, open_files - RESERVED_FDS)),
        # The app refuses per route; the front must never cut off a message the message routes accept.
        max_body_bytes=max(config.max_request_body_bytes, config.message_max_bytes + 64 * 1024),
    )


class FrontWorker(Worker):
    """gunicorn's master keeps its duties (replacing workers, SIGTERM, the timeout); the loop serves clients."""

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self._draining_since: float | None = None
        self.servers: list[asyncio.AbstractServer] = []
        # gunicorn's ``threads`` setting: how many requests run at once in this worker.
        self.pool = AppPool(self.wsgi, max(1, self.cfg.threads), loop, self._retire)
        config = Config.load()
        front = Front(loop, self.pool, limits(config, raise_open_file_limit()), self._tls if self.cfg.is_ssl else None)
        self.front = front
        self.servers = [
            loop.run_until_complete(
                loop.create_server(lambda: Connection(front), sock=listener.sock, backlog=self.cfg.backlog)
            )
            for listener in self.sockets
        ]
        loop.add_signal_handler(signal.SIGTERM, self._retire)
        loop.add_signal_handler(signal.SIGQUIT, loop.stop)
        loop.add_signal_handler(signal.SIGINT, loop.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        self._tick()
        # What the worker loaded lives as long as it does: kept out of the collector's way, so that a
        # full collection among thousands of held connections walks only what requests and clients made.
        gc.collect()
        gc.freeze()
        try:
            loop.run_forever()
        finally:
            self.pool.close()
            for server in self.servers:
                server.close()
            for connection in list(front.connections):
                connection.transport.abort()
            loop.close()

    def _tls(self) -> ssl.SSLContext:
        """The context for a new connection, from gunicorn's ``ssl_context`` hook.

        ``smtpconf serve``'s hook hands out the certificate reloader's current
        context, so a renewed certificate is served from the next handshake on.
        """
        from gunicorn.sock import ssl_context

        return ssl_context(self.cfg)

    def _tick(self) -> None:
        """Once a second: tell the master this worker lives, date the responses, see whether to stop."""
        self.notify()
        front = self.front
        front.clock.tick()
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
        if not self.alive and self._draining_since is None:
            self._drain()
        if self._draining_since is not None:
            over = time.monotonic() - self._draining_since > self.cfg.graceful_timeout
            # A connection the loop accepted just before draining is set up by a task of its own before it
            # joins ``front.connections``: stopping while such a task waits would reset that client.
            if over or not (front.connections or asyncio.all_tasks(self.loop)):
                self.loop.stop()
                return
        self.loop.call_later(1.0, self._tick)

    def _retire(self) -> None:
        """SIGTERM, or too many stuck requests: finish what is in flight, then exit (the master replaces it)."""
        self.alive = False
        if self._draining_since is None:
            self._drain()

    def _drain(self) -> None:
        self._draining_since = time.monotonic()
        # Stop accepting without closing the servers: a connection accepted in this same turn of the loop
        # is still being set up, and closing its server now would reset it. They close when the loop ends.
        for server in self.servers:
            for sock in server.sockets:
                self.loop.remove_reader(sock.fileno())
        self.front.drain()
