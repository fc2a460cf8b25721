"""Messages as the service sends them: built from a request, or a submitted message rewritten to the settings."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import re
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formataddr, format_datetime, make_msgid
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from service.errors import ValidationFailed
from service.schemas import NOTIFICATION_TYPES, Address, check_address
from service.smtp_check.errors import Failure
from service.smtp_check.message import data_payload, dot_stuffed, one_line, wire_address

#: Headers the service sets itself (or that only a mail server may set): a request may not name them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version",
        "Received", "Return-Path",
    )
)
#: SMTP's policy, with every body part made 7-bit (quoted-printable or base64 where needed), so that
#: a server without 8BITMIME takes it as it is.
POLICY = email_policy.SMTP.clone(cte_type="7bit")
#: The Content-Type of a plain-text body, as ``set_content`` writes it.
PLAIN_TEXT = 'text/plain; charset="utf-8"'
#: The submission header that names a notification type (removed before relaying).
NOTIFICATION_HEADER = "X-Notification-Type"
MAX_RECIPIENTS = 500
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")


class HeaderNotAllowed(ValidationFailed):
    code = "header_not_allowed"
    title = "The request sets a header the service sets itself"


def _single_line(value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValidationError("Must not contain CR or LF.")


def _base64(value: str) -> None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("Must be base64 (RFC 4648, no line breaks).") from None


class AttachmentSchema(Schema):
    class Meta:
        unknown = RAISE

    filename = fields.String(required=True, validate=[validate.Length(min=1, max=255), _single_line])
    content_type = fields.String(load_default="application/octet-stream", validate=validate.Regexp(_CONTENT_TYPE))
    content_base64 = fields.String(required=True, validate=_base64)


@functools.lru_cache(maxsize=4096)
def address_problem(value: str) -> tuple[str, ...]:
    """Why ``value`` is not an address (empty: it is one). Kept: senders mail the same addresses over and over."""
    try:
        check_address(value)
    except ValidationError as exc:
        return tuple(exc.messages)
    return ()


class _Recipient(Address):
    """An address checked as in the settings, each distinct one once per process."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = fields.String._deserialize(self, value, attr, data, **kwargs)
        problem = address_problem(text)
        if problem:
            raise ValidationError(list(problem))
        return text


def _addresses(**kwargs: Any) -> fields.List:
    return fields.List(_Recipient(validate=validate.Length(max=320)), validate=validate.Length(max=MAX_RECIPIENTS), **kwargs)


class MessageSchema(Schema):
    """The body of ``POST /v1/messages``."""

    class Meta:
        unknown = RAISE

    to = _addresses(load_default=list)
    cc = _addresses(load_default=list)
    bcc = _addresses(load_default=list)
    subject = fields.String(load_default="", validate=[validate.Length(max=998), _single_line])
    text = fields.String(allow_none=True, load_default=None)
    html = fields.String(allow_none=True, load_default=None)
    notification = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(NOTIFICATION_TYPES))
    reply_to = Address(allow_none=True, load_default=None, validate=validate.Length(max=320))
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict, validate=validate.Length(max=50))
    attachments = fields.List(fields.Nested(AttachmentSchema), load_default=list, validate=validate.Length(max=100))

    @validates_schema
    def _complete(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not (data.get("to") or data.get("cc") or data.get("bcc")):
            raise ValidationError("At least one recipient (to, cc or bcc).", "to")
        if data.get("text") is None and data.get("html") is None:
            raise ValidationError("text or html (or both).", "text")
        if len(data.get("to", [])) + len(data.get("cc", [])) + len(data.get("bcc", [])) > MAX_RECIPIENTS:
            raise ValidationError(f"At most {MAX_RECIPIENTS} recipients in all.", "to")


#: One instance for every request: loading keeps no state in it, and building one costs more than a load.
_SCHEMA = MessageSchema()


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A message ready for the wire: envelope sender, recipients (A-label domains) and the DATA bytes."""

    sender: str
    recipients: list[str]
    payload: bytes
    message_id: str
    notification: str | None


def load_request(document: Any) -> dict[str, Any]:
    """The validated request; 422 with per-field errors, ``header_not_allowed`` for a reserved header."""
    if not isinstance(document, dict):
        raise ValidationFailed(errors={"_schema": ["The body is a JSON object."]})
    try:
        loaded = _SCHEMA.load(document)
    except ValidationError as exc:
        raise ValidationFailed(errors=exc.messages_dict) from None
    errors: dict[str, list[str]] = {}
    reserved = []
    for name, value in loaded["headers"].items():
        if not _HEADER_NAME.match(name):
            errors[name] = ["Not a valid header name."]
        elif name.lower() in RESERVED_HEADERS or name.lower().startswith("content-"):
            reserved.append(name)
        elif "\r" in value or "\n" in value or len(value) > 998:
            errors[name] = ["Must be one line (no CR or LF) of at most 998 characters."]
    if reserved:
        raise HeaderNotAllowed(
            f"The service sets {', '.join(reserved)} itself.",
            errors={"headers": {name: ["The service sets this header itself."] for name in reserved}},
        )
    if errors:
        raise ValidationFailed(errors={"headers": errors})
    return loaded


def build(request: Mapping[str, Any], settings: Mapping[str, Any]) -> Outgoing:
    """The message a validated request asks for, with the effective settings' From, Reply-To, envelope and copies."""
    copies = copies_for(settings, request["notification"])
    message = EmailMessage(policy=POLICY)
    message_id = _identity(message, settings)
    reply_to = request["reply_to"] or settings.get("reply_to")
    if reply_to:
        _put(message, "Reply-To", reply_to)
    if request["to"]:
        _put(message, "To", ", ".join(request["to"]))
    cc = unique([*request["cc"], *copies[0]])
    if cc:
        _put(message, "Cc", ", ".join(cc))
    _put(message, "Subject", request["subject"])
    for name, value in request["headers"].items():
        _put(message, name, value)
    text, html = request["text"], request["html"]
    plain = _plain_text(message, text) if text is not None and html is None and not request["attachments"] else None
    if text is not None and plain is None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif text is None:
        message.set_content(html, subtype="html")
    for attachment in request["attachments"]:
        maintype, _, subtype = attachment["content_type"].partition("/")
        data = base64.b64decode(attachment["content_base64"])
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=attachment["filename"])
    recipients = unique([*request["to"], *cc, *request["bcc"], *copies[1]])
    payload = _flattened_plain(message, plain) if plain is not None else data_payload(message)
    return outgoing(payload, message_id, settings, recipients, request["notification"])


