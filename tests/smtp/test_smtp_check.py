"""Specification of the SMTP check engine, against real loopback SMTP servers."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from service.smtp_check import (
    DEFAULT_DENIED,
    CheckRequest,
    DestinationPolicy,
    PasswordUnavailable,
    ResolvedPassword,
    run_check,
)
from tests.fixtures.smtp_servers import (
    PASSWORD,
    REFUSED_RECIPIENT,
    REFUSED_SENDER,
    USERNAME,
    SilentListener,
    SmtpServer,
)

OPEN_POLICY = DestinationPolicy(allowed_ports=frozenset(range(1, 65536)))
CANARY = "canary-Pässwörd-9f2c41"

Settings = dict[str, Any]


class PasswordSource:
    """A password getter: ``cached`` first, ``fresh`` (a value or an exception) on refresh; notes each call."""

    def __init__(self, cached: str, fresh: str | Exception | None = None, *, from_cache: bool = False) -> None:
        self.cached = cached
        self.fresh = fresh
        self.from_cache = from_cache
        self.calls: list[bool] = []

    def __call__(self, refresh: bool) -> ResolvedPassword:
        self.calls.append(refresh)
        if not refresh:
            return ResolvedPassword(self.cached, "hashicorp_vault", "7", from_cache=self.from_cache)
        if isinstance(self.fresh, Exception):
            raise self.fresh
        assert self.fresh is not None
        return ResolvedPassword(self.fresh, "hashicorp_vault", "8")


@pytest.fixture
def settings_for(smtp_ca_pem: str) -> Callable[..., Settings]:
    """Settings for a loopback server, trusting the session CA; keyword arguments override."""

    def build(port: int, **overrides: Any) -> Settings:
        settings: Settings = {
            "host": "localhost", "port": port, "security": "starttls", "insecure_skip_verify": False,
            "ca_certificate_pem": smtp_ca_pem, "from_email": "noreply@example.com",
            "from_name": "Example Alerts", "reply_to": None, "envelope_from": None, "username": None,
            "domain": None, "cc": [], "bcc": [], "timeout_seconds": 5,
        }
        settings.update(overrides)
        return settings

    return build


def check(settings: Settings, password: Callable[[bool], ResolvedPassword] | None = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("policy", OPEN_POLICY)
    return run_check(CheckRequest(settings=settings, get_password=password, **kwargs))


def authenticated(settings_for: Callable[..., Settings], server: SmtpServer, **overrides: Any) -> Settings:
    return settings_for(server.port, username=USERNAME, **overrides)


def header_section(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


# --- Validation -------------------------------------------------------------


def test_validate_over_starttls_authenticates_and_sends_no_mail(starttls_smtp_server, settings_for):
    result = check(authenticated(settings_for, starttls_smtp_server), PasswordSource(PASSWORD))

    assert result["ok"] is True
    assert result["stage"] == "done"
    assert result["error"] is None
    assert starttls_smtp_server.commands == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
    assert starttls_smtp_server.messages == []
    assert result["message_id"] is None


def test_result_describes_server_tls_and_secret_with_a_faithful_transcript(starttls_smtp_server, settings_for):
    result = check(authenticated(settings_for, starttls_smtp_server), PasswordSource(PASSWORD))

    server = result["server"]
    assert server["banner"].startswith("smtp.example.test")
    assert "STARTTLS" in server["extensions"]
    assert "AUTH LOGIN PLAIN" in server["extensions"]
    assert server["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert "trustme" in server["certificate"]["issuer"]
    assert "trustme" in server["certificate"]["subject"]
    assert datetime.fromisoformat(server["certificate"]["not_after"]).year >= 2030
    assert server["address"] == "127.0.0.1"
    assert result["secret"] == {"source": "hashicorp_vault", "version": "7", "refreshed": False}
    assert isinstance(result["elapsed_ms"], int) and 0 <= result["elapsed_ms"] < 5000
    transcript = result["transcript"]
    assert transcript[0] == "S: 220 smtp.example.test Python SMTP 1.4.6"
    assert transcript[1].startswith("C: EHLO ")
    assert transcript.index("C: STARTTLS") < transcript.index("S: 220 Ready to start TLS")
    assert "C: AUTH PLAIN ********" in transcript
    assert transcript[-2:] == ["C: QUIT", "S: 221 Bye"]


def test_auth_login_is_used_when_plain_is_not_offered_and_both_lines_are_masked(login_only_smtp_server, settings_for):
    result = check(authenticated(settings_for, login_only_smtp_server), PasswordSource(PASSWORD))

    assert result["ok"] is True
    assert login_only_smtp_server.logins == [("LOGIN", USERNAME)]
    start = result["transcript"].index("C: AUTH LOGIN")
    assert [line for line in result["transcript"][start:] if line.startswith("C: ")][:3] == [
        "C: AUTH LOGIN", "C: ********", "C: ********",
    ]


def test_implicit_tls_authenticates_without_starttls(implicit_tls_smtp_server, settings_for):
    settings = authenticated(settings_for, implicit_tls_smtp_server, security="ssl")

    result = check(settings, PasswordSource(PASSWORD))

    assert result["ok"] is True
    assert implicit_tls_smtp_server.commands == ["EHLO", "AUTH", "QUIT"]
    assert result["server"]["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_anonymous_plaintext_check_reports_no_secret(plain_smtp_server, settings_for):
    result = check(settings_for(plain_smtp_server.port, security="none"))

    assert result["ok"] is True
    assert result["secret"] is None
    assert result["server"]["tls_version"] is None
    assert plain_smtp_server.commands == ["EHLO", "QUIT"]


def test_login_name_is_domain_backslash_username_when_a_domain_is_set(starttls_smtp_server, settings_for):
    starttls_smtp_server.handler.credentials["CORP\\mailer"] = PASSWORD
    settings = settings_for(starttls_smtp_server.port, username="mailer", domain="CORP")

    result = check(settings, PasswordSource(PASSWORD))

    assert result["ok"] is True
    assert starttls_smtp_server.logins == [("PLAIN", "CORP\\mailer")]


def test_certificate_for_an_ip_literal_host_is_checked_against_the_address(starttls_smtp_server, settings_for):
    settings = authenticated(settings_for, starttls_smtp_server, host="127.0.0.1")

    result = check(settings, PasswordSource(PASSWORD))

    assert result["ok"] is True


def test_insecure_skip_verify_accepts_a_certificate_for_another_host(wrong_host_smtp_server, settings_for):
    settings = authenticated(settings_for, wrong_host_smtp_server, insecure_skip_verify=True, ca_certificate_pem=None)

    result = check(settings, PasswordSource(PASSWORD))

    assert result["ok"] is True
    assert result["server"]["certificate"]["subject"]


def test_insecure_skip_verify_is_refused_in_fips_mode(wrong_host_smtp_server, settings_for):
    settings = authenticated(settings_for, wrong_host_smtp_server, insecure_skip_verify=True)

    with pytest.raises(ValueError, match="FIPS"):
        check(settings, PasswordSource(PASSWORD), fips_mode=True)
    assert wrong_host_smtp_server.commands == []


# --- Test mail ---------------------------------------------------------------


def test_test_mail_is_delivered_once_with_the_headers_a_mail_client_expects(starttls_smtp_server, settings_for):
    settings = authenticated(
        settings_for, starttls_smtp_server, reply_to="help@example.com",
        cc=["audit@example.com"], bcc=["hidden@example.com"],
    )

    result = check(settings, PasswordSource(PASSWORD), send_to="ops@example.com", scope="tenant acme")

    assert result["ok"] is True
    assert result["stage"] == "done"
    [delivered] = starttls_smtp_server.messages
    assert delivered.mail_from == "noreply@example.com"
    assert delivered.rcpt_tos == ["ops@example.com"]
    message = delivered.message
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message["Message-ID"] == result["message_id"]
    assert result["message_id"].endswith("@example.com>")
    assert message["From"].addresses[0].display_name == "Example Alerts"
    assert message["From"].addresses[0].addr_spec == "noreply@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert message["To"] == "ops@example.com"
    assert message["Cc"] is None
    assert "smtp-config-service" in message["Subject"] and "tenant acme" in message["Subject"]
    body = message.get_content()
    assert "smtp-config-service" in body and "tenant acme" in body


def test_envelope_sender_is_envelope_from_when_set(plain_smtp_server, settings_for):
    settings = settings_for(plain_smtp_server.port, security="none", envelope_from="bounces@example.com")

    result = check(settings, send_to="ops@example.com")

    assert result["ok"] is True
    [delivered] = plain_smtp_server.messages
    assert delivered.mail_from == "bounces@example.com"
    assert delivered.message["From"].addresses[0].addr_spec == "noreply@example.com"


def test_cc_goes_to_header_and_envelope_bcc_to_the_envelope_only(plain_smtp_server, settings_for):
    settings = settings_for(
        plain_smtp_server.port, security="none", cc=["audit@example.com"], bcc=["hidden@example.com"],
    )

    result = check(settings, send_to="ops@example.com", include_cc_bcc=True)

    assert result["ok"] is True
    [delivered] = plain_smtp_server.messages
    assert delivered.rcpt_tos == ["ops@example.com", "audit@example.com", "hidden@example.com"]
    assert delivered.message["Cc"] == "audit@example.com"
    assert delivered.message["Bcc"] is None
    assert b"hidden@example.com" not in header_section(delivered.content)


def test_unicode_display_name_is_encoded_and_idn_domains_use_a_labels(plain_smtp_server, settings_for):
    settings = settings_for(plain_smtp_server.port, security="none", from_name="Zoë Ålert")

    result = check(settings, send_to="ops@bücher.example", scope="tenant façade")

    assert result["ok"] is True
    [delivered] = plain_smtp_server.messages
    assert delivered.content.isascii()
    assert delivered.rcpt_tos == ["ops@xn--bcher-kva.example"]
    assert delivered.message["From"].addresses[0].display_name == "Zoë Ålert"
    assert "tenant façade" in delivered.message["Subject"]


# --- Failures, each at its stage ----------------------------------------------


def test_password_that_cannot_be_resolved_stops_before_any_connection(silent_server, settings_for):
    def unavailable(refresh: bool) -> ResolvedPassword:
        raise PasswordUnavailable("the vault is sealed", source="hashicorp_vault")

    result = check(settings_for(silent_server.port, username=USERNAME), unavailable)

    assert result["error"]["code"] == "password_unavailable"
    assert result["stage"] == "resolve_password"
    assert "the vault is sealed" in result["error"]["message"]
    assert result["secret"] == {"source": "hashicorp_vault", "version": None, "refreshed": False}
    assert result["transcript"] == []
    assert silent_server.connections_made() == 0


def unknown_name(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def no_addresses(host: str, port: int) -> list[str]:
    return []


@pytest.mark.parametrize("resolver", [unknown_name, no_addresses])
def test_unresolvable_host_is_a_dns_failure(resolver, settings_for):
    result = check(settings_for(587, host="mail.example.invalid"), resolver=resolver)

    assert result["error"]["code"] == "dns_failure"
    assert result["stage"] == "dns"
    assert "mail.example.invalid" in result["error"]["message"]


def test_closed_port_is_connection_refused(closed_port, settings_for):
    result = check(settings_for(closed_port))

    assert result["error"]["code"] == "connection_refused"
    assert result["stage"] == "connect"


def test_server_that_never_greets_times_out_within_the_limit(silent_server, settings_for):
    started = time.monotonic()

    result = check(settings_for(silent_server.port, timeout_seconds=1))

    assert time.monotonic() - started < 1.5
    assert result["error"]["code"] == "timeout"
    assert result["stage"] == "greeting"
    assert 1000 <= result["elapsed_ms"] < 1500
    assert silent_server.connections_made() == 1


def test_name_lookup_that_hangs_times_out_within_the_limit(settings_for):
    released = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        released.wait(5)
        return ["127.0.0.1"]

    started = time.monotonic()
    try:
        result = check(settings_for(587, host="slow.example.test", timeout_seconds=1), resolver=hanging)
    finally:
        released.set()

    assert time.monotonic() - started < 1.5
    assert result["error"]["code"] == "timeout"
    assert result["stage"] == "dns"


def test_tls_to_a_plaintext_server_is_a_handshake_failure(plain_smtp_server, settings_for):
    result = check(settings_for(plain_smtp_server.port, security="ssl"))

    assert result["error"]["code"] == "tls_handshake_failed"
    assert result["stage"] == "tls"


def test_certificate_for_another_host_fails_verification_before_auth(wrong_host_smtp_server, settings_for):
    result = check(authenticated(settings_for, wrong_host_smtp_server), PasswordSource(PASSWORD))

    assert result["error"]["code"] == "certificate_verify_failed"
    assert result["stage"] == "tls"
    assert "localhost" in result["error"]["message"]
    assert wrong_host_smtp_server.commands == ["EHLO", "STARTTLS"]


def test_private_ca_is_needed_on_top_of_the_system_store(starttls_smtp_server, settings_for):
    settings = authenticated(settings_for, starttls_smtp_server, ca_certificate_pem=None)

    result = check(settings, PasswordSource(PASSWORD))

    assert result["error"]["code"] == "certificate_verify_failed"
    assert "AUTH" not in starttls_smtp_server.commands


def test_starttls_never_falls_back_to_plaintext_auth(stripping_smtp_server, settings_for):
    result = check(authenticated(settings_for, stripping_smtp_server), PasswordSource(PASSWORD))

    assert result["error"]["code"] == "starttls_unsupported"
    assert result["stage"] == "starttls"
    assert stripping_smtp_server.commands == ["EHLO", "QUIT"]
    assert stripping_smtp_server.logins == []
    assert not any(line.startswith("C: AUTH") for line in result["transcript"])


def test_credentials_without_an_auth_extension_are_auth_unsupported(plain_smtp_server, settings_for):
    settings = authenticated(settings_for, plain_smtp_server, security="none")

    result = check(settings, PasswordSource(PASSWORD))

    assert result["error"]["code"] == "auth_unsupported"
    assert result["stage"] == "auth"
    assert "AUTH" not in plain_smtp_server.commands


def test_auth_without_plain_or_login_is_auth_unsupported(xoauth_only_smtp_server, settings_for):
    settings = authenticated(settings_for, xoauth_only_smtp_server, security="none")

    result = check(settings, PasswordSource(PASSWORD))

    assert result["error"]["code"] == "auth_unsupported"
    assert "XOAUTH2" in result["error"]["message"]
    assert "AUTH" not in xoauth_only_smtp_server.commands


def test_wrong_password_is_auth_failed_with_the_servers_reply(starttls_smtp_server, settings_for):
    source = PasswordSource("not-the-password")

    result = check(authenticated(settings_for, starttls_smtp_server), source)

    assert result["error"] == {
        "code": "auth_failed",
        "message": "The server rejected the username or password.",
        "smtp_code": 535,
        "smtp_message": "5.7.8 Authentication credentials invalid",
    }
    assert result["stage"] == "auth"
    assert source.calls == [False]
    assert result["secret"]["refreshed"] is False


def test_refused_sender_is_sender_rejected(sender_refusing_smtp_server, settings_for):
    settings = settings_for(sender_refusing_smtp_server.port, security="none", from_email=REFUSED_SENDER)

    result = check(settings, send_to="ops@example.com")

    assert result["error"]["code"] == "sender_rejected"
    assert result["stage"] == "mail_from"
    assert result["error"]["smtp_code"] == 550
    assert sender_refusing_smtp_server.messages == []


def test_refusal_is_reported_without_waiting_long_for_a_stalled_quit(tarpit_server, settings_for):
    started = time.monotonic()

    result = check(settings_for(tarpit_server.port, security="none", timeout_seconds=10), send_to="ops@example.com")

    assert time.monotonic() - started < 2
    assert result["error"]["code"] == "sender_rejected"
    assert result["transcript"][-1] == "C: QUIT"


def test_refused_recipient_is_recipient_rejected(recipient_refusing_smtp_server, settings_for):
    result = check(settings_for(recipient_refusing_smtp_server.port, security="none"), send_to=REFUSED_RECIPIENT)

    assert result["error"]["code"] == "recipient_rejected"
    assert result["stage"] == "rcpt_to"
    assert result["error"]["smtp_code"] == 550
    assert REFUSED_RECIPIENT in result["error"]["message"]
    assert recipient_refusing_smtp_server.messages == []


def test_refused_message_is_message_rejected(data_refusing_smtp_server, settings_for):
    result = check(settings_for(data_refusing_smtp_server.port, security="none"), send_to="ops@example.com")

    assert result["error"]["code"] == "message_rejected"
    assert result["stage"] == "data"
    assert result["error"]["smtp_code"] == 554
    assert result["message_id"] is None


def test_a_greeting_that_is_not_smtp_is_a_protocol_error(garbage_server, settings_for):
    result = check(settings_for(garbage_server.port))

    assert result["error"]["code"] == "protocol_error"
    assert result["stage"] == "greeting"
    assert result["transcript"] == ["S: HELLO THERE, THIS IS NOT SMTP"]


def test_plaintext_queued_behind_the_starttls_reply_is_refused(injecting_server, settings_for):
    result = check(settings_for(injecting_server.port))

    assert result["error"]["code"] == "protocol_error"
    assert result["stage"] == "tls"
    assert result["server"]["tls_version"] is None


def test_server_without_ehlo_is_greeted_with_helo(helo_only_server, settings_for):
    result = check(settings_for(helo_only_server.port, security="none"))

    assert result["ok"] is True
    assert result["server"]["extensions"] == []
    assert "C: HELO " + result["transcript"][1].removeprefix("C: EHLO ") in result["transcript"]


# --- Password rotation --------------------------------------------------------


def test_rotated_password_is_fetched_afresh_once_and_the_check_succeeds(starttls_smtp_server, settings_for):
    login = "rotating@example.com"
    starttls_smtp_server.handler.credentials[login] = "old-password"
    settings = settings_for(starttls_smtp_server.port, username=login)
    assert check(settings, PasswordSource("old-password", from_cache=True))["ok"] is True
    starttls_smtp_server.handler.credentials[login] = "new-password"
    source = PasswordSource("old-password", "new-password", from_cache=True)

    result = check(settings, source)

    assert result["ok"] is True
    assert result["secret"] == {"source": "hashicorp_vault", "version": "8", "refreshed": True}
    assert source.calls == [False, True]
    assert starttls_smtp_server.logins[-2:] == [("PLAIN", login), ("PLAIN", login)]
    assert result["transcript"].count("S: 535 5.7.8 Authentication credentials invalid") == 1


def test_refresh_that_returns_the_same_password_does_not_retry(starttls_smtp_server, settings_for):
    source = PasswordSource("stale-password", "stale-password", from_cache=True)

    result = check(authenticated(settings_for, starttls_smtp_server), source)

    assert result["error"]["code"] == "auth_failed"
    assert result["secret"]["refreshed"] is True
    assert source.calls == [False, True]
    assert len(starttls_smtp_server.logins) == 1


def test_refresh_that_fails_is_password_unavailable_at_auth(starttls_smtp_server, settings_for):
    source = PasswordSource("stale-password", PasswordUnavailable("provider down"), from_cache=True)

    result = check(authenticated(settings_for, starttls_smtp_server), source)

    assert result["error"]["code"] == "password_unavailable"
    assert result["stage"] == "auth"
    assert result["error"]["smtp_code"] == 535


# --- Destination policy ----------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "169.254.10.1", "100.100.100.200", "[fd00:ec2::254]", "fe80::1", "::ffff:169.254.169.254"]
)
def test_link_local_and_metadata_addresses_are_not_allowed(host, settings_for):
    result = check(settings_for(587, host=host), policy=DestinationPolicy())

    assert result["error"]["code"] == "destination_not_allowed"
    assert result["stage"] == "dns"
    assert result["transcript"] == []
    assert result["server"]["address"] is None


def test_every_resolved_address_is_checked_before_connecting(settings_for):
    listener = SilentListener()
    lookups = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return ["127.0.0.1", "169.254.169.254"]

    try:
        result = check(settings_for(listener.port, host="metadata.example.test"), resolver=resolver)
        assert listener.connections_made() == 0
    finally:
        listener.close()
    assert lookups == [("metadata.example.test", listener.port)]
    assert result["error"]["code"] == "destination_not_allowed"
    assert "169.254.169.254" in result["error"]["message"]


def test_port_outside_the_allow_list_is_refused_without_connecting(settings_for):
    listener = SilentListener()
    try:
        result = check(
            settings_for(listener.port, host="mail.example.test"),
            policy=DestinationPolicy(),
            resolver=lambda host, port: ["127.0.0.1"],
        )
        assert listener.connections_made() == 0
    finally:
        listener.close()
    assert result["error"]["code"] == "destination_not_allowed"
    assert str(listener.port) in result["error"]["message"]


def test_connection_goes_to_the_checked_address_while_tls_verifies_the_host_name(wrong_host_smtp_server, settings_for):
    # other.example.test resolves nowhere but through this resolver, and the
    # server's certificate names only it: success proves both halves.
    settings = authenticated(settings_for, wrong_host_smtp_server, host="other.example.test")

    result = check(settings, PasswordSource(PASSWORD), resolver=lambda host, port: ["127.0.0.1"])

    assert result["ok"] is True
    assert result["server"]["address"] == "127.0.0.1"


def test_policy_is_read_from_comma_separated_environment_values():
    policy = DestinationPolicy.from_strings("25, 587,2525", "10.0.0.0/8, fd00::/8")

    assert policy.allowed_ports == frozenset({25, 587, 2525})
    assert policy.denied_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert DestinationPolicy.from_strings(None, None) == DestinationPolicy()
    assert DestinationPolicy().denied_networks == DEFAULT_DENIED
    assert DestinationPolicy.from_strings(None, "").denied_networks == ()


@pytest.mark.parametrize(("ports", "networks"), [("25,smtp", None), ("70000", None), ("", None), (None, "10.0.0.0/33"), (None, "intranet")])
def test_policy_values_that_do_not_parse_are_refused(ports, networks):
    with pytest.raises(ValueError):
        DestinationPolicy.from_strings(ports, networks)


# --- Secrets stay secret ---------------------------------------------------------


@pytest.mark.parametrize("server_fixture", ["starttls_smtp_server", "login_only_smtp_server"])
def test_no_credential_reaches_the_result_or_the_logs(server_fixture, request, settings_for, caplog):
    server: SmtpServer = request.getfixturevalue(server_fixture)
    login = "canary@example.com"
    server.handler.credentials[login] = CANARY
    settings = settings_for(server.port, username=login)
    caplog.set_level(logging.DEBUG)

    accepted = check(settings, PasswordSource(CANARY), send_to="ops@example.com")
    server.handler.credentials[login] = "something-else"
    rejected = check(settings, PasswordSource(CANARY))

    assert accepted["ok"] is True
    assert rejected["error"]["code"] == "auth_failed"
    forms = [
        CANARY,
        base64.b64encode(CANARY.encode()).decode(),
        base64.b64encode(f"\0{login}\0{CANARY}".encode()).decode(),
    ]
    exposed = json.dumps([accepted, rejected], ensure_ascii=False) + caplog.text
    assert caplog.text
    for form in forms:
        assert form not in exposed
    assert CANARY not in repr(ResolvedPassword(CANARY, "plaintext"))


def test_internationalised_host_is_resolved_by_its_idna_2008_a_label(plain_smtp_server, settings_for):
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return [plain_smtp_server.host]

    result = check(settings_for(plain_smtp_server.port, host="straße.example", security="none"), resolver=resolver)

    # IDNA 2003 (Python's own codec) would have mapped the name to strasse.example.
    assert asked == ["xn--strae-oqa.example"]
    assert result["ok"] is True
