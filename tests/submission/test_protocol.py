"""The submission server's dialogue: extensions, TLS before AUTH, no MAIL before AUTH, STARTTLS injection."""

from __future__ import annotations

import smtplib

import pytest

from tests.submission.harness import LOOPBACK, Raw, client_context, connect


def test_ehlo_advertises_the_contract_extensions_and_auth_on_loopback(submission, lab):
    client = connect(submission, lab.ca, tls=False)
    try:
        features = client.esmtp_features
        assert "starttls" in features
        assert features["auth"].split() == ["LOGIN", "PLAIN"]
        assert features["size"] == str(25 * 1024 * 1024)
        for name in ("8bitmime", "smtputf8", "enhancedstatuscodes"):
            assert name in features, features
        client.starttls(context=client_context(lab.ca))
        client.ehlo("client.example.test")
        assert "starttls" not in client.esmtp_features
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    finally:
        client.quit()


def test_mail_before_auth_is_refused_530(submission, lab):
    client = connect(submission, lab.ca)
    try:
        code, message = client.mail("someone@example.com")
        assert (code, message[:5]) == (530, b"5.7.0")
        client.rset()
        code, message = client.rcpt("ada@example.com")
        assert code == 530
    finally:
        client.quit()


def test_every_reply_carries_an_enhanced_status_code(submission, lab):
    raw = Raw(LOOPBACK, submission.port)
    try:
        assert raw.reply().startswith("220 ")
        raw.command("EHLO client.example.test")
        for command, expected in (
            ("NOOP", "250 2.0.0"), ("RSET", "250 2.0.0"), ("DATA", "530 5.7.0"), ("VRFY ada@example.com", "530 5.7.0"),
            ("AUTH CRAM-MD5", "504 5.5.4"), ("MAIL FROM:<a@example.com> SIZE=999999999", "530 5.7.0"),
        ):
            assert raw.command(command).startswith(expected), command
        assert raw.command("QUIT").startswith("221 2.0.0")
    finally:
        raw.close()


@pytest.fixture(scope="module")
def outside(lab):
    if lab.outside is None:
        pytest.skip("this host has no address but loopback")
    return lab.start(host=lab.outside)


def test_plaintext_auth_from_another_address_is_refused_538_and_not_offered(outside, lab):
    raw = Raw(outside.host, outside.port, source=lab.outside)
    try:
        raw.reply()
        extensions = raw.command("EHLO client.example.test")
        assert "STARTTLS" in extensions and "AUTH" not in extensions
        assert raw.command("AUTH PLAIN AGZvbwBiYXI=").startswith("538 5.7.11")
        assert raw.command("MAIL FROM:<a@example.com>").startswith("530 5.7.0")
        assert raw.command("STARTTLS").startswith("220")
        raw.starttls(client_context(lab.ca))
        assert "AUTH LOGIN PLAIN" in raw.command("EHLO client.example.test")
        assert raw.command("AUTH PLAIN AGZvbwBiYXI=").startswith("535 5.7.8")
    finally:
        raw.close()


def test_commands_pipelined_after_starttls_are_discarded(submission, lab):
    raw = Raw(LOOPBACK, submission.port)
    try:
        raw.reply()
        raw.command("EHLO client.example.test")
        # An attacker in the path appends a plaintext QUIT to the client's STARTTLS.
        raw.send(b"STARTTLS\r\nQUIT\r\n")
        assert raw.reply().startswith("220")
        raw.starttls(client_context(lab.ca))
        # Had the QUIT been kept, its 221 would come first and the connection would close.
        assert raw.command("NOOP").startswith("250 2.0.0")
        assert raw.command("EHLO client.example.test").startswith("250-")
    finally:
        raw.close()


def test_implicit_tls_speaks_tls_from_the_first_byte(lab):
    server = lab.start(implicit_tls=True)
    client = connect(server, lab.ca)
    try:
        assert "starttls" not in client.esmtp_features
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("*", "smtpconf_not-a-token")
        assert refused.value.smtp_code == 535
    finally:
        client.quit()
