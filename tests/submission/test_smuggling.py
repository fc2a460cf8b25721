"""SMTP smuggling: only <CR><LF>.<CR><LF> ends the data, and a message with a bare CR or LF is refused whole."""

from __future__ import annotations

import base64

import pytest

from tests.submission.harness import LOOPBACK, Raw
from tests.submission.test_relay import starttls_settings

SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nsmuggled\r\n"


@pytest.fixture
def authenticated(submission, lab, starttls_smtp_server, smtp_ca_pem):
    """A byte-level client that has passed AUTH (in plaintext: it is on loopback) and begun a message."""
    tenant = lab.tenant(starttls_settings(starttls_smtp_server, smtp_ca_pem))
    token = lab.token("sender", tenants=[tenant])
    raw = Raw(LOOPBACK, submission.port)
    raw.reply()
    raw.command("EHLO client.example.test")
    credentials = base64.b64encode(f"\0{tenant}\0{token}".encode()).decode()
    assert raw.command(f"AUTH PLAIN {credentials}").startswith("235 2.7.0")
    assert raw.command("MAIL FROM:<printer@legacy.example>").startswith("250")
    assert raw.command("RCPT TO:<ada@example.com>").startswith("250")
    assert raw.command("DATA").startswith("354")
    yield raw
    raw.close()


@pytest.mark.parametrize(
    "false_end",
    [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r", b"\r.\r\n", b"\n..\r\n"],
    ids=["LF.CRLF", "CRLF.LF", "LF.LF", "CR.CR", "CR.CRLF", "LF..CRLF"],
)
def test_a_false_end_of_data_is_refused_550_5_6_11_and_nothing_is_relayed(authenticated, starttls_smtp_server, false_end):
    authenticated.send(b"From: printer@legacy.example\r\nSubject: scan\r\n\r\nhello" + false_end + SMUGGLED + b".\r\n")
    assert authenticated.reply().startswith("550 5.6.11")
    # Nothing of the smuggled part ran as commands: the next reply answers the next command.
    assert authenticated.command("NOOP").startswith("250 2.0.0")
    assert starttls_smtp_server.messages == []
    assert not any(c in ("MAIL", "RCPT", "DATA") for c in starttls_smtp_server.commands)


@pytest.mark.parametrize("bare", [b"a line ending in LF\n", b"a CR\rin the middle\r\n", b"\n"], ids=["LF", "CR", "empty-LF"])
def test_any_bare_line_break_is_refused(authenticated, starttls_smtp_server, bare):
    authenticated.send(b"Subject: scan\r\n\r\n" + bare + b"more\r\n.\r\n")
    assert authenticated.reply().startswith("550 5.6.11")
    assert starttls_smtp_server.messages == []


def test_a_clean_message_on_the_same_connection_still_goes(authenticated, starttls_smtp_server):
    authenticated.send(b"Subject: first\r\n\r\nbad\nline\r\n.\r\n")
    assert authenticated.reply().startswith("550 5.6.11")
    assert authenticated.command("MAIL FROM:<printer@legacy.example>").startswith("250")
    assert authenticated.command("RCPT TO:<ada@example.com>").startswith("250")
    assert authenticated.command("DATA").startswith("354")
    authenticated.send(b"Subject: second\r\n\r\n..dot-stuffed line\r\n.\r\n")
    assert authenticated.reply().startswith("250 2.0.0")
    assert len(starttls_smtp_server.messages) == 1
    assert starttls_smtp_server.messages[0].content.endswith(b"\r\n\r\n.dot-stuffed line\r\n")
