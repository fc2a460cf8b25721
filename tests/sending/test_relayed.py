"""The raw rewrite of a submitted message: the bytes the email package's parser and generator would give, body untouched."""

from __future__ import annotations

import email
from email import policy

import pytest

from service.errors import ValidationFailed
from service.sending.relayed import rewrite

SETTINGS = {"from_email": "noreply@example.com", "from_name": "Example Alerts", "cc": ["audit@example.com"],
            "bcc": ["archive@example.com"], "preferred_notifications": ["job_alerts"]}
KEPT = b"Message-ID: <kept@legacy.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
CASES = [
    b"From: Legacy App <app@legacy.example>\r\nTo: ada@example.com\r\nBcc: s@example.com\r\nX-Notification-Type: job_alerts\r\n"
    + KEPT + b"\r\nbody\r\n.leading dot\r\n",
    b"From: noreply@example.com\r\nReply-To: d@example.com\r\nCc: x@example.com,\r\n y@example.com\r\nSubject: a folded\r\n subject\r\n"
    + KEPT + b"X-Notification-Type: job_alerts\r\n\r\nbody\r\n",
    "From: A <a@x.example>\r\nSubject: Größen\r\nContent-Type: text/plain; charset=utf-8\r\n".encode() + KEPT
    + "\r\nGrüße\r\n".encode(),
    b"From: A <a@x.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n" + KEPT
    + b"\r\npre\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XX--\r\n",
    b"From: A <a@x.example>\r\nX-Long: " + b"word " * 30 + b"\r\n" + KEPT + b"\r\nb\r\n",
    b"From unix line\r\n" + KEPT + b" continued\r\nnot a header line\r\nmore\r\n",
]


def _generated(content: bytes, smtputf8: bool) -> bytes:
    """What the email package makes of ``content`` after the same header changes (the expected bytes)."""
    message = email.message_from_bytes(content, policy=policy.SMTPUTF8 if smtputf8 else policy.SMTP)
    original = [a for _n, a in email.utils.getaddresses([str(v) for v in message.get_all("From") or []]) if a]
    notification = message["X-Notification-Type"]
    for name in ("X-Notification-Type", "Bcc"):
        del message[name]
    if original != ["noreply@example.com"]:
        del message["From"]
        if original and message["Reply-To"] is None:
            message["Reply-To"] = ", ".join(original)
        message["From"] = "Example Alerts <noreply@example.com>"
    if notification is not None:
        cc = [str(v) for v in message.get_all("Cc") or []]
        del message["Cc"]
        message["Cc"] = ", ".join([*cc, "audit@example.com"])
    return message.as_bytes(policy=policy.SMTP).replace(b"\r\n.", b"\r\n..")


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize("content", CASES)
def test_the_rewrite_gives_the_email_packages_bytes(content, smtputf8):
    outgoing = rewrite(content, ["ada@example.com"], SETTINGS, smtputf8=smtputf8)
    assert outgoing.payload == _generated(content, smtputf8)
    assert outgoing.message_id == "<kept@legacy.example>"


def test_the_body_goes_out_byte_for_byte_and_copies_follow_the_notification():
    body = b"=C3=A9 quoted\r\n\tindented\r\n.dot\r\n\r\n\r\ntrailing  \r\n"
    content = b"From: A <a@x.example>\r\nX-Notification-Type: job_alerts\r\n\r\n" + body
    outgoing = rewrite(content, ["ada@example.com"], SETTINGS)
    assert outgoing.payload.endswith(b"\r\n\r\n" + body.replace(b"\r\n.", b"\r\n.."))
    assert outgoing.recipients == ["ada@example.com", "audit@example.com", "archive@example.com"]
    assert outgoing.notification == "job_alerts" and outgoing.sender == "noreply@example.com"


def test_a_bad_recipient_is_refused_per_field():
    with pytest.raises(ValidationFailed) as refused:
        rewrite(b"From: a@x.example\r\n\r\nb\r\n", ["not an address"], SETTINGS)
    assert list(refused.value.errors["recipients"]) == ["not an address"]
