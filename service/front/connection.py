"""One client connection on the event loop: a whole request is read, within deadlines, before the app runs."""

from __future__ import annotations

import asyncio
import collections
import ssl
import sys
from typing import Any, Callable

import httptools

from service.front import responses
from service.front.pool import Answer, Job
from service.front.request import MAX_HEAD_BYTES, Request, build_environ
from service.front.shared import Front

#: How long a closing TLS connection waits for the client's close_notify before the socket is closed anyway.
#: A client idle in its keep-alive pool does not read, so asyncio's default (30 s) held every such connection,
#: its slot, and a stopping worker (until the master's graceful limit) that long.
TLS_SHUTDOWN_SECONDS = 2.0


class Connection(asyncio.Protocol):
    """HTTP/1.1 on one connection, requests answered in order; every wait on the client is bounded."""

    # Thousands are held at once (idle keep-alives): no per-instance dict.
    __slots__ = (
        "front", "transport", "parser", "request", "pending", "job", "timer", "job_timer", "write_timer",
        "window_size", "closing", "write_paused", "read_paused", "keepalive_wait", "eof", "keep_alive",
        "head_only", "base", "handshake", "early", "buffered", "job_size",
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: Any = None
        self.parser: Any = None
        self.request: Request | None = None
        self.pending: collections.deque[Request] = collections.deque()
        self.job: Job | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.job_timer: asyncio.TimerHandle | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.window_size = 0
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.keepalive_wait = False
        self.eof = False
        self.keep_alive = True
        self.head_only = False
        self.base: dict[str, Any] = {}
        self.handshake: asyncio.Task[None] | None = None
        self.early: list[bytes] = []
        #: Body bytes this connection holds (the request being read, those waiting, the one running).
        self.buffered = 0
        self.job_size = 0

    # -- the connection's life ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        front = self.front
        if len(front.connections) >= front.limits.max_connections:
            # Refused at once: a client waiting in a queue that will not move is worse off than told so
            # (a TLS client, before its handshake, is told by the connection closing).
            if front.tls is None:
                transport.write(responses.TOO_MANY_CONNECTIONS)
            transport.close()
            self.closing = True
            return
        front.connections.add(self)
        self._arm(front.limits.header_timeout, self._too_slow)
        if front.tls is None:
            self._ready(transport)
        else:
            # Nothing is read until the TLS layer is in place: a ClientHello read before would be lost to it.
            transport.pause_reading()
            self.handshake = front.loop.create_task(self._handshake(transport, front.tls()))

    async def _handshake(self, transport: Any, context: ssl.SSLContext) -> None:
        """TLS with the context picked for this connection (a renewed certificate from the next handshake on)."""
        try:
            secure = await self.front.loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=self.front.limits.header_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_SECONDS,
            )
        except Exception:  # not TLS, a refused or timed-out handshake, or aborted at the deadline: all the same end
            secure = None
        self.handshake = None
        if secure is None or self.closing:
            transport.abort()
            self.connection_lost(None)
            return
        self._ready(secure)

    def _ready(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        peer = transport.get_extra_info("peername") or ("", 0)
        own = transport.get_extra_info("sockname") or ("", 0)
        self.base = {
            "REMOTE_ADDR": str(peer[0]), "REMOTE_PORT": str(peer[1]), "SERVER_NAME": str(own[0]),
            "SERVER_PORT": str(own[1]), "SCRIPT_NAME": "", "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.front.scheme, "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.input_terminated": True,
        }
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake is not None:
            return  # the handshake's own failure ends the connection
        self.closing = True
        self.front.connections.discard(self)
        for timer in (self.timer, self.job_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        # A request still running finishes on its thread; its answer has nowhere to go and is dropped.
        self.job = None
        self.front.buffered -= self.buffered
        self.buffered = 0

    def idle(self) -> bool:
        """Waiting for a next request after an answer (a new connection's first request is still awaited)."""
        return self.keepalive_wait and self.job is None and self.request is None and not self.pending

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.keepalive_wait = False
        self.timer = self.front.loop.call_later(delay, callback)

    def _too_slow(self) -> None:
        """Headers not complete within the deadline, or a body below the minimum rate: 408 and close."""
        if self.closing:
            return
        if self.parser is None:  # still in the TLS handshake
            self.closing = True
            self.transport.abort()
            return
        if self.job is None:
            self.transport.write(responses.TOO_SLOW)
        self.close()

    def _answer_and_close(self, response: bytes) -> None:
        if self.job is None and not self.pending:
            self.transport.write(response)
        self.close()

    # -- reading --------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.parser is None:
            # Decrypted bytes that came with the handshake's last message, before ``start_tls`` returned.
            self.early.append(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer_and_close(responses.BAD_REQUEST)
            return
        except httptools.HttpParserError:
            request = self.request
            if request is not None and request.refused:
                self._answer_and_close(responses.SERVER_BUSY)
            elif request is not None and request.too_large:
                self._answer_and_close(responses.HEADERS_TOO_LARGE if request.head_size > MAX_HEAD_BYTES
                                       else responses.TOO_LARGE)
            else:
                self._answer_and_close(responses.BAD_REQUEST)
            return
        if len(self.pending) > 1 and not self.read_paused:
            # A client sending request after request without reading answers is not read on.
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.idle() or self.front.tls is not None:
            return None  # closes the transport (TLS has no half-closed state to keep)
        self.eof = True
        return True  # half-closed: the answers still go out, then the connection closes

    def on_message_begin(self) -> None:
        self.request = Request()
        if self.keepalive_wait or self.timer is None:
            # The header deadline runs from the first byte on a kept connection, from the accept on a new one.
            self._arm(self.front.limits.header_timeout, self._too_slow)

    def on_url(self, url: bytes) -> None:
        request = self.request
        assert request is not None
        request.url += url
        request.head_size += len(url)
        if request.head_size > MAX_HEAD_BYTES:
            request.too_large = True
            raise httptools.HttpParserError("headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        assert request is not None
        request.head_size += len(name) + len(value) + 4
        if request.head_size > MAX_HEAD_BYTES:
            request.too_large = True
            raise httptools.HttpParserError("headers too large")
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        parser = self.parser
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        length = 0
        chunked = expect = False
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value) if value.strip().isdigit() else 0
            elif lowered == b"transfer-encoding":
                chunked = True
            elif lowered == b"expect":
                expect = value.lower() == b"100-continue"
        if length > self.front.limits.max_body_bytes:
            request.too_large = True
            raise httptools.HttpParserError("body too large")
        if length or chunked:
            if expect and self.job is None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.window_size = 0
            self._arm(self.front.limits.header_timeout, self._body_check)
        elif self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_body(self, body: bytes) -> None:
        request = self.request
        assert request is not None
        request.size += len(body)
        if request.size > self.front.limits.max_body_bytes:
            request.too_large = True
            raise httptools.HttpParserError("body too large")
        if not self.front.hold(len(body)):
            request.refused = True
            raise httptools.HttpParserError("request bodies over the worker's budget")
        self.buffered += len(body)
        request.body.append(body)

    def _body_check(self) -> None:
        """Each window (the header deadline's length), the body must have come on at the minimum rate."""
        request = self.request
        if request is None or self.closing:
            return
        limits = self.front.limits
        if request.size - self.window_size < limits.body_min_bytes_per_second * limits.header_timeout:
            self._too_slow()
            return
        self.window_size = request.size
        self._arm(limits.header_timeout, self._body_check)

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        assert request is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.append(request)
        if self.job is None and not self.write_paused:
            self._next()

    # -- running and answering ------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.pending or self.closing:
            return
        request = self.pending.popleft()
        environ = build_environ(self.base, request)
        front = self.front
        self.job = front.pool.submit(environ, self._done)
        self.job_timer = front.loop.call_later(front.limits.request_timeout, self._stuck)
        self.keep_alive = request.keep_alive
        self.head_only = request.method == b"HEAD"
        self.job_size = request.size

    def _release_job_body(self) -> None:
        self.front.buffered -= self.job_size
        self.buffered -= self.job_size
        self.job_size = 0

    def _done(self, job: Job, answer: Answer) -> None:
        if job is not self.job:
            return  # abandoned, or the connection is gone
        self.job = None
        self._release_job_body()
        if self.job_timer is not None:
            self.job_timer.cancel()
            self.job_timer = None
        status, headers, body = answer
        close = not self.keep_alive or self.front.draining
        data, close, with_body = responses.head(status, headers, len(body), close=close, date=self.front.clock.line)
        if with_body and not self.head_only:
            data += body
        self._write(data, close)

    def _stuck(self) -> None:
        """The request ran past its bound: 503, and the slot (connection and thread) is free again."""
        job, self.job = self.job, None
        self.job_timer = None
        if job is None:
            return
        self._release_job_body()
        self.front.pool.abandon(job)
        self._write(responses.REQUEST_TOO_LONG, not self.keep_alive or self.front.draining)

    def _write(self, data: bytes, close: bool) -> None:
        if self.closing:
            return
        self.transport.write(data)
        if close:
            self.close()
            return
        if self.read_paused and len(self.pending) <= 1:
            self.read_paused = False
            self.transport.resume_reading()
        if self.write_paused:
            return  # the next request waits until the client has read this answer
        self._after_answer()

    def _after_answer(self) -> None:
        if self.pending:
            self._next()
        elif self.request is None:
            if self.front.draining or self.eof:
                self.close()
            else:
                self._arm(self.front.limits.keepalive_timeout, self.close)
                self.keepalive_wait = True

    def pause_writing(self) -> None:
        # The client does not read: its answer waits in memory, for a bounded time.
        self.write_paused = True
        self.write_timer = self.front.loop.call_later(self.front.limits.write_timeout, self._write_expired)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.job is None and not self.closing:
            self._after_answer()

    def _write_expired(self) -> None:
        self.closing = True
        self.transport.abort()
