"""Hostile input to every write endpoint: a 4xx problem naming the field, never a 5xx, and nothing stored changes."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import idna
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service import smtp_check
from service.app import create_app
from service.tokens import create_token
from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS

# TEST-NET-3 (RFC 5737): what every host name "resolves" to here; the policy refuses it.
UNROUTABLE = "203.0.113.1"
VAULT_TOKEN_VARIABLE = "SMTPCONF_TEST_BAD_INPUT_VAULT_TOKEN"
TENANT_OVERRIDE = {"from_email": "alerts@acme.example", "from_name": "Acme Alerts"}
INJECTIONS = ["a@example.com\r\nBcc: victim@example.org", "\na@example.com"]
HUGE = 10**100


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CLOSED_PORT = _closed_loopback_port()


def _vault_connection() -> dict[str, Any]:
    return {
        "type": "hashicorp_vault",
        "url": f"http://127.0.0.1:{CLOSED_PORT}",
        "auth": {"method": "token", "token": {"env": VAULT_TOKEN_VARIABLE}},
        "allowed_secrets": ["mail/*"],
        "timeout_seconds": 1,
    }


@dataclasses.dataclass(frozen=True, eq=False)
class Write:
    """A write endpoint and a body it accepts."""

    method: str
    path: str
    role: str
    valid: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclasses.dataclass(frozen=True, eq=False)
class SettingsWrite(Write):
    """A write endpoint whose body is, or carries under ``settings``, a settings document."""

    nested: bool = False

    def body(self, **changes: Any) -> dict[str, Any]:
        document = {**(self.valid["settings"] if self.nested else self.valid), **changes}
        return {**self.valid, "settings": document} if self.nested else document

    def field_errors(self, problem: dict[str, Any]) -> dict[str, Any]:
        return problem["errors"]["settings"] if self.nested else problem["errors"]


def _settings_writes() -> list[SettingsWrite]:
    system, tenant = dict(SYSTEM_SETTINGS), dict(TENANT_OVERRIDE)
    return [
        SettingsWrite("PUT", "/v1/smtp", "admin", system),
        SettingsWrite("PUT", "/v1/tenants/acme/smtp", "admin", tenant),
        SettingsWrite("POST", "/v1/smtp/validate", "admin", {"settings": system}, nested=True),
        SettingsWrite("POST", "/v1/tenants/acme/smtp/validate", "admin", {"settings": tenant}, nested=True),
        SettingsWrite("POST", "/v1/smtp/test-connection", "admin", {"settings": system}, nested=True),
        SettingsWrite("POST", "/v1/tenants/acme/smtp/test-connection", "admin", {"settings": tenant}, nested=True),
    ]


SETTINGS_WRITES = _settings_writes()
PUT_SYSTEM, PUT_TENANT = SETTINGS_WRITES[:2]
CANDIDATE_WRITES = SETTINGS_WRITES[2:]
TEST_CONNECTIONS = [SETTINGS_WRITES[4], SETTINGS_WRITES[5]]
PUT_CONNECTION = Write("PUT", "/v1/secret-providers/corp-vault", "security", _vault_connection())
PUT_SECRET = Write("PUT", "/v1/secrets/smtp/relay", "security", {"value": "rotated-relay-password"})
INVALIDATE = Write("POST", "/v1/secret-cache/invalidate", "security", {"provider": "internal", "secret": "smtp/relay"})
WRITES: list[Write] = [*SETTINGS_WRITES, PUT_CONNECTION, PUT_SECRET, INVALIDATE]


def each(writes: list[Write], values: list[Any], *, covered: Sequence[tuple[Write, Any]] = ()) -> list[Any]:
    """Every write with every value, less the pairs tests/api/test_validation.py already covers."""
    return [
        pytest.param(write, value, id=f"{write}-{value!r}")
        for write in writes
        for value in values
        if not any(write is done and value == known for done, known in covered)
    ]


class Api:
    """One seeded app shared by the module; every refusal is checked to leave all it stores unchanged."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        db = app.extensions["smtpconf"].db
        self.tokens = {role: create_token(db, f"bad-input-{role}", [role]) for role in ("admin", "security")}
        self.resolved: list[str] = []

    def headers(self, role: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}", **extra}

    def send(self, write: Write, *, json_body: Any = None, data: bytes | None = None) -> TestResponse:
        if data is not None:
            headers = self.headers(write.role, **{"Content-Type": "application/json"})
            return self.client.open(write.path, method=write.method, data=data, headers=headers)
        return self.client.open(write.path, method=write.method, json=json_body, headers=self.headers(write.role))

    def seed(self) -> None:
        for write in (PUT_SECRET, PUT_CONNECTION, PUT_SYSTEM, PUT_TENANT):
            response = self.send(write, json_body=write.valid)
            assert response.status_code in (200, 201), response.json

    def stored(self) -> dict[str, Any]:
        """Versions of everything the write endpoints change, and the newest audit event."""
        admin, security = self.headers("admin"), self.headers("security")
        get = self.client.get
        return {
            "system": get("/v1/smtp", headers=admin).json["version"],
            "tenant": get("/v1/tenants/acme/smtp", headers=admin).json["version"],
            "connection": get("/v1/secret-providers/corp-vault", headers=security).json["version"],
            "secret": get("/v1/secrets/smtp/relay", headers=security).json["current_version"],
            "audit": get("/v1/audit?limit=1", headers=admin).json["items"][0]["id"],
        }

    def refuse(
        self, write: Write, status: int = 422, *, json_body: Any = None, data: bytes | None = None
    ) -> dict[str, Any]:
        """Send a request that must be refused; its problem document."""
        before = self.stored()
        response = self.send(write, json_body=json_body, data=data)
        assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
        assert response.content_type == "application/problem+json"
        problem = response.json
        assert problem["status"] == status and problem["code"] and problem["title"] and problem["detail"]
        if status == 422:
            assert isinstance(problem["errors"], dict) and problem["errors"]
        assert self.stored() == before
        return problem


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    database = tmp_path_factory.mktemp("bad-input") / "smtpconf.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VAULT_TOKEN_VARIABLE, "bad-input-vault-token")
        app = create_app(
            {
                "database_url": f"sqlite:///{database}",
                "master_key": MASTER_KEY,
                "testing": True,
                # Nothing reaches a network: the one allowed port is closed, every address denied.
                "smtp_allowed_ports": str(CLOSED_PORT),
                "smtp_denied_networks": "0.0.0.0/0,::/0",
                "rate_limit_per_minute": 1_000_000,
            }
        )
        app.extensions["smtpconf"].db.upgrade()
        api = Api(app)

        def resolve(host: str, port: int) -> list[str]:
            api.resolved.append(host)
            return [UNROUTABLE]

        patch.setattr(smtp_check, "_system_resolver", resolve)
        api.seed()
        yield api
        app.extensions["smtpconf"].close()


