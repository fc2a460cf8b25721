"""The threads that run the WSGI application for the event loop; a request past its bound gives up its thread."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable, Iterable

log = logging.getLogger("smtpconf.front")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: What the application answered: status line, headers, the whole body.
Answer = tuple[str, list[tuple[str, str]], bytes]

_FAILED: Answer = (
    "500 Internal Server Error",
    [("Content-Type", "application/problem+json")],
    b'{"type": "about:blank", "title": "Internal error", "status": 500, "code": "internal_error"}',
)
_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)


class Job:
    """One request handed to the pool; ``done`` is called on the loop with the answer."""

    __slots__ = ("environ", "done", "state")

    def __init__(self, environ: dict[str, Any], done: Callable[["Job", Answer], None]) -> None:
        self.environ = environ
        self.done = done
        self.state = _QUEUED


class AppPool:
    """``size`` threads run requests; a request abandoned while running is left to its thread, which is replaced.

    A thread cannot be stopped from outside: the stuck call goes on, but the
    pool's capacity does not shrink for it. When ``max_stuck`` threads are stuck
    at once, ``on_too_many_stuck`` is called (the worker then retires, and the
    gunicorn master starts a fresh one).
    """

    def __init__(
        self, app: WsgiApp, size: int, loop: asyncio.AbstractEventLoop, on_too_many_stuck: Callable[[], None]
    ) -> None:
        self.app = app
        self.loop = loop
        self.max_stuck = size * 4
        self.stuck = 0
        self.on_too_many_stuck = on_too_many_stuck
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size = size
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        threading.Thread(target=self._serve, name="smtpconf-app", daemon=True).start()

    def submit(self, environ: dict[str, Any], done: Callable[[Job, Answer], None]) -> Job:
        job = Job(environ, done)
        self._queue.put(job)
        return job

    def abandon(self, job: Job) -> None:
        """The loop stops waiting for ``job`` (called on the loop)."""
        with self._lock:
            running = job.state == _RUNNING
            if job.state in (_QUEUED, _RUNNING):
                job.state = _ABANDONED
            if running:
                self.stuck += 1
                self._start_thread()
            too_many = self.stuck >= self.max_stuck
        if too_many:
            self.on_too_many_stuck()

    def close(self) -> None:
        for _ in range(self._size):
            self._queue.put(None)

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state == _ABANDONED:
                    continue
                job.state = _RUNNING
            answer = call(self.app, job.environ)
            with self._lock:
                if job.state == _ABANDONED:
                    # A replacement took this thread's place when the job was abandoned.
                    self.stuck -= 1
                    return
                job.state = _DONE
            self.loop.call_soon_threadsafe(job.done, job, answer)


def call(app: WsgiApp, environ: dict[str, Any]) -> Answer:
    """Run the application for one request and collect its whole answer."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = (status, headers)
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            for chunk in result:
                if chunk:
                    chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception:
        log.exception("the application failed outside its own error handling")
        return _FAILED
    if not started:
        return _FAILED
    return started[0], started[1], chunks[0] if len(chunks) == 1 else b"".join(chunks)
