"""The Azure Key Vault provider, driving the real SDK against a fake vault and Entra ID."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import requests
import requests_mock
from marshmallow import ValidationError

from providers.azure_key_vault import CHECK_SECRET, AzureKeyVaultProvider
from providers.base import (
    expires_soon,
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    SecretNotAllowed,
    SecretNotFound,
    SecretValue,
)
from tests.providers.contract import CANARY, VersionedProviderContract

AUTHORITY = "https://login.example.com"
TENANT = "contoso-tenant"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
RESOURCE = "https://vault.example.com"
TOKEN_URL = f"{AUTHORITY}/{TENANT}/oauth2/v2.0/token"
IMDS_URL = "http://169.254.169.254/metadata/identity/oauth2/token"
CLIENT_SECRET = "entra-client-secret-9d2f-not-for-logs"
FEDERATED_TOKEN = "federated.service-account.token"
CLIENT_SECRET_ENV = "KV_TEST_CLIENT_SECRET"
WRONG_SECRET_ENV = "KV_TEST_WRONG_SECRET"

#: Variables the Azure SDK reads to pick an identity; none may leak in from the host.
AZURE_ENVIRONMENT = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_REGIONAL_AUTHORITY_NAME",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)


def resolve_credential(ref: Mapping[str, str]) -> str:
    """The service's credential lookup, reduced to environment variables."""
    return os.environ[ref["env"]]


CONTEXT = ProviderContext(credential=resolve_credential)


