"""A request read whole by the front, and the WSGI environ made from it."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote_to_bytes

#: Request line and headers together, at most.
MAX_HEAD_BYTES = 64 * 1024
_ENVIRON_NAMES: dict[bytes, str] = {}


class Request:
    """One request as the parser delivers it."""

    __slots__ = (
        "url", "headers", "body", "size", "head_size", "too_large", "refused", "keep_alive", "method", "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_size = 0
        self.too_large = False
        #: Its body would pass the worker's budget for bodies held in memory.
        self.refused = False
        self.keep_alive = True
        self.method = b""
        self.version = "1.1"


def build_environ(base: dict[str, Any], request: Request) -> dict[str, Any]:
    """The WSGI environ of a whole request, on top of its connection's ``base``."""
    environ = dict(base)
    path, _, query = request.url.partition(b"?")
    if b"%" in path:
        path = unquote_to_bytes(path)
    body = request.body[0] if len(request.body) == 1 else b"".join(request.body)
    environ.update(
        REQUEST_METHOD=request.method.decode("ascii"), PATH_INFO=path.decode("latin-1"),
        QUERY_STRING=query.decode("latin-1"), RAW_URI=request.url.decode("latin-1"),
        SERVER_PROTOCOL=f"HTTP/{request.version}",
    )
    environ["wsgi.input"] = io.BytesIO(body)
    names = _ENVIRON_NAMES
    for name, value in request.headers:
        key = names.get(name)
        if key is None:
            key = _environ_name(name)
            if len(names) < 512:
                names[name] = key
        if not key:
            continue
        text = value.decode("latin-1")
        if key in environ:
            environ[key] += "," + text
        else:
            environ[key] = text
    # The body is whole: the application sees its length, however it was framed.
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    if body or "CONTENT_LENGTH" in environ:
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def _environ_name(name: bytes) -> str:
    """``HTTP_*`` for a header; empty for one with an underscore (it would pass for its dashed twin)."""
    if b"_" in name:
        return ""
    key = name.decode("latin-1").upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
