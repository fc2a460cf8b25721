"""The CyberArk provider against a loopback CCP that requires a client certificate."""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pytest
import trustme
from marshmallow import ValidationError

from providers.base import (
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    SecretNotFound,
)
from providers.cyberark import CHECK_OBJECT, CHECK_SAFE, CyberArkProvider
from tests.fixtures.cyberark_ccp import APP_ID, CLIENT_COMMON_NAME, CcpServer
from tests.providers.contract import CANARY, ProviderContract


def resolve_credential(ref: Mapping[str, str]) -> str:
    """The service's credential lookup, reduced to what these tests use."""
    if "file" in ref:
        return Path(ref["file"]).read_text()
    return os.environ[ref["env"]]


CONTEXT = ProviderContext(credential=resolve_credential)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def split_pem(pem: str) -> tuple[str, str]:
    """(certificate chain, private key) out of one PEM bundle."""
    blocks = re.findall(r"-----BEGIN [^-]+-----.*?-----END [^-]+-----\n?", pem, re.S)
    key = "".join(block for block in blocks if "PRIVATE KEY" in block)
    return "".join(block for block in blocks if "PRIVATE KEY" not in block), key


@pytest.fixture
def client_pem_file(cyberark_ccp: CcpServer, tmp_path: Path) -> Path:
    path = tmp_path / "ccp-client.pem"
    path.write_text(cyberark_ccp.client_certificate_pem)
    return path


@pytest.fixture
def connection(cyberark_ccp: CcpServer, client_pem_file: Path) -> dict[str, Any]:
    return {
        "type": "cyberark",
        "url": cyberark_ccp.url,
        "app_id": APP_ID,
        "client_certificate": {"file": str(client_pem_file)},
        "ca_certificate_pem": cyberark_ccp.ca_pem,
        "allowed_secrets": ["SMTP/*"],
        "timeout_seconds": 5,
    }


def reference(safe: str = "SMTP", obj: str = "relay", folder: str | None = None) -> dict[str, Any]:
    ref = {"source": "cyberark", "provider": "ccp", "safe": safe, "object": obj}
    if folder is not None:
        ref["folder"] = folder
    return ref


class TestCyberArkContract(ProviderContract):
    @pytest.fixture(autouse=True)
    def _ccp(self, cyberark_ccp: CcpServer, connection: dict[str, Any]) -> None:
        self.ccp = cyberark_ccp
        self.connection = connection

    def make_provider(self) -> CyberArkProvider:
        return CyberArkProvider(self.connection, CONTEXT)

    def store(self, name: str, value: str) -> None:
        safe, obj = name.split("/", 1)
        self.ccp.store(safe, obj, value)

    def reference(self, name: str, version: Any = None) -> Mapping[str, Any]:
        safe, obj = name.split("/", 1)
        return reference(safe, obj)

    def make_unavailable_provider(self) -> CyberArkProvider:
        return CyberArkProvider({**self.connection, "url": f"https://127.0.0.1:{closed_port()}"}, CONTEXT)

    def make_bad_auth_provider(self) -> CyberArkProvider:
        return CyberArkProvider({**self.connection, "app_id": "not-a-defined-app"}, CONTEXT)


