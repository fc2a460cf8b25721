"""The endpoints the console needs: who am I, the tenants, and secret names for pickers."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.api.test_manager_sources import ccp_connection  # noqa: F401  (fixture)
from tests.providers.test_azure_key_vault import client_secret_credential, connection as azure_connection
from tests.providers.test_azure_key_vault import vault as azure_vault  # noqa: F401  (fixture)

CANARY = "canary-listing-7d1c44-do-not-leak"
_mounts = itertools.count()


def test_whoami_names_the_token_and_its_roles(client, tokens):
    body = client.get("/v1/whoami", headers=tokens.headers("security", "admin")).json
    assert body == {"name": "test-admin,security", "roles": ["admin", "security"], "tenants": None}


def test_tenants_are_paged_in_id_order(client, tokens, as_admin):
    for tenant in ("globex", "acme", "initech", "umbrella", "hooli"):
        assert client.put(f"/v1/tenants/{tenant}/smtp", json={"port": 465}, headers=as_admin).status_code == 200
    first = client.get("/v1/tenants?limit=2", headers=tokens.headers("reader")).json
    assert [t["tenant"] for t in first["tenants"]] == ["acme", "globex"]
    assert first["next_after"] == "globex"
    assert set(first["tenants"][0]) == {"tenant", "version", "updated_at", "updated_by"}
    assert first["tenants"][0]["version"] == 1 and first["tenants"][0]["updated_by"] == "test-admin"
    second = client.get("/v1/tenants?limit=2&after=globex", headers=as_admin).json
    assert [t["tenant"] for t in second["tenants"]] == ["hooli", "initech"]
    last = client.get(f"/v1/tenants?limit=2&after={second['next_after']}", headers=as_admin).json
    assert [t["tenant"] for t in last["tenants"]] == ["umbrella"] and last["next_after"] is None
    everything = client.get("/v1/tenants", headers=as_admin).json
    assert len(everything["tenants"]) == 5 and everything["next_after"] is None


def test_the_system_level_is_not_a_tenant(client, as_admin, system_settings):
    client.put("/v1/smtp", json=system_settings, headers=as_admin)
    assert client.get("/v1/tenants", headers=as_admin).json == {"tenants": [], "next_after": None}


@pytest.mark.parametrize(
    "query,field",
    [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("after=a%2Fb", "after"), ("after=", "after")],
)
def test_bad_tenant_paging_values_are_422(client, as_admin, query, field):
    response = client.get(f"/v1/tenants?{query}", headers=as_admin)
    assert response.status_code == 422 and response.json["code"] == "validation_failed"
    assert field in response.json["errors"]


def names(client, tokens, connection, prefix=None, role="security"):
    query = "" if prefix is None else f"?prefix={prefix}"
    return client.get(f"/v1/secret-providers/{connection}/secrets{query}", headers=tokens.headers(role))


def test_internal_names_are_listed_within_the_allow_list_never_values(client, tokens):
    for name in ("smtp/relay", "smtp/backup", "vault/approle-secret-id"):
        client.put(f"/v1/secrets/{name}", json={"value": CANARY}, headers=tokens.headers("security"))
    response = names(client, tokens, "internal", role="admin")
    assert response.status_code == 200
    assert response.json == {"names": ["smtp/backup", "smtp/relay"], "truncated": False}
    assert CANARY not in response.get_data(as_text=True)
    assert names(client, tokens, "internal", prefix="smtp/r").json["names"] == ["smtp/relay"]


def test_unknown_connection_is_404_and_a_bad_prefix_422(client, tokens):
    assert names(client, tokens, "no-such").status_code == 404
    response = names(client, tokens, "internal", prefix="a%0Ab")
    assert response.status_code == 422 and "prefix" in response.json["errors"]


def test_cyberark_cannot_list(client, tokens, ccp_connection):  # noqa: F811
    client.put("/v1/secret-providers/ccp", json=ccp_connection, headers=tokens.headers("security"))
    response = names(client, tokens, "ccp")
    assert response.status_code == 409 and response.json["code"] == "listing_not_supported"
    assert response.content_type == "application/problem+json"


@pytest.fixture
def listable_vault(openbao, monkeypatch):
    """A KV v2 mount with a token that may list and read it."""
    mount = f"kv-list-{next(_mounts)}-{int(time.time() * 1000) % 100000}"
    openbao.enable_kv(mount, version=2)
    openbao.write_policy(
        f"{mount}-list",
        f'path "{mount}/metadata/*" {{ capabilities = ["list"] }}\npath "{mount}/data/*" {{ capabilities = ["read"] }}\n',
    )
    monkeypatch.setenv("SMTPCONF_TEST_VAULT_LIST_TOKEN", openbao.create_token([f"{mount}-list"]))
    for path in ("mail/smtp", "mail/relays/eu", "mail/relays/us", "infra/root"):
        openbao.write_secret(mount, path, {"password": CANARY})
    return mount


def vault_connection(openbao, mount, **overrides):
    return {
        "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "SMTPCONF_TEST_VAULT_LIST_TOKEN"}},
        "allowed_secrets": ["mail/*"], "timeout_seconds": 2, **overrides,
    }


def test_vault_names_are_listed_recursively_from_openbao(client, tokens, openbao, listable_vault):
    created = client.put(
        "/v1/secret-providers/corp-vault", json=vault_connection(openbao, listable_vault), headers=tokens.headers("security")
    )
    assert created.status_code == 201, created.json
    response = names(client, tokens, "corp-vault", role="admin")
    assert response.status_code == 200, response.json
    assert sorted(response.json["names"]) == ["mail/relays/eu", "mail/relays/us", "mail/smtp"]
    assert CANARY not in response.get_data(as_text=True)
    assert names(client, tokens, "corp-vault", prefix="mail/re").json["names"] == ["mail/relays/eu", "mail/relays/us"]
    assert names(client, tokens, "corp-vault", prefix="infra/").json["names"] == []


def test_vault_policy_without_list_is_reported(client, tokens, openbao, listable_vault, monkeypatch):
    policy = openbao.kv_read_policy(f"{listable_vault}-read", listable_vault)
    monkeypatch.setenv("SMTPCONF_TEST_VAULT_LIST_TOKEN", openbao.create_token([policy]))
    client.put("/v1/secret-providers/corp-vault", json=vault_connection(openbao, listable_vault), headers=tokens.headers("security"))
    response = names(client, tokens, "corp-vault")
    assert response.status_code == 422 and response.json["code"] == "secret_not_allowed"


def test_vault_down_is_503_with_the_provider_code_and_no_long_wait(client, tokens, openbao, listable_vault):
    client.put("/v1/secret-providers/corp-vault", json=vault_connection(openbao, listable_vault), headers=tokens.headers("security"))
    with openbao.outage():
        started = time.monotonic()
        response = names(client, tokens, "corp-vault")
        elapsed = time.monotonic() - started
    assert response.status_code == 503 and response.json["code"] == "provider_unavailable"
    assert elapsed < 10


def test_azure_key_vault_names_through_the_sdk(client, tokens, azure_vault):  # noqa: F811
    for name in ("smtp-password", "smtp-relay", "db-root-password"):
        azure_vault.store(name, CANARY)
    document = azure_connection(azure_vault.url, client_secret_credential())
    assert client.put("/v1/secret-providers/corp-kv", json=document, headers=tokens.headers("security")).status_code == 201
    response = names(client, tokens, "corp-kv", prefix="smtp-")
    assert response.json == {"names": ["smtp-password", "smtp-relay"], "truncated": False}
    assert CANARY not in response.get_data(as_text=True)
