"""Every validation rule refuses bad input with the field named, as problem+json."""

from __future__ import annotations

import json

import pytest

ADDRESS_FIELDS = ("from_email", "reply_to", "envelope_from")
LIST_ADDRESS_FIELDS = ("cc", "bcc")


def assert_refused(response, field, code="validation_failed"):
    assert response.status_code == 422, response.json
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == code
    assert field in response.json["errors"], response.json["errors"]


@pytest.fixture
def put(client, tokens):
    def put(document, path="/v1/smtp"):
        return client.put(path, json=document, headers=tokens.headers("admin"))

    return put


@pytest.mark.parametrize("field", ["host", "port", "from_email"])
def test_system_level_requires_host_port_and_from_email(put, system_settings, field):
    del system_settings[field]
    assert_refused(put(system_settings), field)


@pytest.mark.parametrize("field", ADDRESS_FIELDS)
@pytest.mark.parametrize("value", ["a@example.com\r\nBcc: x@evil.example", "a@example.com\n", "\ra@example.com"])
def test_cr_or_lf_in_an_address_field_is_refused(put, system_settings, field, value):
    system_settings[field] = value
    response = put(system_settings)
    assert_refused(response, field)
    assert "CR or LF" in json.dumps(response.json["errors"][field])


@pytest.mark.parametrize("field", LIST_ADDRESS_FIELDS)
def test_cr_or_lf_in_a_recipient_list_is_refused(put, system_settings, field):
    system_settings[field] = ["ok@example.com", "bad@example.com\r\nX-Injected: 1"]
    response = put(system_settings)
    assert_refused(response, field)
    assert "1" in response.json["errors"][field]


@pytest.mark.parametrize("field", ["from_name", "username", "domain"])
def test_cr_or_lf_in_header_bound_text_is_refused(put, system_settings, field):
    system_settings[field] = "name\r\nBcc: x@evil.example"
    assert_refused(put(system_settings), field)


@pytest.mark.parametrize("value", ["not-an-address", "a@", "@example.com", "a b@example.com", "a@@example.com", ""])
def test_malformed_addresses_are_refused(put, system_settings, value):
    system_settings["from_email"] = value
    assert_refused(put(system_settings), "from_email")


def test_internationalised_addresses_are_accepted(put, system_settings):
    system_settings["from_email"] = "info@bücher.example"
    system_settings["cc"] = ["用户@例子.广告"]
    response = put(system_settings)
    assert response.status_code == 200, response.json
    assert response.json["from_email"] == "info@bücher.example"


PRIVATE_DOMAINS = ("corp.local", "mail.test", "host.internal", "example.lan", "localhost")


@pytest.mark.parametrize("domain", PRIVATE_DOMAINS)
@pytest.mark.parametrize("field", ADDRESS_FIELDS + LIST_ADDRESS_FIELDS)
def test_addresses_in_private_and_special_use_domains_are_accepted(put, system_settings, field, domain):
    address = f"noreply@{domain}"
    system_settings[field] = [address] if field in LIST_ADDRESS_FIELDS else address
    response = put(system_settings)
    assert response.status_code == 200, response.json
    assert response.json[field] == system_settings[field]


@pytest.mark.parametrize("domain", PRIVATE_DOMAINS)
def test_a_tenant_override_may_send_from_a_private_domain(put, system_settings, domain):
    assert put(system_settings).status_code == 200
    response = put({"from_email": f"alerts@acme.{domain}", "cc": [f"audit@{domain}"]}, "/v1/tenants/acme/smtp")
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    "value", ["a@xn--zz.local", "a@-corp.local", "a@corp..local", "a@corp.local\r\nBcc: x@mail.test", "a b@mail.test"]
)
def test_private_domains_still_get_their_syntax_checked(put, system_settings, value):
    system_settings["from_email"] = value
    assert_refused(put(system_settings), "from_email")


@pytest.mark.parametrize(
    "host", ["smtp.example.com", "localhost", "127.0.0.1", "::1", "[::1]", "2001:db8::25", "bücher.example", "mail-1.a.b.c"]
)
def test_host_names_and_ip_literals_are_accepted(put, system_settings, host):
    system_settings["host"] = host
    assert put(system_settings).status_code == 200


