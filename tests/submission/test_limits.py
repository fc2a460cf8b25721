"""Limits: recipients, size (announced and actual), connections at once and per address, messages per token, idle
clients. Each is answered with its code, never a hang, and the server keeps serving others."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.submission.harness import LOOPBACK, Raw, connect
from tests.submission.test_relay import legacy_message, starttls_settings


@pytest.fixture(scope="module")
def tight(lab):
    return lab.start(
        SMTPCONF_SUBMISSION_MAX_RECIPIENTS=3, SMTPCONF_SUBMISSION_MAX_BYTES=4000,
        SMTPCONF_SUBMISSION_MAX_CONNECTIONS=6, SMTPCONF_SUBMISSION_MAX_CONNECTIONS_PER_CLIENT=3,
        SMTPCONF_SUBMISSION_MESSAGES_PER_MINUTE=3,
    )


@pytest.fixture
def sender(lab, starttls_smtp_server, smtp_ca_pem):
    tenant = lab.tenant(starttls_settings(starttls_smtp_server, smtp_ca_pem))
    return tenant, lab.token("sender", tenants=[tenant])


def logged_in(server, lab, sender, **kwargs):
    client = connect(server, lab.ca, **kwargs)
    client.login(*sender)
    return client


def test_too_many_recipients_get_452_and_the_first_ones_are_sent(tight, lab, sender, starttls_smtp_server):
    client = logged_in(tight, lab, sender)
    try:
        client.mail("printer@legacy.example")
        for n in range(3):
            assert client.rcpt(f"r{n}@example.com")[0] == 250
        code, text = client.rcpt("r3@example.com")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(legacy_message().as_string())[0] == 250
    finally:
        client.quit()
    assert sorted(starttls_smtp_server.messages[0].rcpt_tos) == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_too_big_a_message_is_refused_552_announced_or_not(tight, lab, sender, starttls_smtp_server):
    client = logged_in(tight, lab, sender)
    try:
        assert client.esmtp_features["size"] == "4000"
        code, text = client.mail("printer@legacy.example", ["SIZE=5000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        client.mail("printer@legacy.example")
        client.rcpt("ada@example.com")
        code, text = client.data("Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 80)
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.noop()[0] == 250
        client.mail("printer@legacy.example")
        client.rcpt("ada@example.com")
        assert client.data(legacy_message().as_string())[0] == 250
    finally:
        client.quit()
    assert len(starttls_smtp_server.messages) == 1


def test_connections_over_the_limits_get_421_at_once(tight, lab):
    held = []
    try:
        for _ in range(3):
            held.append(Raw(LOOPBACK, tight.port, source="127.0.0.41"))
            assert held[-1].reply().startswith("220")
        refused = Raw(LOOPBACK, tight.port, source="127.0.0.41")
        assert refused.reply().startswith("421 4.7.0")
        assert refused.closed()
        for _ in range(3):
            held.append(Raw(LOOPBACK, tight.port, source="127.0.0.42"))
            assert held[-1].reply().startswith("220")
        refused = Raw(LOOPBACK, tight.port, source="127.0.0.43")
        assert refused.reply().startswith("421 4.7.0")
        assert held[0].command("NOOP").startswith("250")
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            again = Raw(LOOPBACK, tight.port, source="127.0.0.43")
            if again.reply().startswith("220"):
                break
            assert time.monotonic() < deadline, "a closed connection's slot never came back"
            time.sleep(0.05)
        held.append(again)
    finally:
        for raw in held:
            raw.close()


def test_messages_per_token_and_minute(tight, lab, sender):
    client = logged_in(tight, lab, sender)
    try:
        for _ in range(3):
            client.send_message(legacy_message(), to_addrs=["ada@example.com"])
        code, text = client.mail("printer@legacy.example")
        assert (code, text[:5]) == (451, b"4.7.1")
    finally:
        client.quit()


def test_an_idle_client_gets_421_and_is_closed_while_others_are_served(lab, sender, starttls_smtp_server):
    quick = lab.start(SMTPCONF_SUBMISSION_IDLE_SECONDS=1)
    idle = Raw(LOOPBACK, quick.port, timeout=10)
    assert idle.reply().startswith("220")
    started = time.monotonic()
    client = logged_in(quick, lab, sender)
    try:
        client.send_message(legacy_message(), to_addrs=["ada@example.com"])
    finally:
        client.quit()
    assert idle.reply().startswith("421 4.4.2")
    assert idle.closed()
    assert time.monotonic() - started < 20
    assert len(starttls_smtp_server.messages) == 1


def test_a_client_that_stops_mid_data_is_closed_too(lab, sender):
    quick = lab.start(SMTPCONF_SUBMISSION_IDLE_SECONDS=1)
    client = logged_in(quick, lab, sender)
    client.mail("printer@legacy.example")
    client.rcpt("ada@example.com")
    assert client.docmd("DATA")[0] == 354
    client.send(b"Subject: half a message\r\n")
    code, text = client.getreply()
    assert (code, text[:5]) == (421, b"4.4.2")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()


def test_a_stopping_server_says_421_to_open_connections(lab):
    server = lab.start()
    raw = Raw(LOOPBACK, server.port)
    assert raw.reply().startswith("220")
    raw.command("EHLO client.example.test")
    server.stop()
    assert raw.reply().startswith("421 4.3.2")
    assert raw.closed()
