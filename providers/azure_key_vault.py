"""Azure Key Vault: SMTP passwords read from Key Vault secrets with an Azure identity."""

from __future__ import annotations

import functools
import re
import threading
import time
import urllib.parse
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from marshmallow import Schema, ValidationError, fields, validate

from providers.base import (
    ConnectionSchema,
    CredentialRef,
    Discriminated,
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    ReferenceSchema,
    SecretNotAllowed,
    SecretListing,
    SecretNotFound,
    SecretProvider,
    SecretValue,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.secrets import SecretClient


@functools.cache
def _sdk() -> SimpleNamespace:
    """The Azure SDK, imported when a Key Vault connection is first used: a worker
    that never reads Key Vault does not carry it."""
    from azure.core import exceptions
    from azure.identity import (
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )
    from azure.keyvault.secrets import SecretClient

    return SimpleNamespace(
        errors=exceptions,
        SecretClient=SecretClient,
        ClientSecretCredential=ClientSecretCredential,
        DefaultAzureCredential=DefaultAzureCredential,
        ManagedIdentityCredential=ManagedIdentityCredential,
        WorkloadIdentityCredential=WorkloadIdentityCredential,
    )


SECRET_NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


def vault_name(vault_url: str) -> str:
    """A vault's name, as events carry it: the first label of its host (any Azure cloud)."""
    return (urllib.parse.urlsplit(vault_url).hostname or "").split(".")[0].lower()


#: What ``check()`` reads. It need not exist: "not found" (or "forbidden") from
#: the vault proves that it was reached and accepted the service's token.
CHECK_SECRET = "smtpconf-connectivity-check"

#: Secrets one listing reads the properties of (Key Vault pages them 25 at a time).
MAX_LISTED = 25_000
#: Wall time one listing may take before it answers with what it found (``truncated``).
LIST_DEADLINE_SECONDS = 10.0

_TENANT = validate.Regexp(r"^[0-9A-Za-z.-]{1,128}$", error="Not a tenant ID or domain.")
_CLIENT_ID = validate.Length(min=1, max=128)


class _CredentialKindSchema(Schema):
    kind = fields.String(required=True)


class _AuthorityMixin(Schema):
    #: Entra ID host for sovereign clouds or Azure Stack, e.g. ``https://login.microsoftonline.us``.
    authority_host = fields.Url(load_default=None, allow_none=True, schemes={"https"})
    #: Skip MSAL's check of ``authority_host`` against Microsoft's list (Azure Stack, private clouds).
    disable_instance_discovery = fields.Boolean(load_default=False)


class DefaultCredentialSchema(_CredentialKindSchema, _AuthorityMixin):
    """``DefaultAzureCredential``: environment, workload identity, managed identity, CLI, ..."""

    managed_identity_client_id = fields.String(load_default=None, allow_none=True, validate=_CLIENT_ID)


class ClientSecretCredentialSchema(_CredentialKindSchema, _AuthorityMixin):
    """An app registration's client secret, itself held in env, a file or the internal store."""

    tenant_id = fields.String(required=True, validate=_TENANT)
    client_id = fields.String(required=True, validate=_CLIENT_ID)
    client_secret = CredentialRef(required=True)


class ManagedIdentityCredentialSchema(_CredentialKindSchema):
    """The host's managed identity; ``client_id`` picks a user-assigned one."""

    client_id = fields.String(load_default=None, allow_none=True, validate=_CLIENT_ID)


class WorkloadIdentityCredentialSchema(_CredentialKindSchema, _AuthorityMixin):
    """A federated token file (Kubernetes workload identity) exchanged for an Entra ID token."""

    tenant_id = fields.String(required=True, validate=_TENANT)
    client_id = fields.String(required=True, validate=_CLIENT_ID)
    token_file = fields.String(required=True, validate=validate.Regexp(r"^/", error="Must be an absolute path."))


CREDENTIAL_KINDS: dict[str, type[Schema]] = {
    "default": DefaultCredentialSchema,
    "client_secret": ClientSecretCredentialSchema,
    "managed_identity": ManagedIdentityCredentialSchema,
    "workload_identity": WorkloadIdentityCredentialSchema,
}


class AzureKeyVaultConnectionSchema(ConnectionSchema):
    """A connection to one vault, with the identity the service uses there."""

    vault_url = fields.Url(required=True, schemes={"https"})
    credential = Discriminated("kind", CREDENTIAL_KINDS, load_default=lambda: {"kind": "default"})
    timeout_seconds = fields.Integer(strict=True, load_default=5, validate=validate.Range(min=1, max=120))
    #: Retries of one request (vault or token endpoint) after a transient failure.
    max_retries = fields.Integer(strict=True, load_default=2, validate=validate.Range(min=0, max=10))


class AzureKeyVaultReferenceSchema(ReferenceSchema):
    """``{"source": "azure_key_vault", "provider": "CONN", "secret": "NAME", "version": null}``."""

    provider = fields.String(required=True, validate=validate.Length(min=1, max=128))
    secret = fields.String(
        required=True,
        validate=validate.Regexp(_SECRET_NAME, error="Key Vault names are 1-127 letters, digits or '-'."),
    )
    version = fields.String(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^[0-9A-Za-z]{1,64}$", error="Not a version.")
    )


class AzureKeyVaultProvider(SecretProvider):
    """Reads Key Vault secrets (latest or a pinned version) through azure-keyvault-secrets.

    Connection document::

        {"type": "azure_key_vault", "vault_url": "https://corp.vault.azure.net",
         "credential": {"kind": "client_secret", "tenant_id": "contoso.onmicrosoft.com",
                        "client_id": "00000000-0000-0000-0000-000000000000",
                        "client_secret": {"env": "AZURE_KV_CLIENT_SECRET"}},
         "allowed_secrets": ["smtp-*"], "cache_ttl_seconds": 300, "max_stale_seconds": 86400,
         "timeout_seconds": 5, "max_retries": 2}

    Credential kinds: ``{"kind": "default", "managed_identity_client_id": null}``,
    ``{"kind": "client_secret", "tenant_id", "client_id", "client_secret": CredentialRef}``,
    ``{"kind": "managed_identity", "client_id": null}``,
    ``{"kind": "workload_identity", "tenant_id", "client_id", "token_file": "/var/run/..."}``;
    ``default``, ``client_secret`` and ``workload_identity`` also take
    ``authority_host`` and ``disable_instance_discovery``.

    Upstream API: https://learn.microsoft.com/rest/api/keyvault/secrets/get-secret/get-secret
    (client: https://learn.microsoft.com/python/api/overview/azure/keyvault-secrets-readme).

    Failures: token refused or no usable identity -> ``ProviderAuthError``;
    404 -> ``SecretNotFound``; 403 ``SecretDisabled`` -> ``SecretNotFound`` (the
    secret exists but Key Vault will not hand out a disabled version, and the
    fix is the same: enable it or pin another version); any other 403 ->
    ``SecretNotAllowed`` (the vault's access policy or RBAC denies the
    service); no connection, timeouts, 408/429/5xx -> ``ProviderUnavailable``.
    """

    source: ClassVar[str] = "azure_key_vault"
    connection_schema = AzureKeyVaultConnectionSchema
    reference_schema = AzureKeyVaultReferenceSchema
    #: Key Vault publishes rotation events through Azure Event Grid.
    publishes_events: ClassVar[bool] = True

    @classmethod
    def rotated_secret(cls, connection: Mapping[str, Any], event_type: str, data: Mapping[str, Any]) -> str | None:
        """The secret of a ``Microsoft.KeyVault.SecretNewVersionCreated`` event from this connection's vault.

        Event schema: https://learn.microsoft.com/azure/event-grid/event-schema-key-vault
        (``data``: ``Id``, ``VaultName``, ``ObjectType``, ``ObjectName``, ``Version``, ``NBF``, ``EXP``).
        """
        if event_type != SECRET_NEW_VERSION:
            return None
        # Event Grid spells the data fields in PascalCase; the SDK models in camelCase.
        fields_ = {str(k).lower(): v for k, v in data.items()}
        vault, name = fields_.get("vaultname"), fields_.get("objectname")
        if not isinstance(vault, str) or not isinstance(name, str) or not _SECRET_NAME.match(name):
            return None
        if str(fields_.get("objecttype", "Secret")).lower() != "secret":
            return None
        return name if vault.lower() == vault_name(connection["vault_url"]) else None

    def __init__(self, connection: Mapping[str, Any], context: ProviderContext) -> None:
        super().__init__(connection, context)
        self._lock = threading.Lock()
        self._client: SecretClient | None = None
        self._credential: TokenCredential | None = None

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        """Get the secret (its ``version`` if pinned) with its version and expiry."""
        name = reference["secret"]
        secret = self._call(lambda client: client.get_secret(name, reference.get("version") or None), name)
        if secret.value is None:
            raise SecretNotFound(f"Key Vault secret {name!r} has no value.")
        return SecretValue(
            value=secret.value,
            version=secret.properties.version,
            expires_at=secret.properties.expires_on,
        )

    def check(self) -> None:
        """Read a sentinel secret: any answer but an auth or network failure passes."""
        try:
            self._call(lambda client: client.get_secret(CHECK_SECRET), CHECK_SECRET)
        except (SecretNotFound, SecretNotAllowed):
            pass

    def list_secrets(self, prefix: str, *, accept: Callable[[str], bool], limit: int) -> SecretListing:
        """Names of the vault's secrets (``List Secrets``: properties only, never a value)."""
        deadline = time.monotonic() + LIST_DEADLINE_SECONDS

        def walk(client: SecretClient) -> SecretListing:
            names: list[str] = []
            for scanned, properties in enumerate(client.list_properties_of_secrets()):
                if scanned >= MAX_LISTED or time.monotonic() >= deadline:
                    return SecretListing(names, truncated=True)
                name = properties.name or ""
                if name.startswith(prefix) and accept(name):
                    if len(names) >= limit:
                        return SecretListing(names, truncated=True)
                    names.append(name)
            return SecretListing(names)

        return self._call(walk, f"{prefix}*")

    def close(self) -> None:
        """Close the vault client and the credential's transport."""
        with self._lock:
            client, credential = self._client, self._credential
            self._client = self._credential = None
        if client is not None:
            client.close()
        if credential is not None and hasattr(credential, "close"):
            credential.close()

    def _call(self, operation: Callable[[SecretClient], Any], name: str) -> Any:
        """Run ``operation(client)``: the one place SDK failures become ``ProviderError``."""
        client = None
        try:
            client = self._secret_client()
            return operation(client)
        except (_sdk().errors.AzureError, ValueError, OSError) as exc:
            error = _translate(exc, name)
            if isinstance(error, ProviderAuthError):
                # Forget the credential, so that the next call resolves it again
                # and a rotated client secret is picked up without a restart.
                # Calls in flight on other threads keep the old client.
                with self._lock:
                    if self._client is client:
                        self._client = self._credential = None
            raise error from exc

    def _secret_client(self) -> SecretClient:
        with self._lock:
            if self._client is None:
                try:
                    settings = AzureKeyVaultConnectionSchema().load(dict(self.connection))
                except ValidationError as exc:
                    raise ProviderMisconfigured(
                        f"The Azure Key Vault connection is invalid: {sorted(exc.messages)}."
                    ) from None
                pipeline = {
                    "connection_timeout": settings["timeout_seconds"],
                    "read_timeout": settings["timeout_seconds"],
                    "retry_total": settings["max_retries"],
                }
                self._credential = _build_credential(settings["credential"], self.context, pipeline)
                self._client = _sdk().SecretClient(settings["vault_url"], self._credential, **pipeline)
            return self._client


def _build_credential(
    settings: Mapping[str, Any], context: ProviderContext, pipeline: dict[str, Any]
) -> TokenCredential:
    kind = settings["kind"]
    authority: dict[str, Any] = {}
    if settings.get("authority_host"):
        authority["authority"] = settings["authority_host"]
    if settings.get("disable_instance_discovery"):
        authority["disable_instance_discovery"] = True
    if kind == "client_secret":
        try:
            client_secret = context.credential(settings["client_secret"])
        except ProviderError:
            raise
        except Exception as exc:
            kind_of_ref = next(iter(settings["client_secret"]))
            raise ProviderMisconfigured(
                f"client_secret ({kind_of_ref} reference) could not be read ({type(exc).__name__})."
            ) from exc
        return _sdk().ClientSecretCredential(
            settings["tenant_id"], settings["client_id"], client_secret, **authority, **pipeline
        )
    if kind == "workload_identity":
        return _sdk().WorkloadIdentityCredential(
            tenant_id=settings["tenant_id"],
            client_id=settings["client_id"],
            token_file_path=settings["token_file"],
            **authority,
            **pipeline,
        )
    if kind == "managed_identity":
        return _sdk().ManagedIdentityCredential(client_id=settings.get("client_id"), **pipeline)
    return _sdk().DefaultAzureCredential(
        managed_identity_client_id=settings.get("managed_identity_client_id"), **authority, **pipeline
    )


def _translate(exc: BaseException, name: str) -> ProviderError:
    what = f"Key Vault secret {name!r}"
    if _transport_failure(exc):
        return ProviderUnavailable(f"Azure could not be reached while reading {what} ({_first_line(exc)}).")
    errors = _sdk().errors
    if isinstance(exc, errors.ClientAuthenticationError):
        return ProviderAuthError(f"Azure refused the service's credential while reading {what}: {_first_line(exc)}")
    if isinstance(exc, errors.HttpResponseError):
        status = exc.status_code or 0
        code = getattr(exc.error, "code", None) or ""
        inner = (getattr(exc.error, "innererror", None) or {}).get("code") or ""
        if status == 404:
            return SecretNotFound(f"{what} (or that version) does not exist ({code or 'HTTP 404'}).")
        if status == 403 and (inner == "SecretDisabled" or "disabled" in (exc.message or "").lower()):
            return SecretNotFound(
                f"{what} is disabled in Key Vault (SecretDisabled); enable it or pin another version."
            )
        if status == 403:
            return SecretNotAllowed(f"Key Vault denied the service access to {what} ({inner or code or 'HTTP 403'}).")
        if status == 401:
            return ProviderAuthError(f"Key Vault refused the service's token for {what} ({code or 'HTTP 401'}).")
        if status in (408, 429) or status >= 500:
            return ProviderUnavailable(f"Key Vault could not answer for {what} now (HTTP {status}).")
        return ProviderError(f"Key Vault answered HTTP {status} ({code or 'no code'}) for {what}.")
    if isinstance(exc, OSError):
        return ProviderMisconfigured(f"A file the Azure credential needs cannot be read ({type(exc).__name__}).")
    return ProviderMisconfigured(f"The Azure credential settings cannot work: {_first_line(exc)}")


def _transport_failure(exc: BaseException) -> bool:
    """Whether a network failure lies under ``exc``, however the SDK wrapped it
    (a token request that could not connect surfaces as an auth error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (_sdk().errors.ServiceRequestError, _sdk().errors.ServiceResponseError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
