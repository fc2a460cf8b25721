"""The check engine with a token getter, against scripted servers: what goes on the wire and what the result says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from service.smtp_check import AccessToken, CheckRequest, DestinationPolicy, ResolvedPassword, TokenUnavailable, run_check
from tests.fixtures.smtp_servers import ScriptedServer

OPEN_POLICY = DestinationPolicy(allowed_ports=frozenset(range(1, 65536)))
TOKEN = "short-canary-token-41c9"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def settings(port: int, **overrides: object) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "noreply@example.com",
            "username": "mailer@example.com", "timeout_seconds": 5, **overrides}


@pytest.fixture(scope="module")
def accepting_xoauth2() -> Iterator[ScriptedServer]:
    server = ScriptedServer(b"220 smtp.example.test ESMTP\r\n", {
        "EHLO": b"250-smtp.example.test\r\n250 AUTH XOAUTH2 PLAIN\r\n",
        "AUTH": b"235 2.7.0 Accepted\r\n",
        "QUIT": b"221 2.0.0 Bye\r\n",
    })
    yield server
    server.close()


def test_a_short_token_goes_in_one_masked_line(accepting_xoauth2):
    calls: list[bool] = []

    def get_token(refresh: bool) -> AccessToken:
        calls.append(refresh)
        return AccessToken(TOKEN, "client_credentials", EXPIRES)

    result = run_check(CheckRequest(settings=settings(accepting_xoauth2.port), get_password=None, get_token=get_token, policy=OPEN_POLICY))

    assert result["ok"] is True, result
    assert "C: AUTH XOAUTH2 ********" in result["transcript"]
    assert TOKEN not in repr(result)
    assert result["token"] == {"flow": "client_credentials", "expires_at": "2030-01-01T00:00:00Z", "refreshed": False}
    assert calls == [False]
    assert result["secret"] is None


def test_token_unavailable_stops_before_dns_with_the_oauth_error(accepting_xoauth2):
    def get_token(refresh: bool) -> AccessToken:
        raise TokenUnavailable("AADSTS7000215: Invalid client secret provided.", oauth_error="invalid_client")

    result = run_check(CheckRequest(settings=settings(accepting_xoauth2.port), get_password=None, get_token=get_token, policy=OPEN_POLICY))

    assert result["stage"] == "token"
    assert result["error"]["code"] == "token_unavailable" and result["error"]["oauth_error"] == "invalid_client"
    assert result["server"]["banner"] is None


def test_an_unresolvable_client_secret_ends_at_resolve_password(accepting_xoauth2):
    def get_token(refresh: bool) -> AccessToken:
        raise TokenUnavailable("the manager is down", code="password_unavailable")

    result = run_check(CheckRequest(settings=settings(accepting_xoauth2.port), get_password=None, get_token=get_token, policy=OPEN_POLICY))

    assert (result["stage"], result["error"]["code"]) == ("resolve_password", "password_unavailable")


def test_a_550_5_7_30_to_a_password_is_basic_auth_disabled():
    server = ScriptedServer(b"220 outlook.example.test ESMTP\r\n", {
        "EHLO": b"250-outlook.example.test\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n",
        "AUTH": b"550 5.7.30 Basic authentication is not supported for Client Submission\r\n",
        "QUIT": b"221 2.0.0 Bye\r\n",
    })
    try:
        result = run_check(CheckRequest(
            settings=settings(server.port), get_password=lambda refresh: ResolvedPassword("pw", "plaintext"), policy=OPEN_POLICY,
        ))
    finally:
        server.close()

    assert result["error"]["code"] == "basic_auth_disabled"
    assert result["error"]["smtp_code"] == 550
    assert "auth.method oauth2" in result["error"]["message"]


def test_password_and_token_getters_are_exclusive(accepting_xoauth2):
    with pytest.raises(ValueError):
        run_check(CheckRequest(
            settings=settings(accepting_xoauth2.port), get_password=lambda refresh: ResolvedPassword("pw", "plaintext"),
            get_token=lambda refresh: AccessToken(TOKEN, "google"), policy=OPEN_POLICY,
        ))
