"""WSGI middleware: a request body the application did not read is drained (bounded) or the connection closed.

Clients reuse connections (requests.Session, every HTTP library's default).
When the service answers without reading the body (a 413, a 401, a 404...),
the unread bytes would otherwise be taken for the next request, or the server
would close the connection after announcing keep-alive, and the client's next,
valid request fails. So: bodies up to ``DRAIN_LIMIT`` are read and dropped
before the answer leaves; larger ones get ``Connection: close``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

#: Bytes read and dropped at most; beyond, the connection is closed instead.
DRAIN_LIMIT = 1024 * 1024
CHUNK = 64 * 1024

StartResponse = Callable[..., Callable[[bytes], Any]]


class _CountingInput:
    """``wsgi.input`` counting the bytes the application read."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0

    def read(self, *args: Any) -> bytes:
        data = self.stream.read(*args)
        self.consumed += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data = self.stream.readline(*args)
        self.consumed += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self.stream.readlines(*args)
        self.consumed += sum(map(len, lines))
        return lines

    def __iter__(self) -> Any:
        for line in self.stream:
            self.consumed += len(line)
            yield line

    def drain(self, declared: int | None) -> bool:
        """Read what is left of the body; whether all of it was read within ``DRAIN_LIMIT``.

        ``declared`` is the Content-Length, or None for a chunked body whose end
        the server marks (``wsgi.input_terminated``).
        """
        budget = DRAIN_LIMIT
        while budget > 0:
            want = CHUNK if declared is None else min(CHUNK, declared - self.consumed)
            if want <= 0:
                return True
            data = self.read(min(want, budget))
            if not data:
                return True  # the end of a chunked body, or a client that stopped sending
            budget -= len(data)
        return declared is not None and self.consumed >= declared


class DrainUnreadBody:
    """Wraps a WSGI application whose ``start_response`` comes before its body (Flask's)."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        declared: int | None = _content_length(environ)
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not declared and not chunked:
            return self.app(environ, start_response)
        if chunked:
            declared = None
            # Without the server marking the end of a chunked body, reading on would block.
            drainable = bool(environ.get("wsgi.input_terminated"))
        else:
            drainable = declared <= DRAIN_LIMIT
        body = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = body
        response = _HeldResponse(start_response)
        result = self.app(environ, response.hold)
        read_whole = declared is not None and body.consumed >= declared
        response.send(close=not (read_whole or (drainable and body.drain(declared))))
        return result


class _HeldResponse:
    """The status and headers, held until the body has been drained and the connection decided."""

    def __init__(self, start_response: StartResponse) -> None:
        self.start_response = start_response
        self.held: tuple[str, list[tuple[str, str]], Any] | None = None
        self.write: Callable[[bytes], Any] | None = None

    def hold(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
        self.held = (status, headers, exc_info)
        return self._write

    def send(self, *, close: bool) -> None:
        if self.held is None or self.write is not None:
            return
        status, headers, exc_info = self.held
        if close:
            headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
        self.write = self.start_response(status, headers, exc_info)

    def _write(self, data: bytes) -> Any:
        # For applications that use WSGI's write(): the headers leave as they are.
        self.send(close=False)
        assert self.write is not None
        return self.write(data)


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(int(environ.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0
