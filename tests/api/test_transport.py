"""Secrets travel encrypted: 403 tls_required over plain HTTP from afar, X-Forwarded-* only from trusted proxies."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import SYSTEM_SETTINGS, Tokens

PASSWORD_URL = "/v1/smtp/effective?include_password=true"
REMOTE = "198.51.100.7"  # TEST-NET-2: a client elsewhere on the network
PROXY = "10.0.0.5"


@pytest.fixture
def served(make_app):
    """An app with system settings, and a way to build others on the same database with other settings."""

    def build(**overrides):
        app = make_app(**overrides)
        return app, app.test_client(), Tokens(app)

    app, client, tokens = build()
    assert client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=tokens.headers("admin")).status_code == 200
    return build


def get(client, tokens, url=PASSWORD_URL, *, peer=REMOTE, scheme="http", headers=None):
    return client.get(
        url,
        headers=tokens.headers("secret-reader", **(headers or {})),
        environ_base={"REMOTE_ADDR": peer},
        base_url=f"{scheme}://localhost",
    )


def assert_tls_required(response):
    assert response.status_code == 403, response.json
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "tls_required"
    assert SYSTEM_SETTINGS["password"]["value"] not in response.get_data(as_text=True)


def test_a_password_asked_over_plain_http_from_another_host_is_refused(served):
    app, client, tokens = served()
    assert_tls_required(get(client, tokens))


def test_settings_without_the_password_are_served_over_plain_http(served):
    app, client, tokens = served()
    response = get(client, tokens, "/v1/smtp/effective")
    assert response.status_code == 200 and response.json["host"] == SYSTEM_SETTINGS["host"]


def test_a_password_is_served_over_https_and_to_a_loopback_client(served):
    app, client, tokens = served()
    assert get(client, tokens, scheme="https").json["password"] == "initial-password"
    for loopback in ("127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"):
        assert get(client, tokens, peer=loopback).json["password"] == "initial-password", loopback


def test_the_operator_may_allow_plaintext_secrets_behind_an_encrypting_proxy(served):
    app, client, tokens = served(allow_plaintext_secrets="true")
    assert get(client, tokens).json["password"] == "initial-password"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https"},
    ],
    ids=["proto", "for", "both"],
)
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(served, headers):
    app, client, tokens = served(trusted_proxies="10.0.0.0/8")
    assert_tls_required(get(client, tokens, headers=headers))


def test_a_trusted_proxy_that_terminated_https_may_carry_the_password(served):
    app, client, tokens = served(trusted_proxies="10.0.0.0/8")
    headers = {"X-Forwarded-For": REMOTE, "X-Forwarded-Proto": "https"}
    assert get(client, tokens, peer=PROXY, headers=headers).json["password"] == "initial-password"


def test_a_trusted_proxy_forwarding_plain_http_from_afar_is_refused(served):
    app, client, tokens = served(trusted_proxies="10.0.0.0/8, 127.0.0.1")
    headers = {"X-Forwarded-For": REMOTE, "X-Forwarded-Proto": "http"}
    assert_tls_required(get(client, tokens, peer=PROXY, headers=headers))
    # A sidecar proxy on loopback does not make its remote clients loopback.
    assert_tls_required(get(client, tokens, peer="127.0.0.1", headers=headers))


def test_the_client_is_the_right_most_address_not_a_trusted_proxy(served):
    app, client, tokens = served(trusted_proxies="10.0.0.0/8")
    # The left-most entries are whatever the client claimed; only the proxies' own entries count.
    spoofed = {"X-Forwarded-For": f"127.0.0.1, {REMOTE}, 10.0.0.9"}
    assert_tls_required(get(client, tokens, peer=PROXY, headers=spoofed))
    honest = {"X-Forwarded-For": f"{REMOTE}, 127.0.0.1"}
    assert_tls_required(get(client, tokens, peer=PROXY, headers=honest))


def test_the_request_log_names_the_client_a_trusted_proxy_forwarded_for(served, caplog):
    app, client, tokens = served(trusted_proxies="10.0.0.0/8")
    caplog.set_level(logging.INFO, logger="smtpconf.http")
    get(client, tokens, "/v1/smtp/effective", peer=PROXY, headers={"X-Forwarded-For": REMOTE})
    get(client, tokens, "/v1/smtp/effective", peer="203.0.113.50", headers={"X-Forwarded-For": "192.0.2.1"})
    clients = [record.client for record in caplog.records if record.getMessage() == "request"]
    assert clients == [REMOTE, "203.0.113.50"]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-an-address", "10.0.0.1/8/2"])
def test_a_bad_trusted_proxies_value_stops_the_service_from_starting(make_app, value):
    from service.config import ConfigError

    with pytest.raises(ConfigError, match="SMTPCONF_TRUSTED_PROXIES"):
        make_app(trusted_proxies=value)


def test_an_event_key_is_only_handed_out_over_a_secure_transport(served):
    app, client, tokens = served()
    url = "/v1/secret-providers/internal/event-key"
    headers = tokens.headers("security")
    refused = client.post(url, headers=headers, environ_base={"REMOTE_ADDR": REMOTE})
    assert_tls_required(refused)
    # Over HTTPS the request gets past the transport rule to the connection's own answer
    # (the internal store publishes no events).
    granted = client.post(url, headers=headers, environ_base={"REMOTE_ADDR": REMOTE}, base_url="https://localhost")
    assert granted.status_code == 409 and granted.json["code"] == "events_not_supported"
