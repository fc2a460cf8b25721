"""SMTP replies: the sending core's outcomes as 250 / 4xx / 5xx, and enhanced status codes on every reply."""

from __future__ import annotations

import re
from typing import Any

from service.errors import ApiError

#: An enhanced status code (RFC 3463) at the start of a reply text.
ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
#: Longest reply text passed on from elsewhere (the mail server, an error detail); a reply line stays under 512.
TEXT_LIMIT = 300

# The enhanced code given to a reply of aiosmtpd's own that carries none (RFC 2034 asks for one on every
# reply but the greeting, HELO/EHLO and intermediate ones once ENHANCEDSTATUSCODES is advertised).
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.7.0",
    "451": "4.3.0",
    "452": "4.5.3",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_REPLY = re.compile(r"^(\d{3}) (.*)$", re.DOTALL)


def with_enhanced_code(reply: str) -> str:
    """``reply`` with an enhanced status code after its code when it has none (continuation lines as they are)."""
    match = _REPLY.match(reply)
    if match is None or ENHANCED.match(match.group(2)):
        return reply
    enhanced = _DEFAULT_ENHANCED.get(match.group(1))
    return reply if enhanced is None else f"{match.group(1)} {enhanced} {match.group(2)}"


def plain_text(text: Any) -> str:
    """Text from elsewhere made fit for one reply line: printable ASCII, no line breaks, bounded."""
    flat = " ".join(str(text).split())
    ascii_text = "".join(c if " " <= c <= "~" else "?" for c in flat)
    return ascii_text[:TEXT_LIMIT] or "-"


def _without_enhanced(text: str) -> str:
    return ENHANCED.sub("", text, count=1).strip()


def delivered(upstream_message: str, delivery_id: int, refused: list[str] | None = None) -> str:
    """The 250 for a message the mail server took, with its reply (its queue id, usually)."""
    reply = f"250 2.0.0 {plain_text(_without_enhanced(upstream_message))} (delivery {delivery_id})"
    if refused:
        reply += f"; not accepted by the mail server: {plain_text(', '.join(refused))}"
    return reply


def _enhanced_of_class(code: Any, klass: str, default: str) -> str:
    text = str(code or "")
    match = ENHANCED.match(text)
    return text.split(" ")[0] if match and match.group(1) == klass else default


def for_error(exc: ApiError) -> str:
    """The reply for a message the sending core did not hand over: a 4xx for what the sender should retry."""
    detail = plain_text(exc.detail)
    if exc.code == "upstream_rejected" and exc.extra.get("stage") == "auth":
        # The mail server refused the service's credential, not this message: once an administrator has
        # fixed the settings, the sender's retry goes through.
        return f"451 4.7.0 The mail server refused the service's credential, try again later: {detail}"
    if exc.code == "upstream_rejected":
        code = int(getattr(exc, "smtp_code", 0) or 0)
        enhanced = _enhanced_of_class(getattr(exc, "smtp_enhanced_code", None), "5", "5.0.0")
        upstream = plain_text(_without_enhanced(str(getattr(exc, "smtp_message", "") or "")))
        return f"{550 if code == 550 else 554} {enhanced} The mail server refused the message: {code} {upstream}"
    if exc.code == "upstream_unavailable":
        reason = getattr(exc, "reason", None)
        if reason == "temporary":
            enhanced = _enhanced_of_class(getattr(exc, "smtp_enhanced_code", None), "4", "4.3.0")
        else:
            enhanced = {"timeout": "4.4.2", "unreachable": "4.4.1", "tls": "4.7.5"}.get(str(reason), "4.4.0")
        return f"451 {enhanced} The mail server cannot take the message now, try again later: {detail}"
    if exc.code in ("password_unavailable", "token_unavailable"):
        return f"451 4.7.0 The mail server credential cannot be had now, try again later: {detail}"
    if exc.code == "tenant_not_allowed":
        return f"550 5.7.1 {detail}"
    if exc.status >= 500:
        return f"451 4.3.0 The message cannot be sent now, try again later: {detail}"
    return f"554 5.6.0 The message cannot be sent as it is: {detail}{_field_errors(exc)}"


def _field_errors(exc: ApiError) -> str:
    if not exc.errors:
        return ""
    return " " + plain_text("; ".join(f"{field}: {messages}" for field, messages in exc.errors.items()))


UNEXPECTED = "451 4.3.0 The message cannot be sent now because of an internal error, try again later"
BARE_LINE_BREAK = "550 5.6.11 Message refused: it contains a bare CR or LF (lines end with CRLF only)"
