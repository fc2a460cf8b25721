"""Building messages: the flattening of plain-text messages is byte for byte the email generator's."""

from __future__ import annotations

import pytest

from service.sending.message import build, load_request
from service.smtp_check.message import data_payload

SETTINGS = {"from_email": "noreply@example.com", "from_name": "Example Alerts", "reply_to": "help@example.com",
            "preferred_notifications": ["password_recovery"], "cc": ["audit@example.com"], "bcc": ["hidden@example.com"]}
CASES = [
    {"to": ["ada@example.com"], "subject": "Reset", "text": "Follow the link.\n"},
    {"to": [f"user{i}@example.com" for i in range(40)], "subject": "A subject " * 20, "text": ".dot\n..two\nend",
     "notification": "password_recovery", "headers": {"X-Long": "v " * 100, "X-Short": "q4"}},
    {"to": ["ada@example.com"], "subject": "Grüße", "text": "line\r\nother\rthird\n", "reply_to": "me@example.com"},
    {"to": ["ada@example.com"], "subject": "", "text": ""},
]


@pytest.mark.parametrize("payload", CASES)
def test_a_plain_text_message_is_flattened_as_the_generator_flattens_it(payload, monkeypatch):
    from service.sending import message as module

    fast = build(load_request(payload), SETTINGS)
    generated: list[bytes] = []
    monkeypatch.setattr(module, "_flattened_plain", lambda m, _body: generated.append(data_payload(m)) or generated[-1])
    slow = build(load_request(payload), SETTINGS)
    # Date and Message-ID differ between the two builds: compare everything else.
    strip = lambda data: b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith((b"Date:", b"Message-ID:")))
    assert strip(fast.payload) == strip(slow.payload)
    assert generated, "the second build went through the generator"
    assert fast.payload.endswith(b"\r\n") and fast.payload.isascii()
