"""HashiCorp Vault (and OpenBao) KV secrets as a password source."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from marshmallow import ValidationError

from providers.base import (
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    SecretNotAllowed,
    SecretListing,
    SecretNotFound,
    SecretProvider,
    SecretValue,
)
from providers.hashicorp_vault_schemas import HashiCorpVaultConnectionSchema, HashiCorpVaultReferenceSchema

_T = TypeVar("_T")

#: A token is renewed (or replaced by a new login) once this fraction of its lease has passed.
REFRESH_AT_LEASE_FRACTION = 2 / 3
#: Folder LISTs one listing may make: a picker needs names, not a crawl of the whole mount.
MAX_LIST_REQUESTS = 200
#: Wall time one listing may take before it answers with what it found (``truncated``).
LIST_DEADLINE_SECONDS = 10.0

if TYPE_CHECKING:
    import hvac
    import hvac.exceptions
    import requests


@functools.cache
def _sdk() -> SimpleNamespace:
    """hvac and requests, imported when a Vault connection is first used: a worker
    that never reads Vault does not carry the client libraries."""
    import hvac
    import hvac.exceptions
    import requests

    errors = hvac.exceptions
    return SimpleNamespace(
        Client=hvac.Client,
        errors=errors,
        requests=requests,
        unavailable=(
            errors.VaultDown,
            errors.InternalServerError,
            errors.BadGateway,
            errors.RateLimitExceeded,
            errors.VaultNotInitialized,
        ),
        #: What the client library raises: translated into the providers.base hierarchy by ``_translate``.
        vendor_errors=(errors.VaultError, requests.RequestException),
    )


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _vault_detail(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error strings, without the multi-error decoration; never a response body."""
    errors = exc.errors if isinstance(exc.errors, list) else [exc.errors or ""]
    text = "\n".join(str(error) for error in errors)
    detail = "; ".join(re.findall(r"\* ([^\n]+)", text)) or " ".join(text.split())
    return f"{type(exc).__name__}: {detail}"[:300] if detail else type(exc).__name__


def _translate(
    exc: hvac.exceptions.VaultError | requests.RequestException, action: str, *, authenticating: bool = False
) -> ProviderError:
    """The providers.base error for a failure of hvac or requests while ``action``.

    The one place where vendor exceptions become provider errors. While
    ``authenticating``, every refusal is the service's credentials being
    refused; otherwise a 404 is a missing secret and a 403 a denied one.
    """
    sdk = _sdk()
    if isinstance(exc, sdk.requests.exceptions.SSLError):
        return ProviderUnavailable(f"TLS handshake with Vault failed while {action}; check url and ca_certificate_pem")
    if isinstance(exc, sdk.requests.exceptions.Timeout):
        return ProviderUnavailable(f"Vault did not answer in time while {action}")
    if isinstance(exc, sdk.requests.RequestException):
        return ProviderUnavailable(f"cannot reach Vault while {action} ({type(exc).__name__})")
    detail = _vault_detail(exc)
    if isinstance(exc, sdk.unavailable):
        return ProviderUnavailable(f"Vault is unavailable while {action} ({detail})")
    if authenticating or isinstance(exc, sdk.errors.Unauthorized):
        return ProviderAuthError(f"Vault refused the service's credentials while {action} ({detail})")
    if isinstance(exc, sdk.errors.InvalidPath):
        return SecretNotFound(f"Vault has nothing there while {action}")
    if isinstance(exc, sdk.errors.Forbidden):
        return SecretNotAllowed(f"Vault's policy denies {action} ({detail})")
    return ProviderError(f"Vault failed while {action} ({detail})")