def messages(errors: dict[str, Any], *path: str) -> Any:
    """The messages at ``path`` in a problem's ``errors``; never empty."""
    for key in path:
        assert key in errors, (path, errors)
        errors = errors[key]
    assert errors
    return errors


# CR and LF in addresses (PUT /v1/smtp is covered in tests/api/test_validation.py)


@pytest.mark.parametrize("write", SETTINGS_WRITES[1:], ids=str)
@pytest.mark.parametrize("field", ["from_email", "reply_to", "envelope_from"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_cr_or_lf_in_an_address_is_refused_by_every_settings_endpoint(api, write, field, value):
    problem = api.refuse(write, json_body=write.body(**{field: value}))
    assert "CR or LF" in json.dumps(messages(write.field_errors(problem), field))


@pytest.mark.parametrize("write", SETTINGS_WRITES[1:], ids=str)
@pytest.mark.parametrize("field", ["cc", "bcc"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_cr_or_lf_in_a_recipient_list_is_refused_by_every_settings_endpoint(api, write, field, value):
    problem = api.refuse(write, json_body=write.body(**{field: ["audit@example.com", value]}))
    assert "CR or LF" in json.dumps(messages(write.field_errors(problem), field, "1"))


@pytest.mark.parametrize("write", TEST_CONNECTIONS, ids=str)
@pytest.mark.parametrize(
    "value", ["ops@example.com\nBcc: victim@example.org", "ops@example.com\r", "\r\nops@example.com"]
)
def test_cr_or_lf_in_the_test_mail_recipient_is_refused(api, write, value):
    problem = api.refuse(write, json_body={**write.valid, "to": value})
    assert "CR or LF" in json.dumps(messages(problem["errors"], "to"))


# bodies that are not acceptable JSON documents


@pytest.mark.parametrize("write", WRITES[1:], ids=str)
def test_a_body_over_64_kib_is_a_413_problem(api, write):
    body = json.dumps({**write.valid, "padding": "x" * (64 * 1024)}).encode()
    assert api.refuse(write, 413, data=body)["code"] == "payload_too_large"


NOT_JSON = {
    "truncated": b'{"host": ',
    "single-quoted": b"{'value': 'x'}",
    "trailing-comma": b'{"value": "x",}',
    "not-utf-8": b'{"value": "\xff\xfe"}',
    "nan": b'{"value": NaN}',
    "infinity": b'{"port": Infinity}',
    "deeply-nested": b"[" * 50_000,
    "deeply-nested-object": b'{"a":' * 10_000,
    "5000-digit-number": b'{"port": 1' + b"0" * 5000 + b"}",
    # Whitespace alone is no JSON text, and not "no body" either (only zero bytes are).
    "crlf-only": b"\r\n",
    "form-feed-only": b"\x0c",
    "spaces-only": b"   ",
    "form-feed-before-object": b"\x0c{}",
}


@pytest.mark.parametrize("write,payload", each(WRITES, list(NOT_JSON), covered=[(PUT_SYSTEM, "truncated")]))
def test_a_body_that_is_not_json_is_a_400_problem(api, write, payload):
    assert api.refuse(write, 400, data=NOT_JSON[payload])["code"] == "invalid_json"


@pytest.mark.parametrize("write", [PUT_TENANT, PUT_CONNECTION, PUT_SECRET], ids=str)
def test_a_missing_body_is_a_400_problem_where_a_body_is_required(api, write):
    assert api.refuse(write, 400, data=b"")["code"] == "invalid_json"


@pytest.mark.parametrize("write", WRITES, ids=str)
@pytest.mark.parametrize("body", [None, [], "text", 0, False], ids=repr)
def test_a_body_that_is_not_an_object_is_a_422_problem(api, write, body):
    problem = api.refuse(write, data=json.dumps(body).encode())
    assert problem["code"] == "validation_failed"


# wrong types, empty strings and huge numbers in every field

WRONG_TYPES: dict[str, list[Any]] = {
    "host": [25, {"name": "smtp.example.com"}],
    "port": ["25", [587]],
    "security": [["starttls"], True],
    "insecure_skip_verify": ["false", 0],
    "ca_certificate_pem": [123, ["-----BEGIN CERTIFICATE-----"]],
    "from_email": [1, ["noreply@example.com"]],
    "from_name": [1, {"text": "Example"}],
    "reply_to": [["a@example.com"], 7],
    "envelope_from": [{"address": "a@example.com"}, False],
    "username": [1, ["mailer"]],
    "domain": [True, 3.5],
    "password": [["initial-password"], 42],
    "cc": ["audit@example.com", [1]],
    "bcc": [{"0": "audit@example.com"}, [None]],
    "preferred_notifications": ["password_recovery", [1]],
    "timeout_seconds": ["30", [10]],
}


@pytest.mark.parametrize("write", SETTINGS_WRITES, ids=str)
@pytest.mark.parametrize("field,value", [(f, v) for f, values in WRONG_TYPES.items() for v in values], ids=repr)
def test_a_wrong_type_in_any_settings_field_is_refused(api, write, field, value):
    problem = api.refuse(write, json_body=write.body(**{field: value}))
    messages(write.field_errors(problem), field)


EMPTY: dict[str, Any] = {
    "security": "",
    "ca_certificate_pem": "",
    "from_name": "",
    "reply_to": "",
    "envelope_from": "",
    "username": "",
    "domain": "",
    "cc": [""],
    "bcc": [""],
    "preferred_notifications": [""],
    "password": {"source": ""},
}


@pytest.mark.parametrize(
    "write,field",
    each(
        SETTINGS_WRITES,
        ["host", "from_email", *EMPTY],
        covered=[(PUT_SYSTEM, f) for f in ("host", "from_email", "security")],
    ),
)
def test_an_empty_string_in_any_settings_field_is_refused(api, write, field):
    problem = api.refuse(write, json_body=write.body(**{field: EMPTY.get(field, "")}))
    messages(write.field_errors(problem), field)


@pytest.mark.parametrize("write", SETTINGS_WRITES, ids=str)
@pytest.mark.parametrize(
    "field,value",
    [
        ("port", HUGE),
        ("timeout_seconds", HUGE),
        ("port", -HUGE),
        ("password", {"source": "internal", "secret": "smtp/relay", "version": HUGE}),
        ("password", {"source": "internal", "secret": "smtp/relay", "version": 2**63}),
        (
            "password",
            {
                "source": "hashicorp_vault",
                "provider": "corp-vault",
                "path": "mail/smtp",
                "key": "password",
                "version": HUGE,
            },
        ),
    ],
    ids=repr,
)
def test_a_huge_integer_is_refused(api, write, field, value):
    problem = api.refuse(write, json_body=write.body(**{field: value}))
    messages(write.field_errors(problem), field)


@pytest.mark.parametrize("write", TEST_CONNECTIONS, ids=str)
@pytest.mark.parametrize(
    "field,value",
    [("to", 5), ("to", ["ops@example.com"]), ("to", ""), ("include_cc_bcc", "true"), ("include_cc_bcc", 1)],
    ids=repr,
)
def test_wrong_test_mail_fields_are_refused(api, write, field, value):
    problem = api.refuse(write, json_body={**write.valid, field: value})
    messages(problem["errors"], field)


@pytest.mark.parametrize("write", CANDIDATE_WRITES, ids=str)
@pytest.mark.parametrize("settings", ["smtp.example.com", ["host"], 5, True], ids=repr)
def test_candidate_settings_that_are_not_an_object_are_refused(api, write, settings):
    problem = api.refuse(write, json_body={"settings": settings})
    messages(problem["errors"], "settings")


CONNECTION_FIELDS: list[tuple[tuple[str, ...], Any]] = [
    (("type",), 5),
    (("type",), ""),
    (("url",), 5),
    (("url",), ""),
    (("url",), "ftp://127.0.0.1/"),
    (("namespace",), 5),
    (("mount",), ""),
    (("kv_version",), "2"),
    (("kv_version",), HUGE),
    (("auth",), "token"),
    (("auth", "token"), "inline-token-value"),
    (("auth", "method"), 5),
    (("ca_certificate_pem",), 5),
    (("timeout_seconds",), "5"),
    (("timeout_seconds",), HUGE),
    (("allowed_secrets",), "mail/*"),
    (("allowed_secrets", "0"), 5),
    (("allowed_secrets", "0"), ""),
    (("cache_ttl_seconds",), "300"),
    (("cache_ttl_seconds",), 1.5),
    (("cache_ttl_seconds",), HUGE),
    (("max_stale_seconds",), True),
    (("max_stale_seconds",), -HUGE),
]


def _replace(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    target = document
    for key in path[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(path[-1])] = value
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize("path,value", CONNECTION_FIELDS, ids=repr)
def test_a_wrong_value_in_a_connection_field_is_refused(api, path, value):
    problem = api.refuse(PUT_CONNECTION, json_body=_replace(PUT_CONNECTION.valid, path, value))
    messages(problem["errors"], *path)


@pytest.mark.parametrize("value", [5, ["x"], {"text": "x"}, True, None], ids=repr)
def test_a_secret_value_that_is_not_a_string_is_refused(api, value):
    messages(api.refuse(PUT_SECRET, json_body={"value": value})["errors"], "value")


@pytest.mark.parametrize(
    "body,field",
    [
        ({"provider": ["internal"]}, "provider"),
        ({"provider": ""}, "provider"),
        ({"provider": "x" * 129}, "provider"),
        ({"secret": 5}, "secret"),
        ({"secret": ""}, "secret"),
        ({"provider": "internal", "secret": None}, "secret"),
    ],
    ids=repr,
)
def test_a_wrong_cache_invalidation_field_is_refused(api, body, field):
    messages(api.refuse(INVALIDATE, json_body=body)["errors"], field)


# unknown fields (PUT /v1/smtp and the tenant override are covered in tests/api/test_validation.py)


@pytest.mark.parametrize("write", [*CANDIDATE_WRITES, PUT_CONNECTION, PUT_SECRET, INVALIDATE], ids=str)
def test_an_unknown_top_level_field_is_refused(api, write):
    messages(api.refuse(write, json_body={**write.valid, "priority": "high"})["errors"], "priority")


@pytest.mark.parametrize("write", CANDIDATE_WRITES, ids=str)
def test_an_unknown_field_in_candidate_settings_is_refused(api, write):
    messages(write.field_errors(api.refuse(write, json_body=write.body(relay_mode="fast"))), "relay_mode")


@pytest.mark.parametrize("write", SETTINGS_WRITES, ids=str)
def test_an_unknown_field_in_a_password_reference_is_refused(api, write):
    reference = {"source": "internal", "secret": "smtp/relay", "cache": False}
    messages(write.field_errors(api.refuse(write, json_body=write.body(password=reference))), "password")


def test_an_unknown_field_in_a_connection_auth_document_is_refused(api):
    document = _replace(PUT_CONNECTION.valid, ("auth", "renew"), True)
    messages(api.refuse(PUT_CONNECTION, json_body=document)["errors"], "auth")


# internationalised and unicode host names

VALID_HOSTS = ["bücher.example", "例子.广告", "xn--bcher-kva.example", "bücher.example.", "ＭＡＩＬ.example"]
INVALID_HOSTS = [
    "☃.example",  # a symbol: IDNA 2008 has no place for it
    "-bücher.example",  # leading hyphen in the Unicode label
    "bücher-.example",  # trailing hyphen
    "xn--zz.example",  # an A-label that is not valid punycode
    "例子..广告",  # empty label
    "bad_host.例子",  # underscore
    "bü cher.example",  # space
    "ü" * 64 + ".example",  # label over 63 octets once encoded
    "bücher.example\u2028",  # a line separator
    "١٢.example",  # digits of a right-to-left script break the bidi rule
]


@pytest.mark.parametrize("write", [PUT_SYSTEM, PUT_TENANT], ids=str)
@pytest.mark.parametrize("host", VALID_HOSTS)
def test_a_valid_internationalised_host_is_stored(api, write, host):
    response = api.send(write, json_body=write.body(host=host))
    assert response.status_code == 200, response.json
    assert response.json["host"] == host


@pytest.mark.parametrize("write", CANDIDATE_WRITES, ids=str)
@pytest.mark.parametrize("host", VALID_HOSTS)
def test_a_valid_internationalised_host_is_checked(api, write, host):
    # The password is sent again: a stored one is never sent to a new destination.
    settings = {
        "host": host,
        "port": CLOSED_PORT,
        "username": "mailer@example.com",
        "password": {"source": "plaintext", "value": "candidate-password"},
    }
    response = api.send(write, json_body=write.body(**settings))
    assert response.status_code == 200, response.json
    assert response.json["error"]["code"] == "destination_not_allowed"
    # DNS is asked for the IDNA 2008 A-label, the form validation judged.
    assert api.resolved[-1] == (host if host.isascii() else idna.encode(host, uts46=True).decode("ascii"))


@pytest.mark.parametrize("write", SETTINGS_WRITES, ids=str)
@pytest.mark.parametrize("host", INVALID_HOSTS)
def test_an_invalid_internationalised_host_is_refused(api, write, host):
    messages(write.field_errors(api.refuse(write, json_body=write.body(host=host))), "host")


@pytest.mark.parametrize("write", SETTINGS_WRITES[1:], ids=str)
@pytest.mark.parametrize("field", ["from_email", "reply_to", "envelope_from"])
def test_an_internationalised_address_is_accepted(api, write, field):
    response = api.send(write, json_body=write.body(**{field: "用户@例子.广告"}))
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("write", SETTINGS_WRITES, ids=str)
@pytest.mark.parametrize(
    "address", ["info@☃.example", "info@bü cher.example", "info@-bücher.example", "info@例子..广告"]
)
def test_an_invalid_internationalised_address_is_refused(api, write, address):
    messages(write.field_errors(api.refuse(write, json_body=write.body(reply_to=address))), "reply_to")
