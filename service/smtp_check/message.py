"""The test message and the addresses as they go over the wire."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import idna

from service.smtp_check.errors import Failure


def one_line(text: str) -> str:
    """``text`` with every run of white space (line breaks included) made one space."""
    return " ".join(text.split())


def a_label(host: str) -> str:
    """``host`` in A-labels; unchanged when it is no valid IDN (its lookup then fails)."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        return host


def wire_address(address: str, code: str) -> str:
    """The address as sent over SMTP: an internationalised domain becomes its A-label form."""
    local, at, domain = address.strip().rpartition("@")
    if at and not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise Failure(code, f"The domain of {address} is not a valid internationalised domain name.") from None
    if not local.isascii():
        raise Failure(code, f"{address} has a non-ASCII local part, which needs SMTPUTF8; this service does not send it.")
    return f"{local}{at}{domain}"


def test_message(
    *,
    service_name: str,
    scope: str,
    from_name: str | None,
    from_email: str,
    reply_to: str | None,
    to: str,
    cc: list[str],
    host: str,
    port: int,
    security: str,
) -> EmailMessage:
    """The message test-connection sends: says which settings it checks, marked auto-generated."""
    service = one_line(service_name)
    scope = one_line(scope)
    message = EmailMessage()
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=from_email.rpartition("@")[2])
    message["From"] = Address(display_name=one_line(from_name or ""), addr_spec=from_email)
    if reply_to:
        message["Reply-To"] = reply_to
    message["To"] = to
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = f"Test message from {service} ({scope} SMTP settings)"
    message["Auto-Submitted"] = "auto-generated"
    body = (
        f"This is a test message from {service}.\n\n"
        f"It checks the {scope} SMTP settings: server {host} port {port}, security {security}.\n"
        "If you can read it, these settings deliver mail.\n"
    )
    # Quoted-printable keeps a non-ASCII scope deliverable by servers without 8BITMIME.
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return message


def data_payload(message: EmailMessage) -> bytes:
    """The message as DATA sends it: CRLF lines, leading dots doubled, ending in CRLF."""
    return dot_stuffed(message.as_bytes(policy=email_policy.SMTP))


def dot_stuffed(flattened: bytes) -> bytes:
    """A message already flattened with CRLF lines, as DATA sends it: leading dots doubled, ending in CRLF."""
    payload = re.sub(rb"(?m)^\.", b"..", flattened)
    return payload if payload.endswith(b"\r\n") else payload + b"\r\n"
