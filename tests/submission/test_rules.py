"""The submission server's rules as plain functions: the smuggling guard, minute counters, reply mapping."""

from __future__ import annotations

import pytest

from service.errors import DatabaseUnavailable, ValidationFailed
from service.sending.errors import PasswordUnavailable, TokenUnavailable, UpstreamRejected, UpstreamUnavailable
from service.submission import limits, replies
from service.submission.guard import has_bare_line_break


@pytest.mark.parametrize(
    ("content", "bare"),
    [
        (b"a\r\nb\r\n", False),
        (b"", False),
        (b"a\nb\r\n", True),
        (b"a\rb\r\n", True),
        (b"a\r\r\n", True),
        (b"a\r\n\nb\r\n", True),
        (b"\r\n.\r\n", False),
    ],
)
def test_only_crlf_pairs_are_line_breaks(content, bare):
    assert has_bare_line_break(content) is bare


def test_a_minute_counter_forgets_after_a_minute_and_drops_idle_keys():
    now = [0.0]
    counter = limits.MinuteCounter(2, clock=lambda: now[0])
    counter.add("a")
    counter.add("a")
    assert counter.reached("a") and not counter.reached("b")
    now[0] = 60.5
    assert not counter.reached("a")
    for n in range(limits.PRUNE_ABOVE_KEYS + 10):
        counter.add(n)
    now[0] = 200.0
    counter.add("fresh")
    assert len(counter._events) <= 11


def test_connection_slots_count_in_all_and_per_address():
    slots = limits.ConnectionSlots(total=3, per_client=2)
    assert slots.take("a") is None and slots.take("a") is None
    assert slots.take("a") == "client"
    assert slots.take("b") is None
    assert slots.take("c") == "total"
    slots.give_back("a")
    assert slots.take("c") is None and slots.held == 3


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        ("535 5.7.8 Authentication credentials invalid", "535 5.7.8 Authentication credentials invalid"),
        ("250-SIZE 100", "250-SIZE 100"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_replies_get_an_enhanced_code_when_they_have_none(reply, expected):
    assert replies.with_enhanced_code(reply) == expected


@pytest.mark.parametrize(
    ("error", "start"),
    [
        (UpstreamRejected("refused", smtp_code=550, smtp_enhanced_code="5.1.1", smtp_message="5.1.1 No such user"), "550 5.1.1"),
        (UpstreamRejected("refused", smtp_code=552, smtp_enhanced_code="5.3.4", smtp_message="too big"), "554 5.3.4"),
        (UpstreamRejected("refused", smtp_code=554, smtp_enhanced_code=None, smtp_message="no"), "554 5.0.0"),
        (UpstreamUnavailable("later", reason="temporary", smtp_code=421, smtp_enhanced_code="4.3.2", smtp_message="bye"), "451 4.3.2"),
        (UpstreamUnavailable("later", reason="timeout"), "451 4.4.2"),
        (UpstreamUnavailable("later", reason="unreachable"), "451 4.4.1"),
        (UpstreamUnavailable("later", reason="tls"), "451 4.7.5"),
        (PasswordUnavailable("the vault is down"), "451 4.7.0"),
        (TokenUnavailable("the token endpoint is down"), "451 4.7.0"),
        (DatabaseUnavailable(), "451 4.3.0"),
        (ValidationFailed("bad", errors={"to": ["Not an address."]}), "554 5.6.0"),
    ],
)
def test_the_cores_errors_become_replies(error, start):
    reply = replies.for_error(error)
    assert reply.startswith(start + " "), reply
    assert "\r" not in reply and "\n" not in reply


def test_text_from_elsewhere_stays_on_one_ascii_line():
    assert replies.plain_text("a\r\nb\u00e9" + "x" * 1000) == "a b?" + "x" * (replies.TEXT_LIMIT - 4)