def _identity(message: EmailMessage, settings: Mapping[str, Any]) -> str:
    """Date, Message-ID and From; the Message-ID is returned, as reading it back would parse it."""
    from_email = str(settings["from_email"])
    message_id = make_msgid(domain=from_email.rpartition("@")[2])
    _put(message, "Date", format_datetime(datetime.now(UTC)))
    _put(message, "Message-ID", message_id)
    _put(message, "From", from_value(settings))
    return message_id


def from_value(settings: Mapping[str, Any]) -> str | HeaderAddress:
    """``from_name <from_email>``, the name quoted (and encoded when not ASCII) as RFC 5322 wants."""
    name = one_line(settings.get("from_name") or "")
    address = str(settings["from_email"])
    if not address.isascii():  # an internationalised domain: the policy encodes it
        return HeaderAddress(display_name=name, addr_spec=address)
    return formataddr((name, address)) if name else address


def _plain_text(message: EmailMessage, text: str) -> str | None:
    """A text/plain body of short ASCII lines (most notifications) as ``set_content`` makes it, without
    parsing the content headers it would set, which costs more than the rest of the message; the body
    set, or None (nothing set) for any other text."""
    lines = text.encode("utf-8").splitlines()
    if not text.isascii() or max((len(line) for line in lines), default=0) > message.policy.max_line_length:
        return None
    body = b"\n".join(lines).decode("ascii") + "\n"
    message.set_payload(body)
    message.set_raw("Content-Type", PLAIN_TEXT)
    message.set_raw("Content-Transfer-Encoding", "7bit")
    message.set_raw("MIME-Version", "1.0")
    return body


def _put(message: EmailMessage, name: str, value: str | HeaderAddress) -> None:
    """Add a header. An ASCII value is stored as it is, to be folded when written (parsing each one
    costs more than the rest of building a message); any other is parsed and encoded by the policy."""
    if isinstance(value, str) and value.isascii():
        message.set_raw(name, value)
    else:
        message[name] = value


def copies_for(settings: Mapping[str, Any], notification: str | None) -> tuple[list[str], list[str]]:
    """The settings' Cc and Bcc when ``notification`` is one of the preferred types; else none."""
    if notification is None or notification not in (settings.get("preferred_notifications") or []):
        return [], []
    return list(settings.get("cc") or []), list(settings.get("bcc") or [])


def unique(addresses: list[str]) -> list[str]:
    first: dict[str, str] = {}
    for address in addresses:
        first.setdefault(address.lower(), address)
    return list(first.values())


def outgoing(
    payload: bytes, message_id: str, settings: Mapping[str, Any], recipients: list[str], notification: str | None
) -> Outgoing:
    """The DATA bytes with the envelope: the settings' sender and the recipients, domains in A-labels."""
    try:
        sender = wire_address(str(settings.get("envelope_from") or settings["from_email"]), "sender_rejected")
        wire = [wire_address(address, "recipient_rejected") for address in recipients]
    except Failure as failure:
        raise ValidationFailed(failure.message, errors={"to": [failure.message]}) from None
    return Outgoing(sender, wire, payload, message_id, notification)


def _flattened_plain(message: EmailMessage, body: str) -> bytes:
    """DATA for a message ``_plain_text`` made: its raw headers folded by the policy as the generator
    folds them, without the generator parsing its Content-Type twice over."""
    policy = email_policy.SMTP
    head = "".join(policy.fold(name, value) for name, value in message.raw_items())
    # The body as _plain_text set it: reading it back with get_payload would parse Content-Transfer-Encoding.
    return dot_stuffed((head + "\r\n" + "\r\n".join(body.split("\n"))).encode("ascii"))
