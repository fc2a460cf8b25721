"""SMTP smuggling: a message with a bare CR or a bare LF is refused, never normalised or passed on."""

from __future__ import annotations


def has_bare_line_break(content: bytes) -> bool:
    """Whether ``content`` (the DATA lines, each ending in CRLF) holds a CR or an LF outside a CRLF pair.

    A receiver that takes a bare LF (or CR) as a line end could read
    ``<LF>.<CR><LF>`` as the end of data and what follows as further commands;
    refusing every such message leaves nothing to be read two ways.
    """
    # Removing the CRLF pairs cannot remove a lone CR or LF, so whatever is left is bare.
    rest = content.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest
