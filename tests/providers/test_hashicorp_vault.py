"""HashiCorpVaultProvider against a real OpenBao server: KV v1 and v2, every auth method, token lifetime, TLS."""

from __future__ import annotations

import concurrent.futures
import pathlib
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest
from marshmallow import ValidationError

from providers.base import (
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    SecretNotAllowed,
    SecretNotFound,
)
from providers.hashicorp_vault import (
    HashiCorpVaultConnectionSchema,
    HashiCorpVaultProvider,
    HashiCorpVaultReferenceSchema,
)
from tests.fixtures.openbao import wait_for_kv_v2
from tests.providers.contract import CANARY, ProviderContract, VersionedProviderContract

if TYPE_CHECKING:
    from tests.fixtures.openbao import OpenBao


KV2 = "hv-kv2"
KV1 = "hv-kv1"


class Credentials:
    """The service's credential lookup as a provider sees it: ``internal`` names from a dict, ``file`` from disk."""

    def __init__(self, **internal: str) -> None:
        self.internal = dict(internal)
        self.calls: list[Mapping[str, str]] = []

    def __call__(self, ref: Mapping[str, str]) -> str:
        self.calls.append(dict(ref))
        if "file" in ref:
            return pathlib.Path(ref["file"]).read_text()
        return self.internal[ref["internal"]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection(url: str, auth: Mapping[str, Any], /, **overrides: Any) -> dict[str, Any]:
    document = {"type": "hashicorp_vault", "url": url, "mount": KV2, "kv_version": 2, "auth": dict(auth)}
    return {**document, **overrides}


def provider(document: Mapping[str, Any], credentials: Credentials) -> HashiCorpVaultProvider:
    loaded = HashiCorpVaultConnectionSchema().load(document)
    return HashiCorpVaultProvider(loaded, ProviderContext(credential=credentials))


def reference(path: str, version: Any = None, key: str = "password") -> dict[str, Any]:
    document = {"source": "hashicorp_vault", "provider": "vault", "path": path, "key": key, "version": version}
    return HashiCorpVaultReferenceSchema().load(document)


TOKEN_AUTH: dict[str, Any] = {"method": "token", "token": {"internal": "vault-token"}}


@pytest.fixture(scope="module")
def bao(openbao: OpenBao) -> OpenBao:
    """The session server with this module's KV mounts and read policies."""
    openbao.enable_kv(KV2, version=2)
    openbao.enable_kv(KV1, version=1)
    openbao.kv_read_policy("hv-kv2-read", KV2, version=2)
    openbao.kv_read_policy("hv-kv1-read", KV1, version=1)
    openbao.write_secret(KV2, "mail/smtp", {"password": CANARY, "username": "relay"})
    return openbao


def approle_provider(bao: OpenBao, role: str, mount: str, **role_options: str) -> HashiCorpVaultProvider:
    """A provider logging in with a new AppRole ``role`` at ``mount`` that may read the module's KV v2 mount."""
    login = bao.approle(role, policies=["hv-kv2-read"], mount=mount, **role_options)
    auth = {"method": "approle", "mount": mount, "role_id": login.role_id, "secret_id": {"internal": "sid"}}
    return provider(connection(bao.url, auth, timeout_seconds=1), Credentials(sid=login.secret_id))


def logins(bao: OpenBao, mount: str) -> int:
    return bao.count_requests(f"auth/{mount}/login", operation="update")


# -- the provider contract -------------------------------------------------------------


class TestKvVersion2WithTokenAuth(VersionedProviderContract):
    @pytest.fixture(autouse=True)
    def _server(self, bao: OpenBao) -> None:
        self.bao = bao
        self.credentials = Credentials(**{"vault-token": bao.create_token(["hv-kv2-read"])})

    def make_provider(self) -> HashiCorpVaultProvider:
        return provider(connection(self.bao.url, TOKEN_AUTH), self.credentials)

    def store(self, name: str, value: str) -> None:
        self.bao.write_secret(KV2, name, {"password": value})

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        return reference(name, version)

    def make_unavailable_provider(self) -> HashiCorpVaultProvider:
        return provider(
            connection(f"http://127.0.0.1:{closed_port()}", TOKEN_AUTH, timeout_seconds=0.5), self.credentials
        )

    def make_bad_auth_provider(self) -> HashiCorpVaultProvider:
        return provider(connection(self.bao.url, TOKEN_AUTH), Credentials(**{"vault-token": "s.not-a-real-token"}))


class TestKvVersion1WithAppRoleAuth(ProviderContract):
    @pytest.fixture(autouse=True)
    def _server(self, bao: OpenBao) -> None:
        self.bao = bao
        login = bao.approle("hv-kv1", policies=["hv-kv1-read"])
        self.auth = {"method": "approle", "role_id": login.role_id, "secret_id": {"internal": "secret-id"}}
        self.credentials = Credentials(**{"secret-id": login.secret_id})

    def make_provider(self) -> HashiCorpVaultProvider:
        return provider(connection(self.bao.url, self.auth, mount=KV1, kv_version=1), self.credentials)

    def store(self, name: str, value: str) -> None:
        self.bao.write_secret(KV1, name, {"password": value}, version=1)

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        return reference(name, version)

    def make_unavailable_provider(self) -> HashiCorpVaultProvider:
        document = connection(
            f"http://127.0.0.1:{closed_port()}", self.auth, mount=KV1, kv_version=1, timeout_seconds=0.5
        )
        return provider(document, self.credentials)

    def make_bad_auth_provider(self) -> HashiCorpVaultProvider:
        document = connection(self.bao.url, self.auth, mount=KV1, kv_version=1)
        return provider(document, Credentials(**{"secret-id": "not-the-secret-id"}))


# -- auth methods ----------------------------------------------------------------------


def test_approle_logs_in_once_and_reuses_its_token(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-reuse", "approle-reuse")
    logins_before = logins(bao, "approle-reuse")
    reads_before = bao.kv_reads(KV2, "mail/smtp")
    for _ in range(3):
        secret = vault.fetch(reference("mail/smtp"))
        assert secret.value == CANARY
        assert secret.version == "1"
        assert secret.expires_at is None
    assert logins(bao, "approle-reuse") == logins_before + 1
    assert bao.kv_reads(KV2, "mail/smtp") == reads_before + 3


def test_jwt_method_logs_in_with_a_signed_token(bao: OpenBao, tmp_path: pathlib.Path) -> None:
    bao.jwt_role("hv-mailer", policies=["hv-kv2-read"], mount="jwt-tests")
    token_file = tmp_path / "jwt"
    token_file.write_text(bao.sign_jwt())
    auth = {"method": "jwt", "mount": "jwt-tests", "role": "hv-mailer", "jwt": {"file": str(token_file)}}
    logins_before = logins(bao, "jwt-tests")
    assert provider(connection(bao.url, auth), Credentials()).fetch(reference("mail/smtp")).value == CANARY
    assert logins(bao, "jwt-tests") == logins_before + 1


def test_kubernetes_method_logs_in_with_a_service_account_token(bao: OpenBao, tmp_path: pathlib.Path) -> None:
    # The kubernetes method posts {role, jwt} to auth/<mount>/login; a JWT method mounted at
    # kubernetes-sa answers that request as a Kubernetes method would, without a cluster's TokenReview.
    bao.jwt_role("hv-mailer", policies=["hv-kv2-read"], mount="kubernetes-sa")
    token_file = tmp_path / "token"
    token_file.write_text(bao.sign_jwt() + "\n")  # mounted token files may end with a newline
    auth = {"method": "kubernetes", "mount": "kubernetes-sa", "role": "hv-mailer", "jwt": {"file": str(token_file)}}
    logins_before = logins(bao, "kubernetes-sa")
    assert provider(connection(bao.url, auth), Credentials()).fetch(reference("mail/smtp")).value == CANARY
    assert logins(bao, "kubernetes-sa") == logins_before + 1


def test_token_read_from_a_file_may_end_with_a_newline(bao: OpenBao, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(bao.create_token(["hv-kv2-read"]) + "\n")
    auth = {"method": "token", "token": {"file": str(token_file)}}
    assert provider(connection(bao.url, auth), Credentials()).fetch(reference("mail/smtp")).value == CANARY


def test_concurrent_first_fetches_share_one_login(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-concurrent", "approle-concurrent")
    logins_before = logins(bao, "approle-concurrent")
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        values = list(pool.map(lambda _: vault.fetch(reference("mail/smtp")).value, range(10)))
    assert values == [CANARY] * 10
    assert logins(bao, "approle-concurrent") == logins_before + 1


# -- token lifetime --------------------------------------------------------------------


def test_expired_token_is_renewed_without_failing_a_request(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-renew", "approle-renew", token_ttl="2s", token_max_ttl="1m")
    renewals_before = bao.count_requests("auth/token/renew-self", operation="update")
    deadline = time.monotonic() + 3.5  # well past the 2 s the first token was issued for
    while time.monotonic() < deadline:
        assert vault.fetch(reference("mail/smtp")).value == CANARY
        time.sleep(0.25)
    assert bao.count_requests("auth/token/renew-self", operation="update") > renewals_before


def test_token_at_its_max_ttl_is_replaced_by_a_new_login(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-max-ttl", "approle-max", token_ttl="2s", token_max_ttl="2s")
    logins_before = logins(bao, "approle-max")
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    time.sleep(2.2)  # the token has expired and cannot be renewed
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    assert logins(bao, "approle-max") == logins_before + 2


def test_revoked_token_is_replaced_by_one_new_login_and_the_read_succeeds(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-revoke", "approle-revoke")
    logins_before = logins(bao, "approle-revoke")
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    bao.client.sys.revoke_prefix("auth/approle-revoke/login")
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    assert logins(bao, "approle-revoke") == logins_before + 2


def test_reads_work_again_with_the_same_provider_after_an_openbao_restart(bao: OpenBao) -> None:
    vault = approle_provider(bao, "hv-outage", "approle-outage")
    logins_before = logins(bao, "approle-outage")
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    with bao.outage():
        with pytest.raises(ProviderUnavailable):
            vault.fetch(reference("mail/smtp"))
        with pytest.raises(ProviderUnavailable):
            vault.check()
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    assert logins(bao, "approle-outage") == logins_before + 1  # the token survived the restart


# -- answers from Vault ----------------------------------------------------------------


def test_secret_outside_the_token_policy_raises_secret_not_allowed(bao: OpenBao) -> None:
    bao.write_secret(KV2, "finance/smtp", {"password": "other"})
    bao.kv_read_policy("hv-mail-only", KV2, version=2, paths="mail/*")
    credentials = Credentials(**{"vault-token": bao.create_token(["hv-mail-only"])})
    vault = provider(connection(bao.url, TOKEN_AUTH), credentials)
    with pytest.raises(SecretNotAllowed) as info:
        vault.fetch(reference("finance/smtp"))
    assert info.value.code == "secret_not_allowed"
    assert vault.fetch(reference("mail/smtp")).value == CANARY


def test_missing_key_in_an_existing_secret_raises_secret_not_found(bao: OpenBao) -> None:
    credentials = Credentials(**{"vault-token": bao.create_token(["hv-kv2-read"])})
    with pytest.raises(SecretNotFound, match="no key 'api_key'"):
        provider(connection(bao.url, TOKEN_AUTH), credentials).fetch(reference("mail/smtp", key="api_key"))


def test_other_keys_of_the_secret_are_readable(bao: OpenBao) -> None:
    credentials = Credentials(**{"vault-token": bao.create_token(["hv-kv2-read"])})
    assert (
        provider(connection(bao.url, TOKEN_AUTH), credentials).fetch(reference("mail/smtp", key="username")).value
        == "relay"
    )


def test_namespace_selects_the_mount_inside_it(bao: OpenBao) -> None:
    team = bao.namespace("hv-team")
    if "ns-kv/" not in team.sys.list_mounted_secrets_engines()["data"]:
        team.sys.enable_secrets_engine("kv", path="ns-kv", options={"version": "2"})
    wait_for_kv_v2(team, "ns-kv")
    team.secrets.kv.v2.create_or_update_secret("mail/smtp", {"password": "in-namespace"}, mount_point="ns-kv")
    credentials = Credentials(**{"vault-token": bao.root_token})
    vault = provider(connection(bao.url, TOKEN_AUTH, namespace="hv-team", mount="ns-kv"), credentials)
    assert vault.fetch(reference("mail/smtp")).value == "in-namespace"


def test_version_pinning_on_kv_version_1_is_refused_before_any_request() -> None:
    credentials = Credentials(**{"vault-token": "unused"})
    document = connection(f"http://127.0.0.1:{closed_port()}", TOKEN_AUTH, mount=KV1, kv_version=1)
    with pytest.raises(ProviderMisconfigured, match="version 2"):
        provider(document, credentials).fetch(reference("mail/smtp", version=1))
    assert credentials.calls == []


def test_check_raises_auth_error_when_the_login_is_refused(bao: OpenBao) -> None:
    login = bao.approle("hv-check", policies=["hv-kv2-read"])
    auth = {"method": "approle", "role_id": login.role_id, "secret_id": {"internal": "sid"}}
    provider(connection(bao.url, auth), Credentials(sid=login.secret_id)).check()
    with pytest.raises(ProviderAuthError):
        provider(connection(bao.url, auth), Credentials(sid="wrong")).check()


@pytest.mark.parametrize("method", ["token", "approle", "jwt", "kubernetes"])
def test_refused_credentials_never_appear_in_errors(bao: OpenBao, method: str) -> None:
    bao.jwt_role("hv-mailer", policies=["hv-kv2-read"], mount="jwt-tests")
    auth = {
        "token": TOKEN_AUTH,
        "approle": {
            "method": "approle",
            "role_id": bao.approle("hv-check", ["hv-kv2-read"]).role_id,
            "secret_id": {"internal": "c"},
        },
        "jwt": {"method": "jwt", "mount": "jwt-tests", "role": "hv-mailer", "jwt": {"internal": "c"}},
        "kubernetes": {"method": "kubernetes", "mount": "jwt-tests", "role": "hv-mailer", "jwt": {"internal": "c"}},
    }[method]
    credentials = Credentials(**{"vault-token": CANARY, "c": CANARY})
    vault = provider(connection(bao.url, auth), credentials)
    failures: list[ProviderError] = []
    for attempt in (lambda: vault.fetch(reference("mail/smtp")), vault.check):
        with pytest.raises(ProviderAuthError) as info:
            attempt()
        failures.append(info.value)
    for exc in failures:
        assert CANARY not in str(exc) and CANARY not in repr(exc)
        assert CANARY not in str(exc.__cause__) and CANARY not in repr(exc.__cause__)


def test_unreadable_credential_raises_provider_misconfigured(bao: OpenBao, tmp_path: pathlib.Path) -> None:
    auth = {"method": "jwt", "role": "hv-mailer", "jwt": {"file": str(tmp_path / "missing")}}
    with pytest.raises(ProviderMisconfigured, match="missing"):
        provider(connection(bao.url, auth), Credentials()).fetch(reference("mail/smtp"))


# -- TLS -----------------------------------------------------------------------------------


def test_ca_certificate_pem_verifies_the_server_and_its_file_is_removed_on_close(
    bao: OpenBao, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    credentials = Credentials(**{"vault-token": bao.create_token(["hv-kv2-read"])})
    vault = provider(connection(bao.tls_url, TOKEN_AUTH, ca_certificate_pem=bao.ca_pem), credentials)
    assert vault.fetch(reference("mail/smtp")).value == CANARY
    (ca_file,) = tmp_path.glob("smtpconf-vault-ca-*.pem")
    assert ca_file.read_text() == bao.ca_pem
    vault.close()
    assert not ca_file.exists()


def test_server_certificate_from_an_unknown_ca_is_refused(bao: OpenBao) -> None:
    credentials = Credentials(**{"vault-token": bao.create_token(["hv-kv2-read"])})
    with pytest.raises(ProviderUnavailable, match="TLS"):
        provider(connection(bao.tls_url, TOKEN_AUTH), credentials).fetch(reference("mail/smtp"))


# -- construction and documents --------------------------------------------------------


def test_constructor_does_no_io_and_reads_no_credential() -> None:
    credentials = Credentials(**{"vault-token": "s.unused"})
    document = connection(f"http://127.0.0.1:{closed_port()}", TOKEN_AUTH, timeout_seconds=0.5)
    vault = provider(document, credentials)
    assert credentials.calls == []
    with pytest.raises(ProviderUnavailable):
        vault.check()


def test_invalid_connection_document_fails_on_use_not_on_construction() -> None:
    vault = HashiCorpVaultProvider(
        {"type": "hashicorp_vault", "auth": {"method": "token", "token": CANARY}},
        ProviderContext(credential=Credentials()),
    )
    with pytest.raises(ProviderMisconfigured) as info:
        vault.fetch(reference("mail/smtp"))
    assert "url" in str(info.value) and "auth" in str(info.value)
    assert CANARY not in str(info.value) and CANARY not in repr(info.value)


def test_each_auth_method_loads_with_its_default_mount() -> None:
    schema = HashiCorpVaultConnectionSchema()
    documents: dict[str, dict[str, Any]] = {
        "token": TOKEN_AUTH,
        "approle": {"method": "approle", "role_id": "r", "secret_id": {"env": "VAULT_SECRET_ID"}},
        "kubernetes": {"method": "kubernetes", "role": "mailer"},
        "jwt": {"method": "jwt", "role": "mailer", "jwt": {"file": "/run/secrets/jwt"}},
    }
    loaded = {
        method: schema.load(connection("https://vault.example.com:8200", auth))["auth"]
        for method, auth in documents.items()
    }
    assert loaded["approle"]["mount"] == "approle"
    assert loaded["kubernetes"] == {
        "method": "kubernetes",
        "mount": "kubernetes",
        "role": "mailer",
        "jwt": {"file": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
    }
    assert loaded["jwt"]["mount"] == "jwt"
    full = schema.load(connection("https://vault.example.com:8200", TOKEN_AUTH))
    assert (full["namespace"], full["ca_certificate_pem"], full["timeout_seconds"]) == (None, None, 5.0)
    assert (full["allowed_secrets"], full["cache_ttl_seconds"], full["max_stale_seconds"]) == ([], 300, 86400)


@pytest.mark.parametrize(
    ("auth", "overrides", "field"),
    [
        ({"method": "token", "token": "s.inline-token"}, {}, "auth"),
        ({"method": "approle", "role_id": "r", "secret_id": "inline"}, {}, "auth"),
        ({"method": "token", "token": {"value": "s.inline-token"}}, {}, "auth"),
        ({"method": "token", "token": {"env": "T"}, "mount": "token"}, {}, "auth"),
        ({"method": "approle", "role_id": "r", "secret_id": {"env": "S"}, "extra": 1}, {}, "auth"),
        ({"method": "ldap", "username": "u"}, {}, "auth"),
        (TOKEN_AUTH, {"colour": "blue"}, "colour"),
        (TOKEN_AUTH, {"kv_version": 3}, "kv_version"),
        (TOKEN_AUTH, {"mount": "../sys"}, "mount"),
        (TOKEN_AUTH, {"url": "ftp://vault.example.com"}, "url"),
        (TOKEN_AUTH, {"ca_certificate_pem": "not a certificate"}, "ca_certificate_pem"),
        (TOKEN_AUTH, {"type": "azure_key_vault"}, "type"),
    ],
)
def test_connection_schema_refuses_inline_credentials_and_unknown_fields(
    auth: Any, overrides: dict, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        HashiCorpVaultConnectionSchema().load(connection("https://vault.example.com:8200", auth, **overrides))
    assert field in info.value.messages


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"path": "mail/../finance/smtp"}, "path"),
        ({"path": "/mail/smtp"}, "path"),
        ({"version": 0}, "version"),
        ({"key": ""}, "key"),
        ({"secret": "mail/smtp"}, "secret"),
    ],
)
def test_reference_schema_refuses_bad_references(changes: dict, field: str) -> None:
    document = {"source": "hashicorp_vault", "provider": "vault", "path": "mail/smtp", "key": "password", **changes}
    with pytest.raises(ValidationError) as info:
        HashiCorpVaultReferenceSchema().load(document)
    assert field in info.value.messages


def test_secret_name_is_the_path() -> None:
    assert HashiCorpVaultProvider.secret_name(reference("mail/smtp")) == "mail/smtp"
    assert reference("mail/smtp")["version"] is None


# -- listing names for pickers ---------------------------------------------------------


@pytest.fixture(scope="module")
def listing_bao(bao: OpenBao) -> OpenBao:
    """Folders under ``pick/`` in both mounts, and tokens that may list them."""
    for mount, version in ((KV2, 2), (KV1, 1)):
        for path in ("pick/a", "pick/b", "pick/deep/c", "pick/deep/deeper/d", "other/e"):
            bao.write_secret(mount, path, {"password": CANARY}, version=version)
    bao.write_policy(
        "hv-list",
        f'path "{KV2}/metadata/*" {{ capabilities = ["list"] }}\npath "{KV1}/*" {{ capabilities = ["list"] }}\n',
    )
    return bao


@pytest.mark.parametrize("mount,version", [(KV2, 2), (KV1, 1)])
def test_listing_walks_folders_under_the_prefix_only(listing_bao: OpenBao, mount: str, version: int) -> None:
    credentials = Credentials(**{"vault-token": listing_bao.create_token(["hv-list"])})
    vault = provider(connection(listing_bao.url, TOKEN_AUTH, mount=mount, kv_version=version), credentials)
    listing = vault.list_secrets("pick/", accept=lambda name: True, limit=100)
    assert sorted(listing.names) == ["pick/a", "pick/b", "pick/deep/c", "pick/deep/deeper/d"]
    assert listing.truncated is False
    assert vault.list_secrets("pick/de", accept=lambda name: True, limit=100).names == ["pick/deep/c", "pick/deep/deeper/d"]
    assert vault.list_secrets("pick/", accept=lambda name: "deep" not in name, limit=100).names == ["pick/a", "pick/b"]
    cut = vault.list_secrets("pick/", accept=lambda name: True, limit=2)
    assert cut.names == ["pick/a", "pick/b"] and cut.truncated is True


def test_listing_from_an_unreachable_vault_is_provider_unavailable() -> None:
    credentials = Credentials(**{"vault-token": "s.whatever"})
    vault = provider(connection(f"http://127.0.0.1:{closed_port()}", TOKEN_AUTH, timeout_seconds=0.5), credentials)
    with pytest.raises(ProviderUnavailable):
        vault.list_secrets("", accept=lambda name: True, limit=10)