class FakeKeyVault:
    """Key Vault's GET secret API and Entra ID's token endpoints, as requests-mock callbacks.

    No Key Vault can run here, so requests-mock plays both, under the real SDK's
    transport. The host names are strings it intercepts: anything not mocked
    raises instead of reaching a network.
    """

    def __init__(self, mocker: requests_mock.Mocker, host: str) -> None:
        self.mocker = mocker
        self.url = f"https://{host}"
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.denied: set[str] = set()
        self.outage_status: int | None = None
        self.tokens: set[str] = set()
        mocker.get(
            f"{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration",
            json={
                "authorization_endpoint": f"{AUTHORITY}/{TENANT}/oauth2/v2.0/authorize",
                "token_endpoint": TOKEN_URL,
                "issuer": f"{AUTHORITY}/{TENANT}/v2.0",
            },
        )
        mocker.post(TOKEN_URL, json=self._token)
        mocker.get(IMDS_URL, json=self._imds_token)
        mocker.get(re.compile(re.escape(self.url) + r"/secrets/.*"), json=self._get_secret)
        mocker.get(re.compile(re.escape(self.url) + r"/secrets\?.*"), json=self._list_secrets)
        #: Secrets per page of List Secrets (Key Vault's own default is 25).
        self.page_size = 25

    def store(self, name: str, value: str, enabled: bool = True, expires_on: dt.datetime | None = None) -> str:
        """Add a version (the newest) of secret ``name``; returns the version id."""
        version = uuid.uuid4().hex
        attributes: dict[str, Any] = {"enabled": enabled, "created": 1_700_000_000, "updated": 1_700_000_000}
        if expires_on is not None:
            attributes["exp"] = int(expires_on.timestamp())
        self.versions.setdefault(name, []).append(
            {"id": f"{self.url}/secrets/{name}/{version}", "value": value, "attributes": attributes}
        )
        return version

    def requests_to(self, url_prefix: str) -> list[Any]:
        return [request for request in self.mocker.request_history if request.url.startswith(url_prefix)]

    def token_forms(self) -> list[dict[str, str]]:
        return [dict(urllib.parse.parse_qsl(request.text)) for request in self.requests_to(TOKEN_URL)]

    def _issue(self) -> dict[str, Any]:
        token = f"access-token-{uuid.uuid4().hex}"
        self.tokens.add(token)
        return {"access_token": token, "token_type": "Bearer", "expires_in": 3600}

    def _token(self, request: Any, context: Any) -> dict[str, Any]:
        form = dict(urllib.parse.parse_qsl(request.text))
        good_secret = form.get("client_secret") == CLIENT_SECRET
        good_assertion = form.get("client_assertion") == FEDERATED_TOKEN
        if form.get("client_id") != CLIENT_ID or not (good_secret or good_assertion):
            context.status_code = 401
            return {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                "sent in the request is the client secret value, not the client secret ID.",
                "error_codes": [7000215],
            }
        return self._issue()

    def _imds_token(self, request: Any, context: Any) -> dict[str, Any]:
        if request.headers.get("Metadata") != "true":
            context.status_code = 400
            return {"error": "invalid_request", "error_description": "Required metadata header not specified"}
        issued = self._issue()
        return {**issued, "expires_in": "3600", "resource": RESOURCE}

    def _refusal(self, request: Any, context: Any) -> dict[str, Any] | None:
        """The challenge for a request without a valid token, or the outage answer; None to go on."""
        authorization = request.headers.get("Authorization", "")
        if authorization.removeprefix("Bearer ") not in self.tokens:
            context.status_code = 401
            context.headers["WWW-Authenticate"] = (
                f'Bearer authorization="{AUTHORITY}/{TENANT}", resource="{RESOURCE}"'
            )
            return {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}
        if self.outage_status is not None:
            context.status_code = self.outage_status
            return {"error": {"code": "ServiceUnavailable", "message": "The service is busy."}}
        return None

    def _list_secrets(self, request: Any, context: Any) -> dict[str, Any]:
        """List Secrets: ids and attributes (never values), paged with ``nextLink`` and an opaque skip token."""
        refused = self._refusal(request, context)
        if refused is not None:
            return refused
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
        start = int(query.get("$skiptoken", "0"))
        names = sorted(self.versions)
        page = names[start : start + self.page_size]
        more = start + self.page_size < len(names)
        return {
            "value": [
                {"id": f"{self.url}/secrets/{name}", "attributes": self.versions[name][-1]["attributes"]} for name in page
            ],
            "nextLink": f"{self.url}/secrets?api-version={query['api-version']}&$skiptoken={start + self.page_size}"
            if more
            else None,
        }

    def _get_secret(self, request: Any, context: Any) -> dict[str, Any]:
        refused = self._refusal(request, context)
        if refused is not None:
            return refused
        path = urllib.parse.urlsplit(request.url).path
        _, _, name, version = (path.split("/") + [""])[:4]
        if name in self.denied:
            context.status_code = 403
            return {
                "error": {
                    "code": "Forbidden",
                    "message": "Caller is not authorized to perform action on resource.",
                    "innererror": {"code": "ForbiddenByRbac"},
                }
            }
        versions = self.versions.get(name, [])
        found = [entry for entry in versions if not version or entry["id"].endswith("/" + version)]
        if not found:
            context.status_code = 404
            return {"error": {"code": "SecretNotFound", "message": f"A secret with (name/id) {name} was not found."}}
        entry = found[-1]
        if not entry["attributes"]["enabled"]:
            context.status_code = 403
            return {
                "error": {
                    "code": "Forbidden",
                    "message": "Operation get is not allowed on a disabled secret.",
                    "innererror": {"code": "SecretDisabled"},
                }
            }
        return entry


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKeyVault]:
    """A fresh fake vault (its own host, so the SDK's per-host challenge cache starts empty)."""
    for variable in AZURE_ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(CLIENT_SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(WRONG_SECRET_ENV, "not-the-client-secret")
    with requests_mock.Mocker(real_http=False) as mocker:
        yield FakeKeyVault(mocker, f"kv-{uuid.uuid4().hex[:12]}.vault.example.com")


def client_secret_credential(**overrides: Any) -> dict[str, Any]:
    return {
        "kind": "client_secret",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": {"env": CLIENT_SECRET_ENV},
        "authority_host": AUTHORITY,
        "disable_instance_discovery": True,
        **overrides,
    }


def connection(vault_url: str, credential: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "azure_key_vault",
        "vault_url": vault_url,
        "credential": credential or client_secret_credential(),
        "allowed_secrets": ["smtp-*", "contract-*"],
        "timeout_seconds": 2,
        "max_retries": 0,
    }


def reference(name: str, version: str | None = None) -> dict[str, Any]:
    return {"source": "azure_key_vault", "provider": "corp-kv", "secret": name, "version": version}


def kv_name(name: str) -> str:
    """Key Vault names allow no '/': the contract's ``contract/found`` is ``contract-found`` here."""
    return name.replace("/", "-")


class TestAzureKeyVaultContract(VersionedProviderContract):
    @pytest.fixture(autouse=True)
    def _vault(self, vault: FakeKeyVault) -> None:
        self.vault = vault
        down = f"https://down-{uuid.uuid4().hex[:12]}.vault.example.com"
        vault.mocker.get(re.compile(re.escape(down) + r"/.*"), exc=requests.exceptions.ConnectionError)
        self.down_url = down

    def make_provider(self) -> AzureKeyVaultProvider:
        return AzureKeyVaultProvider(connection(self.vault.url), CONTEXT)

    def store(self, name: str, value: str) -> None:
        self.vault.store(kv_name(name), value)

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        return reference(kv_name(name), version)

    def make_unavailable_provider(self) -> AzureKeyVaultProvider:
        return AzureKeyVaultProvider(connection(self.down_url), CONTEXT)

    def make_bad_auth_provider(self) -> AzureKeyVaultProvider:
        wrong = client_secret_credential(client_secret={"env": WRONG_SECRET_ENV})
        return AzureKeyVaultProvider(connection(self.vault.url, wrong), CONTEXT)


def test_client_secret_handshake_answers_the_vault_challenge_with_a_bearer_token(vault: FakeKeyVault) -> None:
    version = vault.store("smtp-relay", "relay-password")

    secret = AzureKeyVaultProvider(connection(vault.url), CONTEXT).fetch(reference("smtp-relay"))

    assert (secret.value, secret.version) == ("relay-password", version)
    first, discovery, token, retried = vault.mocker.request_history
    assert (first.method, first.url.split("?")[0]) == ("GET", f"{vault.url}/secrets/smtp-relay/")
    assert "Authorization" not in first.headers
    assert discovery.url == f"{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration"
    assert (token.method, token.url) == ("POST", TOKEN_URL)
    form = dict(urllib.parse.parse_qsl(token.text))
    assert form["client_id"] == CLIENT_ID
    assert form["client_secret"] == CLIENT_SECRET
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == f"{RESOURCE}/.default"
    assert retried.url == first.url
    assert retried.headers["Authorization"].removeprefix("Bearer ") in vault.tokens


def test_workload_identity_posts_the_federated_token_file_as_client_assertion(
    vault: FakeKeyVault, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(FEDERATED_TOKEN)
    vault.store("smtp-relay", "relay-password")
    credential = {
        "kind": "workload_identity",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "token_file": str(token_file),
        "authority_host": AUTHORITY,
        "disable_instance_discovery": True,
    }

    secret = AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))

    assert secret.value == "relay-password"
    (form,) = vault.token_forms()
    assert form["client_assertion"] == FEDERATED_TOKEN
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form


