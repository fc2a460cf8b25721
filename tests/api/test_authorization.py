"""The role × endpoint matrix of the contract, every cell, plus no token at all."""

from __future__ import annotations

import pytest

from service.tokens import create_token
from tests.conftest import SYSTEM_SETTINGS

ROLES = ("admin", "reader", "secret-reader", "security", "sender")
# Loopback port 25 is closed here: a check against it ends at once with connection_refused.
# No recipient: a sender gets 422 without any mail server being asked.
NO_RECIPIENT = {"subject": "matrix", "text": "matrix"}
CANDIDATE = {"settings": {"host": "127.0.0.1", "port": 25, "security": "none", "from_email": "a@example.com"}}
ANY = frozenset(ROLES)

# (method, path, roles allowed, body)
MATRIX = [
    ("GET", "/v1/smtp", {"admin", "reader"}, None),
    ("PUT", "/v1/smtp", {"admin"}, SYSTEM_SETTINGS),
    ("GET", "/v1/tenants/t1/smtp", {"admin", "reader"}, None),
    ("PUT", "/v1/tenants/t1/smtp", {"admin"}, {"port": 465}),
    ("DELETE", "/v1/tenants/t1/smtp", {"admin"}, None),
    ("GET", "/v1/smtp/effective", {"admin", "reader", "secret-reader"}, None),
    ("GET", "/v1/smtp/effective?notification=password_recovery", {"admin", "reader", "secret-reader"}, None),
    ("GET", "/v1/smtp/effective?include_password=true", {"secret-reader"}, None),
    ("GET", "/v1/tenants/t1/smtp/effective", {"admin", "reader", "secret-reader"}, None),
    ("GET", "/v1/tenants/t1/smtp/effective?include_password=true", {"secret-reader"}, None),
    ("GET", "/v1/notification-types", ANY, None),
    ("GET", "/v1/whoami", ANY, None),
    ("GET", "/v1/tenants", {"admin", "reader"}, None),
    ("GET", "/v1/audit", {"admin", "security"}, None),
    ("POST", "/v1/smtp/validate", {"admin"}, CANDIDATE),
    ("POST", "/v1/tenants/t1/smtp/validate", {"admin"}, CANDIDATE),
    ("POST", "/v1/smtp/test-connection", {"admin"}, CANDIDATE),
    ("POST", "/v1/tenants/t1/smtp/test-connection", {"admin"}, CANDIDATE),
    ("GET", "/v1/secret-providers", {"security", "admin"}, None),
    ("GET", "/v1/secret-providers/internal", {"security", "admin"}, None),
    ("PUT", "/v1/secret-providers/internal", {"security"}, {"type": "internal", "allowed_secrets": ["smtp/*"]}),
    ("DELETE", "/v1/secret-providers/no-such-connection", {"security"}, None),
    ("POST", "/v1/secret-providers/internal/check", {"security"}, None),
    ("GET", "/v1/secret-providers/internal/secrets", {"security", "admin"}, None),
    ("POST", "/v1/secret-providers/internal/event-key", {"security"}, None),
    ("GET", "/v1/secret-provider-types", ANY, None),
    ("POST", "/v1/secret-cache/invalidate", {"security"}, None),
    ("GET", "/v1/secrets", {"security"}, None),
    ("PUT", "/v1/secrets/smtp/relay", {"security"}, {"value": "matrix-value"}),
    ("GET", "/v1/secrets/smtp/relay", {"security"}, None),
    ("DELETE", "/v1/secrets/no/such/secret", {"security"}, None),
    ("POST", "/v1/messages", {"sender"}, NO_RECIPIENT),
    ("POST", "/v1/tenants/t1/messages", {"sender"}, NO_RECIPIENT),
    ("GET", "/v1/messages", {"admin", "security"}, None),
    ("GET", "/v1/messages?tenant=t1", {"admin", "security"}, None),
    ("GET", "/v1/messages/1", {"admin", "security"}, None),
]
RULES = {
    "/v1/tenants/t1/": "/v1/tenants/<tenant>/",
    "/v1/secret-providers/internal": "/v1/secret-providers/<name>",
    "/v1/secret-providers/no-such-connection": "/v1/secret-providers/<name>",
    "/v1/secrets/smtp/relay": "/v1/secrets/<path:name>",
    "/v1/secrets/no/such/secret": "/v1/secrets/<path:name>",
    "/v1/messages/1": "/v1/messages/<int:id>",
}


def rule_of(path: str) -> str:
    path = path.split("?")[0]
    for concrete, rule in RULES.items():
        path = path.replace(concrete, rule)
    return path
PUBLIC = [("GET", "/healthz"), ("GET", "/openapi.yaml"), ("GET", "/readyz"), ("GET", "/metrics")]