@pytest.mark.parametrize(
    "host", ["", "bad host", "-bad.example", "a..b", "smtp.example.com\r\n", "http://smtp.example.com", "1.2.3", "x" * 64 + ".com", "[not-ip]"]
)
def test_invalid_hosts_are_refused(put, system_settings, host):
    system_settings["host"] = host
    assert_refused(put(system_settings), "host")


@pytest.mark.parametrize("port", [0, 65536, -1, 10**30, "587", 587.5, True, None])
def test_port_must_be_an_integer_between_1_and_65535(put, system_settings, port):
    system_settings["port"] = port
    assert_refused(put(system_settings), "port")


@pytest.mark.parametrize("value", ["tls", "STARTTLS", "", None, 1])
def test_security_is_an_enum(put, system_settings, value):
    system_settings["security"] = value
    assert_refused(put(system_settings), "security")


@pytest.mark.parametrize("value", [0, 121, "10", 10.5, None])
def test_timeout_seconds_is_between_1_and_120(put, system_settings, value):
    system_settings["timeout_seconds"] = value
    assert_refused(put(system_settings), "timeout_seconds")


@pytest.mark.parametrize("missing", ["username", "password"])
def test_username_and_password_come_together(put, system_settings, missing):
    del system_settings[missing]
    assert_refused(put(system_settings), missing)


def test_tenant_credentials_checked_against_the_merged_settings(put, system_settings):
    put(system_settings)
    assert_refused(put({"username": None}, "/v1/tenants/t1/smtp"), "username")
    assert put({"username": "tenant-user"}, "/v1/tenants/t1/smtp").status_code == 200


def test_insecure_skip_verify_refused_in_fips_mode(make_app, tokens, system_settings):
    app = make_app(fips_mode="true")
    client = app.test_client()
    from tests.conftest import Tokens

    headers = Tokens(app).headers("admin")
    system_settings["insecure_skip_verify"] = True
    response = client.put("/v1/smtp", json=system_settings, headers=headers)
    assert_refused(response, "insecure_skip_verify", code="fips_forbids_skip_verify")
    system_settings["insecure_skip_verify"] = False
    assert client.put("/v1/smtp", json=system_settings, headers=headers).status_code == 200


def test_insecure_skip_verify_allowed_outside_fips_mode(put, system_settings):
    system_settings["insecure_skip_verify"] = True
    assert put(system_settings).status_code == 200


def test_insecure_skip_verify_must_be_a_boolean(put, system_settings):
    system_settings["insecure_skip_verify"] = "yes"
    assert_refused(put(system_settings), "insecure_skip_verify")


def test_notification_types_come_from_the_catalogue(put, system_settings):
    system_settings["preferred_notifications"] = ["password_recovery", "birthday_wishes"]
    response = put(system_settings)
    assert_refused(response, "preferred_notifications")
    assert "1" in response.json["errors"]["preferred_notifications"]


def test_unknown_fields_are_refused(put, system_settings):
    system_settings["smtp_relay_mode"] = "fast"
    assert_refused(put(system_settings), "smtp_relay_mode")


def test_unknown_fields_in_a_tenant_override_are_refused(put, system_settings):
    put(system_settings)
    assert_refused(put({"hostname": "x.example"}, "/v1/tenants/t1/smtp"), "hostname")


def test_ca_certificate_pem_must_hold_certificates(put, system_settings):
    system_settings["ca_certificate_pem"] = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    assert_refused(put(system_settings), "ca_certificate_pem")


def test_password_reference_needs_a_known_source(put, system_settings):
    system_settings["password"] = {"source": "sticky_note", "value": "x"}
    response = put(system_settings)
    assert_refused(response, "password")
    assert "source" in response.json["errors"]["password"]


@pytest.mark.parametrize(
    "reference",
    [{"value": "x"}, {"source": "plaintext"}, {"source": "plaintext", "value": ""}, {"source": "plaintext", "value": 5},
     {"source": "plaintext", "value": "x", "extra": 1}, "plain-string-password"],
)
def test_malformed_password_references_are_refused(put, system_settings, reference):
    system_settings["password"] = reference
    assert_refused(put(system_settings), "password")