def test_workload_identity_without_its_token_file_is_misconfigured(vault: FakeKeyVault, tmp_path: Path) -> None:
    credential = {
        "kind": "workload_identity",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "token_file": str(tmp_path / "not-projected"),
        "authority_host": AUTHORITY,
        "disable_instance_discovery": True,
    }

    with pytest.raises(ProviderMisconfigured, match="FileNotFoundError"):
        AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))


def test_managed_identity_asks_the_instance_metadata_endpoint_for_the_user_assigned_identity(
    vault: FakeKeyVault,
) -> None:
    vault.store("smtp-relay", "relay-password")
    credential = {"kind": "managed_identity", "client_id": "user-assigned-client"}

    secret = AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))

    assert secret.value == "relay-password"
    (imds,) = vault.requests_to(IMDS_URL)
    assert imds.headers["Metadata"] == "true"
    assert imds.qs["client_id"] == ["user-assigned-client"]
    assert imds.qs["resource"] == [RESOURCE]
    assert vault.token_forms() == []


def test_managed_identity_on_a_host_without_instance_metadata_is_unavailable(vault: FakeKeyVault) -> None:
    vault.mocker.get(IMDS_URL, exc=requests.exceptions.ConnectTimeout)

    with pytest.raises(ProviderUnavailable, match="IMDS"):
        AzureKeyVaultProvider(connection(vault.url, {"kind": "managed_identity"}), CONTEXT).fetch(
            reference("smtp-relay")
        )