@pytest.fixture
def configured(client, tokens):
    assert client.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=tokens.headers("admin")).status_code == 200
    return client


@pytest.mark.parametrize("method,path,allowed,body", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_role_matrix(configured, tokens, method, path, allowed, body):
    client = configured
    for role in ROLES:
        response = client.open(path, method=method, json=body, headers=tokens.headers(role))
        if role in allowed:
            assert response.status_code not in (401, 403), (role, response.status_code, response.json)
            assert response.status_code < 500
        else:
            assert response.status_code == 403, (role, response.status_code)
            assert response.content_type == "application/problem+json"
            assert response.json["code"] == "forbidden"
    anonymous = client.open(path, method=method, json=body)
    assert anonymous.status_code == 401
    assert anonymous.json["code"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer ", "Bearer not-a-real-token", "Basic YWRtaW46YWRtaW4=", "smtpconf_abc"])
def test_bad_credentials_are_401(client, header):
    response = client.get("/v1/smtp", headers={"Authorization": header})
    assert response.status_code == 401


def test_a_token_with_several_roles_has_each_of_them(configured, tokens):
    headers = tokens.headers("admin", "secret-reader")
    assert configured.put("/v1/smtp", json=SYSTEM_SETTINGS, headers=headers).status_code == 200
    assert configured.get("/v1/smtp/effective?include_password=true", headers=headers).status_code == 200


def test_admin_does_not_imply_security_or_secret_reader(configured, tokens):
    headers = tokens.headers("admin")
    assert configured.get("/v1/smtp/effective?include_password=true", headers=headers).status_code == 403


def test_admin_reads_effective_settings_without_the_password(configured, tokens):
    response = configured.get("/v1/smtp/effective", headers=tokens.headers("admin"))
    assert response.status_code == 200
    body = response.json
    assert body["host"] == SYSTEM_SETTINGS["host"]
    assert body["password"] == {"source": "plaintext", "value_set": True}
    assert SYSTEM_SETTINGS["password"]["value"] not in response.get_data(as_text=True)


@pytest.mark.parametrize("method,path", PUBLIC)
def test_public_endpoints_need_no_token(client, method, path):
    assert client.open(path, method=method).status_code == 200


def test_every_protected_route_is_in_the_matrix(app):
    covered = {(m, rule_of(p)) for m, p, _, _ in MATRIX}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if not hasattr(view, "required_roles"):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, rule.rule) in covered, f"{method} {rule.rule} has no row in the role matrix"


def _restricted(app, name: str, *tenants: str) -> dict[str, str]:
    token = create_token(app.extensions["smtpconf"].db, name, list(ROLES), tenants=list(tenants))
    return {"Authorization": f"Bearer {token}"}


def _tenant_of(path: str) -> str:
    """The tenant a matrix path acts for: t1, or "" for the system level."""
    if "/v1/tenants/t1/" in path or "tenant=t1" in path:
        return "t1"
    return ""


@pytest.mark.parametrize("method,path,allowed,body", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_a_restricted_token_reaches_its_tenants_routes_only(configured, app, method, path, allowed, body):
    own = _restricted(app, "restricted-t1", "t1")
    other = _restricted(app, "restricted-t2", "t2")
    response = configured.open(path, method=method, json=body, headers=own)
    elsewhere = configured.open(path, method=method, json=body, headers=other)
    if allowed == ANY:
        # The catalogues and whoami belong to no level.
        assert response.status_code == 200 and elsewhere.status_code == 200
        return
    if path == "/v1/messages/1":
        # The row does not exist: the level is not known, so 404 for both.
        assert response.status_code == 404 and elsewhere.status_code == 404
        return
    if _tenant_of(path) == "t1":
        assert response.status_code not in (401, 403), (response.status_code, response.json)
        assert response.status_code < 500
    else:
        assert response.status_code == 403, (response.status_code, response.json)
        assert response.json["code"] == "tenant_not_allowed"
    assert elsewhere.status_code == 403, (elsewhere.status_code, elsewhere.json)
    assert elsewhere.json["code"] == "tenant_not_allowed"


def test_whoami_lists_the_tenants_of_a_restricted_token(client, app, tokens):
    assert client.get("/v1/whoami", headers=tokens.headers("reader")).json["tenants"] is None
    body = client.get("/v1/whoami", headers=_restricted(app, "two-tenants", "acme", "beta")).json
    assert body["tenants"] == ["acme", "beta"]
    assert sorted(body["roles"]) == sorted(ROLES)


def test_a_sender_token_can_do_nothing_but_send(configured, tokens):
    headers = tokens.headers("sender")
    for method, path, allowed, body in MATRIX:
        response = configured.open(path, method=method, json=body, headers=headers)
        if "sender" in allowed:
            assert response.status_code not in (401, 403), (method, path)
        else:
            assert response.status_code == 403, (method, path, response.status_code)