def test_several_errors_are_reported_together(put, system_settings):
    system_settings.update(port=0, security="tls", from_email="nope")
    errors = put(system_settings).json["errors"]
    assert {"port", "security", "from_email"} <= set(errors)
    assert all(isinstance(messages, list) and messages for messages in errors.values())


def test_a_refused_put_changes_nothing_and_audits_nothing(client, tokens, put, system_settings):
    put(system_settings)
    put({**system_settings, "port": 0})
    assert client.get("/v1/smtp", headers=tokens.headers("admin")).json["version"] == 1
    audit = client.get("/v1/audit", headers=tokens.headers("admin")).json["items"]
    assert [e["action"] for e in audit if e["action"].startswith("smtp")] == ["smtp_settings.put"]


def test_invalid_json_is_a_400_problem(client, tokens):
    response = client.put("/v1/smtp", data=b'{"host": ', headers=tokens.headers("admin", **{"Content-Type": "application/json"}))
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "invalid_json"


def test_a_json_array_body_is_a_422(client, tokens):
    response = client.put("/v1/smtp", json=[1, 2], headers=tokens.headers("admin"))
    assert response.status_code == 422
    assert response.json["code"] == "validation_failed"


def test_a_body_over_64_kib_is_a_413_problem(client, tokens, system_settings):
    system_settings["from_name"] = "x" * (65 * 1024)
    response = client.put("/v1/smtp", json=system_settings, headers=tokens.headers("admin"))
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method_are_problems(client, tokens):
    missing = client.get("/v1/nothing-here", headers=tokens.headers("admin"))
    assert missing.status_code == 404 and missing.json["code"] == "not_found"
    assert missing.content_type == "application/problem+json"
    wrong = client.post("/v1/smtp", headers=tokens.headers("admin"))
    assert wrong.status_code == 405 and wrong.json["code"] == "method_not_allowed"
    assert "PUT" in wrong.headers["Allow"]


def test_an_unhandled_failure_is_a_500_problem_without_internals(app, client, tokens, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("internal detail /etc/secret-path")

    monkeypatch.setattr(app.extensions["smtpconf"].settings, "get", explode)
    response = client.get("/v1/smtp", headers=tokens.headers("admin"))
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "internal_error"
    assert "secret-path" not in response.get_data(as_text=True)
    assert "RuntimeError" not in response.get_data(as_text=True)


@pytest.mark.parametrize("tenant", ["-bad", "a" * 129, "with space", "semi;colon"])
def test_invalid_tenant_ids_are_404(client, tokens, tenant):
    response = client.get(f"/v1/tenants/{tenant}/smtp", headers=tokens.headers("admin"))
    assert response.status_code == 404
    assert response.json["code"] == "tenant_not_found"


def test_include_password_must_be_a_boolean(client, tokens, put, system_settings):
    put(system_settings)
    response = client.get("/v1/smtp/effective?include_password=maybe", headers=tokens.headers("secret-reader"))
    assert response.status_code == 422
    assert "include_password" in response.json["errors"]


@pytest.mark.parametrize("query", ["include_password=\xff", "include_password=%ff", "x=\xfe\xff"])
def test_a_query_string_that_is_not_utf8_is_a_4xx_problem(client, tokens, put, system_settings, query):
    put(system_settings)
    response = client.get(
        "/v1/smtp/effective", headers=tokens.headers("secret-reader"), environ_overrides={"QUERY_STRING": query}
    )
    assert 200 <= response.status_code < 500
    if response.status_code >= 400:
        assert response.content_type == "application/problem+json"
    audit = client.get("/v1/audit", headers=tokens.headers("admin"), environ_overrides={"QUERY_STRING": "limit=\xff"})
    assert audit.status_code == 422 and "limit" in audit.json["errors"]


def test_a_path_that_is_not_utf8_is_a_4xx_problem(client, tokens):
    response = client.get("/v1/tenants/x/smtp", headers=tokens.headers("admin"), environ_overrides={"PATH_INFO": "/v1/tenants/\xff/smtp"})
    assert response.status_code == 404 and response.content_type == "application/problem+json"