class HashiCorpVaultProvider(SecretProvider):
    """Secrets in a HashiCorp Vault (or OpenBao) KV mount, version 1 or 2.

    Connection document::

        {"type": "hashicorp_vault", "url": "https://vault.example.com:8200",
         "namespace": null, "mount": "secret", "kv_version": 2,
         "auth": {"method": "approle", "role_id": "...", "secret_id": {"env": "VAULT_SECRET_ID"}},
         "ca_certificate_pem": null, "allowed_secrets": ["mail/*"],
         "cache_ttl_seconds": 300, "max_stale_seconds": 86400, "timeout_seconds": 5}

    ``auth`` is one of ``AUTH_SCHEMAS``; each login method may name the
    ``mount`` its auth method is enabled at. A reference names a secret's
    ``path`` in the mount and the ``key`` inside it, and on KV v2 may pin a
    ``version``.

    The client logs in on first use and keeps its token alive: it is renewed
    (or, when it cannot be renewed any further, replaced by a new login) once
    two thirds of its lease have passed, and a read refused with 403 is retried
    once after a fresh login, in case the token was revoked or expired meanwhile.

    Upstream API: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2
    (and ``/kv/kv-v1``, ``/auth/approle``, ``/auth/kubernetes``, ``/auth/jwt``).
    """

    source = "hashicorp_vault"
    connection_schema = HashiCorpVaultConnectionSchema
    reference_schema = HashiCorpVaultReferenceSchema

    def __init__(self, connection: Mapping[str, Any], context: ProviderContext) -> None:
        super().__init__(connection, context)
        # Guards the client and the token state below; fetch runs on several threads.
        self._lock = threading.Lock()
        self._settings: dict[str, Any] | None = None
        self._client: hvac.Client | None = None
        self._ca_file: weakref.finalize | None = None
        self._logged_in = False
        self._lease_seconds = 0
        self._renewable = False
        self._refresh_at: float | None = None

    @classmethod
    def secret_name(cls, reference: Mapping[str, Any]) -> str:
        """The secret's path in the mount."""
        return str(reference["path"])

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        """Read ``key`` of the secret at ``path`` (at ``version`` when pinned)."""
        settings = self._config()
        path, key, version = reference["path"], reference["key"], reference.get("version")
        if version is not None and settings["kv_version"] == 1:
            raise ProviderMisconfigured(
                "version pinning needs a KV version 2 mount; this connection's mount is KV version 1"
            )
        action = f"reading secret {path!r} from mount {settings['mount']!r}"
        try:
            # A 403 that survives a fresh login is the policy's answer, not the token's.
            data, found_version = self._with_relogin(lambda client: self._read(client, path, version))
        except _sdk().vendor_errors as exc:
            raise _translate(exc, action) from exc
        value = data.get(key)
        if value is None:
            raise SecretNotFound(f"secret {path!r} in mount {settings['mount']!r} has no key {key!r}")
        if not isinstance(value, str):
            raise SecretNotFound(f"key {key!r} of secret {path!r} in mount {settings['mount']!r} is not a string")
        return SecretValue(value=value, version=found_version)

    def check(self) -> None:
        """Log in (if not yet) and look up the service's own token."""
        action = "looking up the service's token"
        try:
            self._with_relogin(lambda client: client.auth.token.lookup_self())
        except _sdk().vendor_errors as exc:
            raise _translate(exc, action, authenticating=True) from exc

    def list_secrets(self, prefix: str, *, accept: Callable[[str], bool], limit: int) -> SecretListing:
        """Secret paths under ``prefix``, by KV LIST of each folder, breadth first.

        ``prefix`` need not end at a folder: ``mail/sm`` lists ``mail/`` and keeps
        what starts with ``mail/sm``. Folders outside the prefix are not entered;
        at most ``MAX_LIST_REQUESTS`` folders and ``LIST_DEADLINE_SECONDS`` per listing.
        A folder the token may not list is skipped unless it is the first one.
        """
        settings = self._config()
        deadline = time.monotonic() + LIST_DEADLINE_SECONDS
        folders: deque[str] = deque([prefix[: prefix.rfind("/") + 1]])
        names: list[str] = []
        requests_made = 0
        while folders:
            if requests_made >= MAX_LIST_REQUESTS or time.monotonic() >= deadline:
                return SecretListing(names, truncated=True)
            folder = folders.popleft()
            requests_made += 1
            try:
                keys = self._with_relogin(lambda client: self._list(client, folder))
            except _sdk().vendor_errors as exc:
                error = _translate(exc, f"listing {folder or '/'!r} in mount {settings['mount']!r}")
                if isinstance(error, SecretNotAllowed) and requests_made > 1:
                    continue  # the policy hides this subfolder; the rest is still worth showing
                raise error from exc
            for key in keys:
                path = folder + key
                if key.endswith("/"):
                    # Entered only when it can hold names under the prefix.
                    if path.startswith(prefix) or prefix.startswith(path):
                        folders.append(path)
                elif path.startswith(prefix) and accept(path):
                    if len(names) >= limit:
                        return SecretListing(names, truncated=True)
                    names.append(path)
        return SecretListing(names)

    def _list(self, client: hvac.Client, folder: str) -> list[str]:
        settings = self._config()
        kv = client.secrets.kv.v1 if settings["kv_version"] == 1 else client.secrets.kv.v2
        try:
            response = kv.list_secrets(folder, mount_point=settings["mount"])
        except _sdk().errors.InvalidPath:
            return []  # Vault answers 404 for a folder with nothing in it
        return [str(key) for key in (response.get("data") or {}).get("keys") or []]

    def close(self) -> None:
        """Close the HTTP session and delete the CA file."""
        with self._lock:
            client, self._client = self._client, None
            self._logged_in = False
            ca_file, self._ca_file = self._ca_file, None
        if client is not None:
            client.adapter.close()
        if ca_file is not None:
            ca_file()

    # -- reading ------------------------------------------------------------------

    def _read(self, client: hvac.Client, path: str, version: int | None) -> tuple[dict[str, Any], str | None]:
        settings = self._config()
        if settings["kv_version"] == 1:
            response = client.secrets.kv.v1.read_secret(path, mount_point=settings["mount"])
            return response.get("data") or {}, None
        response = client.secrets.kv.v2.read_secret_version(
            path, version=version, mount_point=settings["mount"], raise_on_deleted_version=True
        )
        return response["data"].get("data") or {}, str(response["data"]["metadata"]["version"])

    def _with_relogin(self, operation: Callable[[hvac.Client], _T]) -> _T:
        """Run ``operation`` with a logged-in client; on 403, log in once more and run it again."""
        client = self._session()
        token = client.token
        try:
            return operation(client)
        except _sdk().errors.Forbidden:
            # The token may have been revoked or expired since it was last refreshed.
            client = self._relogin(token)
        return operation(client)

    # -- client and token -------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        """The connection document, validated on first use so that construction never fails."""
        if self._settings is None:
            try:
                self._settings = self.connection_schema().load(self.connection)
            except ValidationError as exc:
                fields_at_fault = ", ".join(sorted(map(str, exc.normalized_messages())))
                raise ProviderMisconfigured(f"invalid hashicorp_vault connection (fields: {fields_at_fault})") from None
        return self._settings

    def _session(self) -> hvac.Client:
        """The client, logged in, with a token not near the end of its lease."""
        with self._lock:
            client = self._client or self._build_client()
            if not self._logged_in:
                self._login(client)
            elif self._refresh_at is not None and time.monotonic() >= self._refresh_at:
                self._refresh(client)
            return client

    def _relogin(self, failed_token: str | None) -> hvac.Client:
        with self._lock:
            client = self._client or self._build_client()
            # Concurrent readers refused with the same token need only one new login.
            if client.token == failed_token or not self._logged_in:
                self._login(client)
            return client

    def _build_client(self) -> hvac.Client:
        settings = self._config()
        verify: str | bool = True
        if settings["ca_certificate_pem"]:
            verify = self._write_ca_file(settings["ca_certificate_pem"])
        # An empty token keeps hvac from picking up VAULT_TOKEN or ~/.vault-token.
        self._client = _sdk().Client(
            url=settings["url"],
            token="",
            namespace=settings["namespace"],
            verify=verify,
            timeout=settings["timeout_seconds"],
        )
        return self._client

    def _write_ca_file(self, pem: str) -> str:
        """Write the CA bundle to a private temporary file, as requests needs a path; deleted on close."""
        fd, path = tempfile.mkstemp(prefix="smtpconf-vault-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
        self._ca_file = weakref.finalize(self, _remove_file, path)
        return path

    def _login(self, client: hvac.Client) -> None:
        """Authenticate with the configured method and record the token's lease. Holds ``_lock``."""
        auth = self._config()["auth"]
        method = auth["method"]
        self._logged_in = False
        try:
            if method == "token":
                client.token = self._credential(auth["token"])
                data = client.auth.token.lookup_self()["data"]
                lease, renewable = int(data.get("ttl") or 0), bool(data.get("renewable"))
            else:
                if method == "approle":
                    response = client.auth.approle.login(
                        auth["role_id"], self._credential(auth["secret_id"]), mount_point=auth["mount"]
                    )
                elif method == "kubernetes":
                    response = client.auth.kubernetes.login(
                        auth["role"], self._credential(auth["jwt"]), mount_point=auth["mount"]
                    )
                else:
                    response = client.auth.jwt.jwt_login(
                        auth["role"], self._credential(auth["jwt"]), path=auth["mount"]
                    )
                lease, renewable = int(response["auth"]["lease_duration"]), bool(response["auth"]["renewable"])
        except _sdk().vendor_errors as exc:
            raise _translate(exc, f"logging in with {method} auth", authenticating=True) from exc
        self._track(lease, renewable)
        self._logged_in = True

    def _refresh(self, client: hvac.Client) -> None:
        """Renew the token, or log in again if it cannot be renewed for a full lease. Holds ``_lock``."""
        if self._renewable:
            try:
                renewed = client.auth.token.renew_self()["auth"]
            except _sdk().errors.VaultError:
                renewed = None  # expired or revoked meanwhile: a new login follows
            if renewed is not None and int(renewed["lease_duration"]) >= self._lease_seconds:
                self._track(int(renewed["lease_duration"]), bool(renewed["renewable"]))
                return
        # Not renewable, or renewed for less (it reached its max TTL): replace it before it ends.
        self._login(client)

    def _track(self, lease_seconds: int, renewable: bool) -> None:
        self._lease_seconds = lease_seconds
        self._renewable = renewable
        # A lease of 0 is a token that never expires (a root token, or a TTL-less one).
        self._refresh_at = time.monotonic() + lease_seconds * REFRESH_AT_LEASE_FRACTION if lease_seconds else None

    def _credential(self, ref: Mapping[str, str]) -> str:
        """Resolve a credential reference; messages name the reference, never the value."""
        kind, name = next(iter(ref.items()))
        try:
            value = self.context.credential(ref).strip()
        except (LookupError, OSError, ValueError) as exc:
            raise ProviderMisconfigured(f"credential {kind} {name!r} cannot be read ({type(exc).__name__})") from None
        if not value:
            raise ProviderMisconfigured(f"credential {kind} {name!r} is empty")
        return value
