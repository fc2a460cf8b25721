"""What a worker's connections share: the limits, the app pool, the open connections, the clock, the body budget."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from typing import Any, Callable

from service.front import responses
from service.front.pool import AppPool

#: Bytes of request bodies a worker holds in memory at most, all connections together (at least one whole body).
BODY_BUDGET_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long and how much a client may take (``SMTPCONF_*``, see ``service.config``)."""

    header_timeout: float
    body_min_bytes_per_second: float
    keepalive_timeout: float
    request_timeout: float
    write_timeout: float
    max_connections: int
    max_body_bytes: int


class Front:
    """What a worker's connections share: the app pool, the limits, the open connections, the clock."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: AppPool, limits: Limits,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.loop = loop
        self.pool = pool
        self.limits = limits
        #: The TLS context for a new connection, or None for plain HTTP.
        self.tls = tls
        self.scheme = "http" if tls is None else "https"
        self.connections: set[Any] = set()
        self.clock = responses.Clock()
        self.draining = False
        self.buffered = 0
        self.body_budget = max(BODY_BUDGET_BYTES, limits.max_body_bytes)

    def hold(self, size: int) -> bool:
        """Take ``size`` more bytes of body into memory, unless that would pass the budget."""
        if self.buffered + size > self.body_budget:
            return False
        self.buffered += size
        return True

    def drain(self) -> None:
        """Stop taking requests: idle connections close now, the others after their response."""
        self.draining = True
        for connection in list(self.connections):
            if connection.idle():
                connection.close()
