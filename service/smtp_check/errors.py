"""How a check ends early, and an SMTP reply as the dialogue reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reply:
    """One SMTP reply: the code and the text of each line."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code of the first line (``5.7.139``), or ''."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        return first if len(parts) == 3 and all(part.isdigit() for part in parts) else ""


class Failure(Exception):
    """Ends the check with a contract error code; the message is safe to show."""

    def __init__(
        self, code: str, message: str, reply: Reply | None = None, *, polite: bool = True, oauth_error: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        #: With ``token_unavailable``: the token endpoint's RFC 6749 ``error`` code.
        self.oauth_error = oauth_error
        self.message = message
        self.reply = reply
        # Polite failures leave the dialogue in a state where QUIT still makes sense.
        self.polite = polite


class AuthRejected(Failure):
    """The server refused the credentials; a cached password or token may deserve one refresh."""
