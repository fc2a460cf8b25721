"""Effective reads answered before Flask: the same answers as the routes, errors, metrics and log lines included."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from service.observability import HTTP_REQUESTS

URL = "/v1/tenants/acme/smtp/effective?include_password=true"


@pytest.fixture
def configured(client, tokens, system_settings):
    client.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    client.put("/v1/tenants/acme/smtp", json={"from_name": "ACME"}, headers=tokens.headers("admin"))
    return client


def test_head_answered_by_the_route_carries_the_headers_of_get(configured, tokens):
    sender = tokens.headers("secret-reader")
    got, head = configured.get(URL, headers=sender), configured.head(URL, headers=sender)
    assert got.status_code == head.status_code == 200 and head.data == b""
    for name in ("Content-Type", "Content-Length", "ETag", "Cache-Control"):
        assert head.headers[name] == got.headers[name], name
    refused = configured.post(URL, headers=sender)
    assert refused.status_code == 405 and set(refused.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_a_settings_write_and_a_rotated_password_are_seen_at_the_next_read(configured, tokens):
    admin, sender = tokens.headers("admin"), tokens.headers("secret-reader")
    first = configured.get(URL, headers=sender)
    configured.put("/v1/tenants/acme/smtp", json={"from_name": "ACME Mail"}, headers=admin)
    written = configured.get(URL, headers={**sender, "If-None-Match": first.headers["ETag"]})
    assert written.status_code == 200 and written.json["from_name"] == "ACME Mail"
    rotation = {"from_name": "ACME Mail", "password": {"source": "plaintext", "value": "acme-rotated"}}
    configured.put("/v1/tenants/acme/smtp", json=rotation, headers=admin)
    rotated = configured.get(URL, headers={**sender, "If-None-Match": written.headers["ETag"]})
    assert rotated.status_code == 200 and rotated.json["password"] == "acme-rotated"
    assert configured.get(URL, headers={**sender, "If-None-Match": rotated.headers["ETag"]}).status_code == 304


def test_reads_are_counted_under_their_route_and_logged_with_their_caller(configured, tokens, caplog):
    caplog.set_level(logging.INFO, logger="smtpconf.http")
    counted = HTTP_REQUESTS.labels("GET", "/v1/tenants/<tenant>/smtp/effective", "200")
    before = counted._value.get()
    response = configured.get(URL, headers=tokens.headers("secret-reader", **{"X-Request-ID": "read-1"}))
    assert response.headers["X-Request-ID"] == "read-1"
    assert counted._value.get() == before + 1
    [line] = [r for r in caplog.records if r.getMessage() == "request"]
    named = (line.method, line.path, line.status, line.principal)
    assert named == ("GET", "/v1/tenants/acme/smtp/effective", 200, "test-secret-reader")
    assert caplog.text.count("acme-") == 0  # the password is not in the log line


def test_a_failure_while_reading_is_a_problem_not_a_crash(app, configured, tokens, monkeypatch):
    settings = app.extensions["smtpconf"].settings

    def fails(tenant):
        raise RuntimeError("boom")

    monkeypatch.setattr(settings, "effective", fails)
    failed = configured.get(URL, headers=tokens.headers("secret-reader"))
    assert failed.status_code == 500 and failed.json["code"] == "internal_error"
    assert failed.headers["Content-Type"] == "application/problem+json" and "boom" not in failed.get_data(as_text=True)

    def unavailable(tenant):
        raise OperationalError("SELECT", {}, Exception("could not connect to server"))

    monkeypatch.setattr(settings, "effective", unavailable)
    down = configured.get(URL, headers=tokens.headers("secret-reader"))
    assert down.status_code == 503 and down.json["code"] == "database_unavailable"


@pytest.mark.parametrize(
    "path", ["/v1/tenants/bad!id/smtp/effective", "/v1/tenants/a/b/smtp/effective", "/v1/smtp/effective/"]
)
def test_a_path_that_names_no_tenant_goes_to_the_routes(configured, tokens, path):
    response = configured.get(path, headers=tokens.headers("reader"))
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