def test_default_credential_takes_the_client_secret_from_the_environment(
    vault: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", CLIENT_SECRET)
    vault.store("smtp-relay", "relay-password")
    credential = {"kind": "default", "authority_host": AUTHORITY, "disable_instance_discovery": True}

    secret = AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))

    assert secret.value == "relay-password"
    (form,) = vault.token_forms()
    assert (form["client_id"], form["client_secret"]) == (CLIENT_ID, CLIENT_SECRET)


def test_a_disabled_secret_is_not_found_and_the_message_says_disabled(vault: FakeKeyVault) -> None:
    vault.store("smtp-relay", CANARY, enabled=False)

    with pytest.raises(SecretNotFound, match="disabled") as info:
        AzureKeyVaultProvider(connection(vault.url), CONTEXT).fetch(reference("smtp-relay"))

    assert CANARY not in str(info.value)


def test_a_pinned_enabled_version_of_a_disabled_secret_is_still_served(vault: FakeKeyVault) -> None:
    good = vault.store("smtp-relay", "still-good")
    vault.store("smtp-relay", "withdrawn", enabled=False)
    provider = AzureKeyVaultProvider(connection(vault.url), CONTEXT)

    with pytest.raises(SecretNotFound, match="disabled"):
        provider.fetch(reference("smtp-relay"))
    assert provider.fetch(reference("smtp-relay", version=good)).value == "still-good"
    assert vault.mocker.request_history[-1].url.split("?")[0] == f"{vault.url}/secrets/smtp-relay/{good}"


def test_access_denied_by_the_vault_raises_secret_not_allowed(vault: FakeKeyVault) -> None:
    vault.store("smtp-relay", CANARY)
    vault.denied.add("smtp-relay")

    with pytest.raises(SecretNotAllowed, match="ForbiddenByRbac") as info:
        AzureKeyVaultProvider(connection(vault.url), CONTEXT).fetch(reference("smtp-relay"))

    assert CANARY not in str(info.value)


def test_an_invalid_client_secret_is_an_auth_error_that_names_the_entra_code_not_the_secret(
    vault: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, "expired-client-secret-value")

    with pytest.raises(ProviderAuthError, match="AADSTS7000215") as info:
        AzureKeyVaultProvider(connection(vault.url), CONTEXT).fetch(reference("smtp-relay"))

    assert "expired-client-secret-value" not in str(info.value)
    assert not any(request.headers.get("Authorization") for request in vault.requests_to(vault.url))


