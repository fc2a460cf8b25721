"""A submitted message rewritten to the settings on its raw header block, its body passed on byte for byte."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email import policy as email_policy
from email.utils import format_datetime, getaddresses, make_msgid
from email.headerregistry import Address as HeaderAddress
from typing import Any, Mapping

from service.errors import ValidationFailed
from service.schemas import NOTIFICATION_TYPES
from service.sending.message import (
    NOTIFICATION_HEADER, Outgoing, address_problem, copies_for, from_value, outgoing, unique,
)
from service.smtp_check.message import dot_stuffed

#: A line that starts a header field (the email package's feed parser's rule).
_FIELD = re.compile(rb"^[\041-\071\073-\176]*:")


class RawMessage:
    """The header fields of a CRLF-clean message as the email package's parser splits them, and its body bytes
    untouched. Fields are written back as the email package's generator writes them (``fold_binary``), so a
    message comes out as parsing and flattening it made it, without parsing or re-encoding its body."""

    def __init__(self, content: bytes, *, smtputf8: bool) -> None:
        self.policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP
        self.fields: list[tuple[str, Any]] = []
        self.body = b""
        lines = content.split(b"\r\n")
        current: list[str] = []
        for index, line in enumerate(lines):
            if line[:1] in (b" ", b"\t"):
                if current:
                    current.append(line.decode("ascii", "surrogateescape") + "\r\n")
                continue  # a continuation with no field before it: the parser drops it
            if current:
                self.fields.append(self.policy.header_source_parse(current))
                current = []
            if line.startswith(b"From "):
                continue  # an mbox envelope line: the parser keeps it apart and the generator leaves it out
            if line and _FIELD.match(line):
                current = [line.decode("ascii", "surrogateescape") + "\r\n"]
                continue
            # The blank line ends the header block; any other line begins the body (as the parser reads it).
            self.body = b"\r\n".join(lines[index + 1 if not line else index:])
            break
        if current:
            self.fields.append(self.policy.header_source_parse(current))

    def get(self, name: str) -> Any:
        """The first field named ``name`` as ``EmailMessage.get`` gives it; None without one."""
        for field, value in self.fields:
            if field.lower() == name.lower():
                return self.policy.header_fetch_parse(field, value)
        return None

    def get_all(self, name: str) -> list[Any]:
        return [self.policy.header_fetch_parse(f, v) for f, v in self.fields if f.lower() == name.lower()]

    def sources(self, name: str) -> tuple[str, ...]:
        """The values of the fields named ``name`` as they came, unparsed."""
        return tuple(v for f, v in self.fields if f.lower() == name.lower() and isinstance(v, str))

    def delete(self, name: str) -> None:
        self.fields = [(f, v) for f, v in self.fields if f.lower() != name.lower()]

    def append(self, name: str, value: str | HeaderAddress) -> None:
        """A field the service sets, folded when written; a value that is not ASCII is parsed and encoded by the
        policy, as ``EmailMessage`` does when a header is set."""
        if isinstance(value, str) and value.isascii():
            self.fields.append((name, value))
        else:
            self.fields.append(self.policy.header_store_parse(name, value))

    def flattened(self) -> bytes:
        head = b"".join(self.policy.fold_binary(name, value) for name, value in self.fields)
        return dot_stuffed(head + b"\r\n" + self.body)


def rewrite(content: bytes, recipients: list[str], settings: Mapping[str, Any], *, smtputf8: bool = False) -> Outgoing:
    """A submitted message (DATA without dot-stuffing, CRLF lines) made to go out under the settings: From,
    envelope, copies; Bcc removed."""
    message = RawMessage(content, smtputf8=smtputf8)
    notification = message.get(NOTIFICATION_HEADER)
    message.delete(NOTIFICATION_HEADER)
    if notification is not None:
        notification = str(notification).strip()
        if notification not in NOTIFICATION_TYPES:
            raise ValidationFailed(
                f"Unknown notification type {notification!r}.",
                errors={NOTIFICATION_HEADER: [f"Must be one of: {', '.join(NOTIFICATION_TYPES)}."]},
            )
    copies = copies_for(settings, notification)
    message.delete("Bcc")
    original_from = list(_addresses(message.sources("From"), smtputf8))
    own = str(settings["from_email"]).lower()
    if original_from != [settings["from_email"]] and [a.lower() for a in original_from] != [own]:
        message.delete("From")
        message.delete("Sender")
        if original_from and message.get("Reply-To") is None:
            message.append("Reply-To", ", ".join(original_from))
        message.append("From", from_value(settings))
    if copies[0]:
        cc = [str(v) for v in message.get_all("Cc")]
        message.delete("Cc")
        message.append("Cc", ", ".join([*cc, *copies[0]]))
    message_id = message.get("Message-ID")
    if message_id is None:
        message_id = make_msgid(domain=str(settings["from_email"]).rpartition("@")[2])
        message.append("Message-ID", message_id)
    if message.get("Date") is None:
        message.append("Date", format_datetime(datetime.now(UTC)))
    for address in recipients:
        problem = address_problem(address)
        if problem:
            raise ValidationFailed(errors={"recipients": {address: list(problem)}})
    everyone = unique([*recipients, *copies[0], *copies[1]])
    return outgoing(message.flattened(), str(message_id), settings, everyone, notification)


@functools.lru_cache(maxsize=1024)
def _addresses(values: tuple[str, ...], smtputf8: bool) -> tuple[str, ...]:
    """The addresses in From fields, parsed as ``EmailMessage`` parses them. Kept: a program submits with
    the same From every time, and parsing it costs more than the rest of the rewrite."""
    policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP
    parsed = [str(policy.header_fetch_parse("From", value)) for value in values]
    return tuple(address for _name, address in getaddresses(parsed) if address)
