"""Settings API: submit, read back, tenant overrides, effective merge, ETags."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.conftest import Tokens


def put_system(client: FlaskClient, tokens: Tokens, document: dict[str, Any], **headers: str) -> Any:
    return client.put("/v1/smtp", json=document, headers=tokens.headers("admin", **headers))


def test_system_settings_round_trip_with_defaults_and_read_only_fields(client, tokens, system_settings):
    response = put_system(client, tokens, system_settings)
    assert response.status_code == 200, response.json
    body = client.get("/v1/smtp", headers=tokens.headers("reader")).json
    assert body["host"] == "smtp.example.com"
    assert body["port"] == 587
    assert body["insecure_skip_verify"] is False
    assert body["bcc"] == [] and body["reply_to"] is None
    assert body["password"] == {"source": "plaintext", "value_set": True}
    assert body["version"] == 1
    assert body["updated_by"] == "test-admin"
    assert body["updated_at"].endswith("Z")
    assert body["warnings"] == []


def test_system_defaults_apply_when_optional_fields_are_absent(client, tokens):
    response = put_system(client, tokens, {"host": "mail.example.org", "port": 25, "from_email": "a@example.org"})
    assert response.status_code == 200
    body = response.json
    assert body["security"] == "starttls"
    assert body["timeout_seconds"] == 10
    assert body["cc"] == [] and body["preferred_notifications"] == []
    assert body["warnings"] == ["anonymous_smtp"]


def test_every_put_increments_the_version(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    system_settings["port"] = 2525
    assert put_system(client, tokens, system_settings).json["version"] == 2


def test_system_settings_not_configured_is_a_problem(client, tokens):
    response = client.get("/v1/smtp", headers=tokens.headers("admin"))
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "settings_not_configured"


def test_tenant_override_inherits_unset_fields(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    override = {"from_email": "alerts@tenant-a.example", "from_name": "Tenant A", "port": 2525}
    response = client.put("/v1/tenants/tenant-a/smtp", json=override, headers=tokens.headers("admin"))
    assert response.status_code == 200, response.json
    tenant_doc = client.get("/v1/tenants/tenant-a/smtp", headers=tokens.headers("reader")).json
    assert tenant_doc["from_email"] == "alerts@tenant-a.example"
    assert "host" not in tenant_doc
    assert "host" in tenant_doc["inherited"] and "from_email" not in tenant_doc["inherited"]

    effective = client.get("/v1/tenants/tenant-a/smtp/effective", headers=tokens.headers("reader")).json
    assert effective["host"] == "smtp.example.com"
    assert effective["port"] == 2525
    assert effective["from_email"] == "alerts@tenant-a.example"
    assert effective["cc"] == ["audit@example.com"]
    assert effective["password"] == {"source": "plaintext", "value_set": True}
    assert set(effective["inherited"]) == {
        "host", "security", "insecure_skip_verify", "ca_certificate_pem", "reply_to", "envelope_from",
        "username", "domain", "password", "auth", "cc", "bcc", "preferred_notifications", "timeout_seconds",
    }


def test_tenant_null_overrides_to_null_and_makes_the_tenant_anonymous(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    client.put("/v1/tenants/anon/smtp", json={"username": None, "password": None}, headers=tokens.headers("admin"))
    effective = client.get("/v1/tenants/anon/smtp/effective", headers=tokens.headers("reader")).json
    assert effective["username"] is None and effective["password"] is None
    assert "anonymous_smtp" in effective["warnings"]
    assert "username" not in effective["inherited"]


def test_effective_of_a_tenant_without_override_is_the_system_level(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    body = client.get("/v1/tenants/nobody/smtp/effective", headers=tokens.headers("reader")).json
    assert body["host"] == "smtp.example.com"
    assert client.get("/v1/tenants/nobody/smtp", headers=tokens.headers("admin")).status_code == 404


def test_credentials_over_plaintext_warning(client, tokens, system_settings):
    system_settings["security"] = "none"
    body = put_system(client, tokens, system_settings).json
    assert body["warnings"] == ["credentials_over_plaintext"]


def test_delete_tenant_override_returns_to_inheritance(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    client.put("/v1/tenants/t1/smtp", json={"port": 465, "security": "ssl"}, headers=tokens.headers("admin"))
    assert client.delete("/v1/tenants/t1/smtp", headers=tokens.headers("admin")).status_code == 204
    assert client.get("/v1/tenants/t1/smtp/effective", headers=tokens.headers("reader")).json["port"] == 587
    assert client.delete("/v1/tenants/t1/smtp", headers=tokens.headers("admin")).status_code == 404


def test_stale_if_match_gives_412_and_changes_nothing(client, tokens, system_settings):
    first = put_system(client, tokens, system_settings)
    stale_etag = first.headers["ETag"]
    system_settings["port"] = 2525
    assert put_system(client, tokens, system_settings, **{"If-Match": stale_etag}).status_code == 200
    system_settings["port"] = 25
    response = put_system(client, tokens, system_settings, **{"If-Match": stale_etag})
    assert response.status_code == 412
    assert response.json["code"] == "precondition_failed"
    stored = client.get("/v1/smtp", headers=tokens.headers("admin")).json
    assert stored["port"] == 2525 and stored["version"] == 2


def test_if_match_on_tenant_delete_is_honoured(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    created = client.put("/v1/tenants/t1/smtp", json={"port": 465}, headers=tokens.headers("admin"))
    client.put("/v1/tenants/t1/smtp", json={"port": 25}, headers=tokens.headers("admin"))
    stale = created.headers["ETag"]
    assert client.delete("/v1/tenants/t1/smtp", headers=tokens.headers("admin", **{"If-Match": stale})).status_code == 412
    assert client.get("/v1/tenants/t1/smtp", headers=tokens.headers("admin")).json["port"] == 25


def test_if_match_on_a_level_that_does_not_exist_gives_412(client, tokens, system_settings):
    response = put_system(client, tokens, system_settings, **{"If-Match": '"abc"'})
    assert response.status_code == 412
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).status_code == 404


def test_current_if_match_is_accepted(client, tokens, system_settings):
    etag = put_system(client, tokens, system_settings).headers["ETag"]
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).headers["ETag"] == etag
    assert put_system(client, tokens, system_settings, **{"If-Match": etag}).status_code == 200


def test_effective_if_none_match_gives_304_until_a_change(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    first = client.get("/v1/smtp/effective", headers=tokens.headers("reader"))
    etag = first.headers["ETag"]
    again = client.get("/v1/smtp/effective", headers=tokens.headers("reader", **{"If-None-Match": etag}))
    assert again.status_code == 304
    assert again.data == b""
    system_settings["from_name"] = "Changed"
    put_system(client, tokens, system_settings)
    changed = client.get("/v1/smtp/effective", headers=tokens.headers("reader", **{"If-None-Match": etag}))
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_effective_with_password_for_secret_reader(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    response = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))
    assert response.status_code == 200
    assert response.json["password"] == "initial-password"
    assert response.json["password_version"] == "1"
    assert response.json["password_resolved_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"


def test_effective_etag_changes_when_the_password_version_changes(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    url = "/v1/smtp/effective?include_password=true"
    etag = client.get(url, headers=tokens.headers("secret-reader")).headers["ETag"]
    system_settings["password"] = {"source": "plaintext", "value": "rotated-password"}
    put_system(client, tokens, system_settings)
    response = client.get(url, headers=tokens.headers("secret-reader", **{"If-None-Match": etag}))
    assert response.status_code == 200
    assert response.json["password"] == "rotated-password"
    assert response.json["password_version"] == "2"


def test_round_trip_keeps_the_stored_password(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    read_back = client.get("/v1/smtp", headers=tokens.headers("admin")).json
    document = {k: v for k, v in read_back.items() if k not in ("version", "updated_at", "updated_by", "warnings")}
    document["from_name"] = "Renamed"
    assert put_system(client, tokens, document).status_code == 200
    body = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader")).json
    assert body["password"] == "initial-password"
    assert body["from_name"] == "Renamed"
    assert body["password_version"] == "1"


def test_round_trip_to_a_new_destination_requires_the_password(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    for field, value in (("host", "evil.example.net"), ("port", 2525), ("security", "ssl"), ("username", "other")):
        document = {**system_settings, "password": {"source": "plaintext", "value_set": True}, field: value}
        response = put_system(client, tokens, document)
        assert response.status_code == 422, field
        assert response.json["code"] == "password_required"
        assert "password" in response.json["errors"]
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).json["version"] == 1


def test_round_trip_without_a_stored_password_requires_the_password(client, tokens, system_settings):
    document = {**system_settings, "password": {"source": "plaintext", "value_set": True}}
    response = put_system(client, tokens, document)
    assert response.status_code == 422
    assert response.json["code"] == "password_required"


def test_tenant_plaintext_password_is_sealed_to_the_tenant(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    override = {"username": "tenant-user", "password": {"source": "plaintext", "value": "tenant-password"}}
    client.put("/v1/tenants/t2/smtp", json=override, headers=tokens.headers("admin"))
    tenant = client.get("/v1/tenants/t2/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))
    system = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader"))
    assert tenant.json["password"] == "tenant-password"
    assert system.json["password"] == "initial-password"


def test_notification_type_catalogue(client, tokens):
    for role in ("admin", "reader", "secret-reader", "security"):
        body = client.get("/v1/notification-types", headers=tokens.headers(role)).json
        names = [item["name"] for item in body["items"]]
        assert names[:2] == ["password_recovery", "license_status"]
        assert "admin_email_change" in names


def test_request_id_is_honoured_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32


def test_audit_records_every_change_newest_first(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    client.put("/v1/tenants/t1/smtp", json={"port": 465}, headers=tokens.headers("admin"))
    client.delete("/v1/tenants/t1/smtp", headers=tokens.headers("admin", **{"X-Request-ID": "req-del-1"}))
    items = client.get("/v1/audit", headers=tokens.headers("security")).json["items"]
    settings_events = [i for i in items if i["action"].startswith("smtp_settings")]
    assert [e["action"] for e in settings_events] == ["smtp_settings.delete", "smtp_settings.put", "smtp_settings.put"]
    delete, tenant_put, system_put = settings_events
    assert delete["target"] == "tenant:t1" and delete["before"] == {"port": 465} and delete["after"] is None
    assert delete["request_id"] == "req-del-1"
    assert tenant_put["actor"] == "test-admin"
    assert system_put["before"] is None
    assert system_put["after"]["password"] == {"source": "plaintext", "value_set": True}


def test_audit_is_paginated(client, tokens, system_settings):
    for port in (25, 465, 587, 2525):
        put_system(client, tokens, {**system_settings, "port": port, "password": {"source": "plaintext", "value": "x"}})
    first = client.get("/v1/audit?limit=2", headers=tokens.headers("admin")).json
    assert len(first["items"]) == 2 and first["next_before"] is not None
    second = client.get(f"/v1/audit?limit=2&before={first['next_before']}", headers=tokens.headers("admin")).json
    ids = [i["id"] for i in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4
    assert first["items"][0]["after"]["port"] == 2525


def test_audit_query_parameters_are_validated(client, tokens):
    response = client.get("/v1/audit?limit=0&before=x", headers=tokens.headers("admin"))
    assert response.status_code == 422
    assert set(response.json["errors"]) == {"limit", "before"}


def test_concurrent_puts_with_the_same_if_match_let_exactly_one_through(app, tokens, system_settings):
    from concurrent.futures import ThreadPoolExecutor

    client = app.test_client()
    etag = put_system(client, tokens, system_settings).headers["ETag"]
    headers = tokens.headers("admin", **{"If-Match": etag})

    def attempt(port: int) -> int:
        return app.test_client().put("/v1/smtp", json={**system_settings, "port": port}, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(1000, 1020)))
    assert sorted(statuses) == [200] + [412] * 19
    body = client.get("/v1/smtp", headers=tokens.headers("admin")).json
    assert body["version"] == 2
    audit = client.get("/v1/audit", headers=tokens.headers("admin")).json["items"]
    assert len([e for e in audit if e["action"] == "smtp_settings.put"]) == 2


# ?notification=TYPE applies the preferred notifications


def test_notification_of_a_preferred_type_carries_the_configured_cc_and_bcc(client, tokens, system_settings):
    system_settings["bcc"] = ["hidden@example.com"]
    put_system(client, tokens, system_settings)
    body = client.get("/v1/smtp/effective?notification=password_recovery", headers=tokens.headers("reader")).json
    assert body["notification"] == "password_recovery"
    assert body["cc"] == ["audit@example.com"] and body["bcc"] == ["hidden@example.com"]


def test_notification_of_another_type_carries_no_cc_or_bcc(client, tokens, system_settings):
    system_settings["bcc"] = ["hidden@example.com"]
    put_system(client, tokens, system_settings)
    plain = client.get("/v1/smtp/effective", headers=tokens.headers("reader")).json
    response = client.get("/v1/smtp/effective?notification=job_alerts", headers=tokens.headers("reader"))
    body = response.json
    assert body["notification"] == "job_alerts"
    assert body["cc"] == [] and body["bcc"] == []
    assert "notification" not in plain and plain["cc"] == ["audit@example.com"]
    assert {k: v for k, v in body.items() if k not in ("notification", "cc", "bcc")} == {
        k: v for k, v in plain.items() if k not in ("cc", "bcc")
    }


def test_notification_follows_a_tenants_own_preferences(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    override = {"preferred_notifications": ["job_alerts"], "cc": ["acme-audit@acme.example"]}
    assert client.put("/v1/tenants/acme/smtp", json=override, headers=tokens.headers("admin")).status_code == 200
    url = "/v1/tenants/acme/smtp/effective?notification="
    assert client.get(url + "job_alerts", headers=tokens.headers("admin")).json["cc"] == ["acme-audit@acme.example"]
    assert client.get(url + "password_recovery", headers=tokens.headers("admin")).json["cc"] == []


def test_an_unknown_notification_type_is_a_422_naming_the_parameter(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    for value in ("no_such_type", "", "Password_Recovery"):
        response = client.get(f"/v1/smtp/effective?notification={value}", headers=tokens.headers("reader"))
        assert response.status_code == 422, value
        assert response.json["code"] == "validation_failed"
        assert "notification" in response.json["errors"]


def test_notification_works_with_the_password_and_its_own_etag(client, tokens, system_settings):
    put_system(client, tokens, system_settings)
    sender = tokens.headers("secret-reader")
    url = "/v1/smtp/effective?include_password=true&notification="
    preferred = client.get(url + "license_status", headers=sender)
    other = client.get(url + "robot_alerts", headers=sender)
    assert preferred.json["password"] == other.json["password"] == "initial-password"
    assert preferred.json["cc"] == ["audit@example.com"] and other.json["cc"] == []
    assert preferred.headers["ETag"] != other.headers["ETag"]
    again = client.get(url + "robot_alerts", headers={**sender, "If-None-Match": other.headers["ETag"]})
    assert again.status_code == 304
    crossed = client.get(url + "license_status", headers={**sender, "If-None-Match": other.headers["ETag"]})
    assert crossed.status_code == 200 and crossed.json["cc"] == ["audit@example.com"]