def test_a_rotated_client_secret_is_picked_up_after_an_auth_failure_without_a_new_provider(
    vault: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.store("smtp-relay", "relay-password")
    monkeypatch.setenv(CLIENT_SECRET_ENV, "old-client-secret")
    provider = AzureKeyVaultProvider(connection(vault.url), CONTEXT)
    with pytest.raises(ProviderAuthError):
        provider.fetch(reference("smtp-relay"))

    monkeypatch.setenv(CLIENT_SECRET_ENV, CLIENT_SECRET)

    assert provider.fetch(reference("smtp-relay")).value == "relay-password"


def test_an_unreachable_token_endpoint_is_unavailable_not_an_auth_failure(vault: FakeKeyVault) -> None:
    unreachable = "https://login-down.example.com"
    vault.mocker.get(re.compile(re.escape(unreachable) + r"/.*"), exc=requests.exceptions.ConnectTimeout)
    vault.mocker.post(re.compile(re.escape(unreachable) + r"/.*"), exc=requests.exceptions.ConnectTimeout)
    credential = client_secret_credential(authority_host=unreachable)

    with pytest.raises(ProviderUnavailable):
        AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_failing_vault_is_unavailable(vault: FakeKeyVault, status: int) -> None:
    vault.store("smtp-relay", "relay-password")
    vault.outage_status = status

    with pytest.raises(ProviderUnavailable, match=str(status)):
        AzureKeyVaultProvider(connection(vault.url), CONTEXT).fetch(reference("smtp-relay"))


def test_fetch_reports_expiry_and_flags_secrets_expiring_within_14_days(vault: FakeKeyVault) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    vault.store("smtp-soon", "a", expires_on=now + dt.timedelta(days=10))
    vault.store("smtp-later", "b", expires_on=now + dt.timedelta(days=30))
    vault.store("smtp-never", "c")
    provider = AzureKeyVaultProvider(connection(vault.url), CONTEXT)

    soon, later, never = (provider.fetch(reference(name)) for name in ("smtp-soon", "smtp-later", "smtp-never"))

    assert soon.expires_at == now + dt.timedelta(days=10)
    assert expires_soon(soon) is True
    assert expires_soon(later) is False
    assert never.expires_at is None and expires_soon(never) is False


def test_expires_soon_counts_expired_secrets_and_honours_now_and_within() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    expiring = SecretValue("x", expires_at=now + dt.timedelta(days=14))

    assert expires_soon(expiring, now=now) is True
    assert expires_soon(expiring, now=now - dt.timedelta(seconds=1)) is False
    assert expires_soon(expiring, now=now, within=dt.timedelta(days=7)) is False
    assert expires_soon(expiring, now=now + dt.timedelta(days=30)) is True


def test_check_passes_when_the_vault_accepts_the_token_whatever_it_says_of_the_sentinel(
    vault: FakeKeyVault,
) -> None:
    provider = AzureKeyVaultProvider(connection(vault.url), CONTEXT)
    provider.check()
    vault.denied.add(CHECK_SECRET)
    provider.check()

    assert vault.mocker.request_history[-1].url.split("?")[0] == f"{vault.url}/secrets/{CHECK_SECRET}/"


def test_check_fails_when_entra_refuses_the_credential(vault: FakeKeyVault) -> None:
    credential = client_secret_credential(client_secret={"env": WRONG_SECRET_ENV})

    with pytest.raises(ProviderAuthError):
        AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).check()


def test_the_constructor_does_no_io_and_reads_no_credential(vault: FakeKeyVault) -> None:
    credential = client_secret_credential(client_secret={"env": "KV_TEST_NOT_SET"})
    AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT)
    AzureKeyVaultProvider(connection(vault.url, {"kind": "managed_identity"}), CONTEXT)

    assert vault.mocker.request_history == []


def test_an_unresolvable_client_secret_reference_is_misconfigured_before_any_request(vault: FakeKeyVault) -> None:
    credential = client_secret_credential(client_secret={"env": "KV_TEST_NOT_SET"})

    with pytest.raises(ProviderMisconfigured, match="client_secret"):
        AzureKeyVaultProvider(connection(vault.url, credential), CONTEXT).fetch(reference("smtp-relay"))

    assert vault.mocker.request_history == []