def test_fetch_asks_ccp_for_app_safe_folder_and_object_presenting_the_client_certificate(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    cyberark_ccp.store("SMTP", "relay", "relay-password", folder="Mail")

    secret = CyberArkProvider(connection, CONTEXT).fetch(reference(folder="Mail"))

    assert secret.value == "relay-password"
    last = cyberark_ccp.requests[-1]
    assert last.path == "/AIMWebService/api/Accounts"
    assert last.params == {"AppID": APP_ID, "Safe": "SMTP", "Object": "relay", "Folder": "Mail"}
    assert last.client_cn == CLIENT_COMMON_NAME


def test_version_is_last_success_change_and_moves_with_each_rotation(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    provider = CyberArkProvider(connection, CONTEXT)
    first_change = cyberark_ccp.store("SMTP", "relay", "first")
    first = provider.fetch(reference())
    second_change = cyberark_ccp.store("SMTP", "relay", "second")
    second = provider.fetch(reference())

    assert (first.version, second.version) == (first_change, second_change)
    assert first.version != second.version
    assert second.value == "second"


def test_version_is_unknown_when_the_cpm_never_changed_the_password(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    cyberark_ccp.store("SMTP", "relay", "set-by-hand", changed_by_cpm=False)

    secret = CyberArkProvider(connection, CONTEXT).fetch(reference())

    assert secret.value == "set-by-hand"
    assert secret.version is None


def test_secret_name_is_safe_slash_object() -> None:
    assert CyberArkProvider.secret_name(reference("SMTP", "relay", folder="Mail")) == "SMTP/relay"


def test_a_client_without_certificate_is_refused_as_an_authentication_failure(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    # CCP's certificate check is how it authenticates the application, so a TLS
    # refusal of our (missing) certificate means our credentials were refused:
    # retrying or serving from cache will not mend it, a security admin must.
    cyberark_ccp.store("SMTP", "relay", CANARY)
    provider = CyberArkProvider({**connection, "client_certificate": None}, CONTEXT)

    with pytest.raises(ProviderAuthError, match="client certificate") as info:
        provider.fetch(reference())

    assert not any(request.params.get("Safe") == "SMTP" for request in cyberark_ccp.requests)
    assert CANARY not in str(info.value)


def test_a_client_certificate_from_another_ca_is_refused_as_an_authentication_failure(
    cyberark_ccp: CcpServer, connection: dict[str, Any], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_text(cyberark_ccp.issue_client_certificate(CLIENT_COMMON_NAME, ca=trustme.CA()))
    provider = CyberArkProvider({**connection, "client_certificate": {"file": str(stranger)}}, CONTEXT)

    with pytest.raises(ProviderAuthError, match="client certificate"):
        provider.fetch(reference())


def test_a_renewed_client_certificate_is_picked_up_after_a_refusal_without_a_new_provider(
    cyberark_ccp: CcpServer, connection: dict[str, Any], client_pem_file: Path
) -> None:
    cyberark_ccp.store("SMTP", "relay", "relay-password")
    client_pem_file.write_text(cyberark_ccp.issue_client_certificate(CLIENT_COMMON_NAME, ca=trustme.CA()))
    provider = CyberArkProvider(connection, CONTEXT)
    with pytest.raises(ProviderAuthError):
        provider.fetch(reference())

    client_pem_file.write_text(cyberark_ccp.client_certificate_pem)

    assert provider.fetch(reference()).value == "relay-password"


def test_an_unknown_app_id_raises_auth_error_naming_the_ccp_code(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    provider = CyberArkProvider({**connection, "app_id": "typo-app"}, CONTEXT)

    with pytest.raises(ProviderAuthError, match="APPAP306E"):
        provider.fetch(reference())
    with pytest.raises(ProviderAuthError):
        provider.check()


def test_a_certificate_the_app_is_not_bound_to_raises_auth_error(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    cyberark_ccp.add_application("mail-relay", safes={"SMTP"}, certificate_cn="mail-relay-host")
    cyberark_ccp.store("SMTP", "relay", "relay-password")

    with pytest.raises(ProviderAuthError, match="APPAP306E"):
        CyberArkProvider({**connection, "app_id": "mail-relay"}, CONTEXT).fetch(reference())


def test_a_safe_the_app_cannot_read_looks_like_a_missing_object(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    cyberark_ccp.add_application("narrow-app", safes={"Other"})
    cyberark_ccp.store("SMTP", "relay", "relay-password")

    with pytest.raises(SecretNotFound, match="APPAP004E"):
        CyberArkProvider({**connection, "app_id": "narrow-app"}, CONTEXT).fetch(reference())


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "APPAP004E", SecretNotFound),
        (400, "APPAP229E", SecretNotFound),
        (403, "APPAP306E", ProviderAuthError),
        (403, "APPAP008E", ProviderAuthError),
        (500, "APPAP282E", ProviderUnavailable),
        (500, "APPAP007E", ProviderUnavailable),
        (400, "CASVL010E", ProviderMisconfigured),
        (400, "AIMWS031E", ProviderMisconfigured),
        (403, "APPAP999E", ProviderAuthError),
        (503, "APPAP998E", ProviderUnavailable),
        (418, "APPAP997E", ProviderError),
    ],
)
def test_ccp_error_codes_map_to_provider_errors(
    cyberark_ccp: CcpServer, connection: dict[str, Any], status: int, code: str, expected: type[ProviderError]
) -> None:
    cyberark_ccp.store("SMTP", "relay", CANARY)
    cyberark_ccp.fail("SMTP", "relay", status, code, f"{code} as CCP describes it")

    with pytest.raises(expected) as info:
        CyberArkProvider(connection, CONTEXT).fetch(reference())

    assert type(info.value) is expected
    assert code in info.value.message
    assert CANARY not in str(info.value) and CANARY not in repr(info.value)


def test_a_url_without_the_ccp_web_service_is_misconfigured_not_missing_secret(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    provider = CyberArkProvider({**connection, "url": cyberark_ccp.url + "/wrong-prefix"}, CONTEXT)

    with pytest.raises(ProviderMisconfigured, match="no CCP web service"):
        provider.fetch(reference())
    with pytest.raises(ProviderMisconfigured):
        provider.check()


def test_check_passes_when_ccp_authenticates_the_app_and_cannot_find_the_sentinel(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    CyberArkProvider(connection, CONTEXT).check()

    last = cyberark_ccp.requests[-1]
    assert (last.params["Safe"], last.params["Object"]) == (CHECK_SAFE, CHECK_OBJECT)


def test_an_untrusted_server_certificate_is_unavailable_and_names_the_ca_setting(
    cyberark_ccp: CcpServer, connection: dict[str, Any]
) -> None:
    provider = CyberArkProvider({**connection, "ca_certificate_pem": None}, CONTEXT)

    with pytest.raises(ProviderUnavailable, match="ca_certificate_pem"):
        provider.fetch(reference())
    assert cyberark_ccp.requests == []


def test_certificate_and_key_may_come_from_separate_references(
    cyberark_ccp: CcpServer, connection: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = split_pem(cyberark_ccp.client_certificate_pem)
    monkeypatch.setenv("CCP_TEST_CERT", certificate)
    monkeypatch.setenv("CCP_TEST_KEY", key)
    cyberark_ccp.store("SMTP", "relay", "relay-password")
    provider = CyberArkProvider(
        {**connection, "client_certificate": {"env": "CCP_TEST_CERT"}, "client_key": {"env": "CCP_TEST_KEY"}},
        CONTEXT,
    )

    assert provider.fetch(reference()).value == "relay-password"


def test_a_certificate_without_its_key_is_misconfigured(
    cyberark_ccp: CcpServer, connection: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, _ = split_pem(cyberark_ccp.client_certificate_pem)
    monkeypatch.setenv("CCP_TEST_CERT", certificate)
    provider = CyberArkProvider({**connection, "client_certificate": {"env": "CCP_TEST_CERT"}}, CONTEXT)

    with pytest.raises(ProviderMisconfigured, match="no private key"):
        provider.fetch(reference())


def test_a_key_that_does_not_match_the_certificate_is_misconfigured(
    cyberark_ccp: CcpServer, connection: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, _ = split_pem(cyberark_ccp.client_certificate_pem)
    _, other_key = split_pem(cyberark_ccp.issue_client_certificate("someone-else"))
    monkeypatch.setenv("CCP_TEST_CERT", certificate)
    monkeypatch.setenv("CCP_TEST_KEY", other_key)
    provider = CyberArkProvider(
        {**connection, "client_certificate": {"env": "CCP_TEST_CERT"}, "client_key": {"env": "CCP_TEST_KEY"}},
        CONTEXT,
    )

    with pytest.raises(ProviderMisconfigured, match="do not match"):
        provider.fetch(reference())


def test_an_unreadable_certificate_reference_is_misconfigured_without_touching_ccp(
    cyberark_ccp: CcpServer, connection: dict[str, Any], tmp_path: Path
) -> None:
    provider = CyberArkProvider({**connection, "client_certificate": {"file": str(tmp_path / "absent.pem")}}, CONTEXT)

    with pytest.raises(ProviderMisconfigured, match="client_certificate"):
        provider.fetch(reference())
    assert cyberark_ccp.requests == []


def test_tls_material_lives_in_private_files_that_close_removes(
    cyberark_ccp: CcpServer, connection: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cyberark_ccp.store("SMTP", "relay", "relay-password")
    provider = CyberArkProvider(connection, CONTEXT)

    provider.fetch(reference())

    (directory,) = scratch.iterdir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(directory.iterdir())
    assert [path.name for path in files] == ["ca.pem", "client.pem"]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    provider.close()
    assert list(scratch.iterdir()) == []


def test_the_constructor_does_no_io_and_reads_no_credential(
    cyberark_ccp: CcpServer, connection: dict[str, Any], tmp_path: Path
) -> None:
    CyberArkProvider(connection, CONTEXT)
    CyberArkProvider({**connection, "client_certificate": {"file": str(tmp_path / "absent.pem")}}, CONTEXT)
    CyberArkProvider({**connection, "url": f"https://127.0.0.1:{closed_port()}"}, CONTEXT)

    assert cyberark_ccp.requests == []


def test_no_password_in_logs_or_errors_across_failures(
    cyberark_ccp: CcpServer, connection: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cyberark_ccp.store("SMTP", "relay", CANARY)
    cyberark_ccp.store("SMTP", "rotating", CANARY)
    cyberark_ccp.fail("SMTP", "rotating", 500, "APPAP282E", "Password change in process")
    provider = CyberArkProvider(connection, CONTEXT)
    secret = provider.fetch(reference())
    errors: list[ProviderError] = []
    for attempt in (
        lambda: provider.fetch(reference(obj="rotating")),
        lambda: CyberArkProvider({**connection, "client_certificate": None}, CONTEXT).fetch(reference()),
        lambda: CyberArkProvider({**connection, "app_id": "typo-app"}, CONTEXT).fetch(reference()),
    ):
        with pytest.raises(ProviderError) as info:
            attempt()
        errors.append(info.value)

    assert secret.value == CANARY
    assert CANARY not in repr(secret) and CANARY not in repr(provider)
    assert all(CANARY not in str(error) and CANARY not in repr(error) for error in errors)
    assert CANARY not in caplog.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"surprise": True}, "surprise"),
        ({"url": "http://ccp.example.com"}, "url"),
        ({"client_certificate": "-----BEGIN CERTIFICATE-----"}, "client_certificate"),
        ({"client_certificate": None, "client_key": {"env": "CCP_KEY"}}, "client_key"),
        ({"app_id": ""}, "app_id"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_connection_schema_refuses_bad_documents(change: dict[str, Any], field: str) -> None:
    document = {
        "type": "cyberark",
        "url": "https://ccp.example.com",
        "app_id": "smtpconf",
        "client_certificate": {"file": "/run/secrets/ccp.pem"},
    }
    with pytest.raises(ValidationError) as info:
        CyberArkProvider.connection_schema().load({**document, **change})
    assert field in info.value.messages


def test_connection_schema_fills_defaults() -> None:
    loaded = CyberArkProvider.connection_schema().load(
        {"type": "cyberark", "url": "https://ccp.example.com", "app_id": "smtpconf"}
    )
    assert loaded["timeout_seconds"] == 5
    assert loaded["client_certificate"] is None
    assert loaded["allowed_secrets"] == []


def test_reference_schema_needs_safe_and_object() -> None:
    schema = CyberArkProvider.reference_schema()
    assert schema.load(reference(folder="Mail"))["folder"] == "Mail"
    with pytest.raises(ValidationError) as info:
        schema.load({"source": "cyberark", "provider": "ccp", "safe": "SMTP"})
    assert "object" in info.value.messages
