"""The SASL encoders as pure functions: what each mechanism puts on the wire."""

from __future__ import annotations

import base64

from service.smtp_check import auth


def decoded(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def test_plain_is_an_empty_authzid_the_login_and_the_password():
    assert decoded(auth.auth_plain_encode("DOMAIN\\mailer", "pässword")) == "\0DOMAIN\\mailer\0pässword".encode()


def test_xoauth2_names_the_user_and_the_bearer_token():
    assert decoded(auth.xoauth2_encode("mailer@example.com", "tok.en")) == b"user=mailer@example.com\x01auth=Bearer tok.en\x01\x01"


def test_oauthbearer_has_a_gs2_header_host_and_port_and_escapes_the_authzid():
    text = decoded(auth.oauthbearer_encode("a,b=c@example.com", "tok", "smtp.example.com", 587))
    assert text == b"n,a=a=2Cb=3Dc@example.com,\x01host=smtp.example.com\x01port=587\x01auth=Bearer tok\x01\x01"


def test_a_long_initial_response_does_not_fit_one_command_line():
    short = auth.xoauth2_encode("u@example.com", "t" * 300)
    long = auth.xoauth2_encode("u@example.com", "t" * 3000)
    assert auth.fits_one_line("XOAUTH2", short)
    assert not auth.fits_one_line("XOAUTH2", long)
    assert len(f"AUTH XOAUTH2 {short}\r\n") <= 512


def test_the_error_challenge_is_decoded_and_garbage_is_not():
    challenge = base64.b64encode(b'{"status":"401","schemes":"bearer"}').decode()
    assert auth.oauth_error(challenge) == {"status": "401", "schemes": "bearer"}
    assert auth.oauth_error("not base64!") is None
    assert auth.oauth_error(base64.b64encode(b"[1]").decode()) is None


def test_xoauth2_is_preferred_and_oauthbearer_used_only_when_alone():
    assert auth.pick({"XOAUTH2", "OAUTHBEARER", "PLAIN"}, auth.TOKEN_MECHANISMS) == "XOAUTH2"
    assert auth.pick({"OAUTHBEARER"}, auth.TOKEN_MECHANISMS) == "OAUTHBEARER"
    assert auth.pick({"PLAIN", "LOGIN"}, auth.TOKEN_MECHANISMS) is None