def test_no_secret_or_client_secret_in_logs_or_errors(vault: FakeKeyVault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    vault.store("smtp-relay", CANARY)
    vault.store("smtp-disabled", CANARY, enabled=False)
    vault.store("smtp-denied", CANARY)
    vault.denied.add("smtp-denied")
    provider = AzureKeyVaultProvider(connection(vault.url), CONTEXT)
    secret = provider.fetch(reference("smtp-relay"))
    errors: list[ProviderError] = []
    for name in ("smtp-disabled", "smtp-denied", "smtp-missing"):
        with pytest.raises(ProviderError) as info:
            provider.fetch(reference(name))
        errors.append(info.value)

    assert secret.value == CANARY
    assert CANARY not in repr(secret)
    for error in errors:
        assert CANARY not in str(error) and CLIENT_SECRET not in str(error)
    assert CANARY not in caplog.text
    assert CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize(
    ("credential", "field"),
    [
        ({"kind": "kerberos"}, "kind"),
        (client_secret_credential(client_secret="inline-secret"), "client_secret"),
        ({"kind": "client_secret", "client_id": CLIENT_ID, "client_secret": {"env": "X"}}, "tenant_id"),
        ({"kind": "workload_identity", "tenant_id": TENANT, "client_id": CLIENT_ID}, "token_file"),
        ({"kind": "workload_identity", "tenant_id": TENANT, "client_id": CLIENT_ID, "token_file": "t"}, "token_file"),
        ({"kind": "managed_identity", "tenant_id": TENANT}, "tenant_id"),
        ({"kind": "default", "authority_host": "http://login.example.com"}, "authority_host"),
    ],
)
def test_each_credential_kind_has_its_own_schema(credential: dict[str, Any], field: str) -> None:
    document = {"type": "azure_key_vault", "vault_url": "https://corp.vault.example.com", "credential": credential}

    with pytest.raises(ValidationError) as info:
        AzureKeyVaultProvider.connection_schema().load(document)

    assert field in info.value.messages["credential"]


def test_connection_schema_fills_defaults_and_refuses_unknown_fields_and_plain_http() -> None:
    schema = AzureKeyVaultProvider.connection_schema()
    loaded = schema.load({"type": "azure_key_vault", "vault_url": "https://corp.vault.example.com"})
    assert loaded["credential"] == {"kind": "default"}
    assert (loaded["timeout_seconds"], loaded["max_retries"], loaded["allowed_secrets"]) == (5, 2, [])
    managed = schema.load({**loaded, "credential": {"kind": "managed_identity"}})
    assert managed["credential"] == {"kind": "managed_identity", "client_id": None}

    with pytest.raises(ValidationError) as info:
        schema.load({**loaded, "vault_url": "http://corp.vault.example.com", "surprise": 1})
    assert set(info.value.messages) == {"vault_url", "surprise"}


@pytest.mark.parametrize(
    ("secret", "version"), [("smtp/relay", None), ("", None), ("smtp-relay", "../other"), ("smtp_relay", None)]
)
def test_reference_schema_refuses_names_key_vault_cannot_hold(secret: str, version: str | None) -> None:
    with pytest.raises(ValidationError):
        AzureKeyVaultProvider.reference_schema().load(reference(secret, version))


def test_reference_schema_accepts_a_pinned_version() -> None:
    loaded = AzureKeyVaultProvider.reference_schema().load(reference("smtp-relay", "0123456789abcdef0123456789abcdef"))
    assert loaded["version"] == "0123456789abcdef0123456789abcdef"


def test_listing_pages_through_the_vault_and_keeps_only_accepted_names(vault: FakeKeyVault) -> None:
    vault.page_size = 2
    for name in ("smtp-relay", "smtp-backup", "db-root", "smtp-bulk", "other"):
        vault.store(name, f"value-of-{name}-{CANARY}")

    listing = AzureKeyVaultProvider(connection(vault.url), CONTEXT).list_secrets(
        "smtp-", accept=lambda name: name != "smtp-bulk", limit=1000
    )

    assert listing.names == ["smtp-backup", "smtp-relay"] and listing.truncated is False
    listed = [r for r in vault.requests_to(vault.url + "/secrets?")]
    assert len(listed) >= 3  # three pages of two (plus the unauthenticated challenge)
    assert all("value-of" not in (r.text or "") for r in listed)


def test_listing_stops_at_the_limit_and_says_so(vault: FakeKeyVault) -> None:
    for index in range(5):
        vault.store(f"smtp-{index}", "x")
    listing = AzureKeyVaultProvider(connection(vault.url), CONTEXT).list_secrets("", accept=lambda _: True, limit=3)
    assert listing.names == ["smtp-0", "smtp-1", "smtp-2"] and listing.truncated is True


def test_listing_during_an_outage_is_provider_unavailable(vault: FakeKeyVault) -> None:
    vault.store("smtp-relay", "x")
    vault.outage_status = 503
    with pytest.raises(ProviderUnavailable):
        AzureKeyVaultProvider(connection(vault.url), CONTEXT).list_secrets("", accept=lambda _: True, limit=10)
