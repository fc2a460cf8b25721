"""OAuth2 access tokens for SMTP (XOAUTH2): how each flow asks its token endpoint, through one policed session.

The token clients are the vendors' own libraries (msal for Entra ID,
google-auth for Google); a generic endpoint gets one RFC 6749 request. Every
HTTP request goes through one session that holds the token endpoint to the
destination policy (HTTPS only, no denied networks) and to a deadline.
This module never imports Flask.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from service.smtp_check.policy import LOOKUPS, DestinationPolicy, ip_literal

FLOWS = ("microsoft", "google", "client_credentials")
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
#: The fields naming where a token comes from: a plaintext secret is kept on a round trip only while they hold.
ENDPOINT_FIELDS = ("flow", "tenant_id", "authority_host", "token_url", "client_id")
#: The secrets an ``auth`` object may hold, each a reference like ``password``.
SECRET_FIELDS = ("client_secret", "client_certificate", "service_account_key")
#: RFC 6749 5.2 error codes; anything else is counted as "other" so a metric label stays bounded.
OAUTH_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "access_denied", "server_error", "temporarily_unavailable",
})


class TokenError(Exception):
    """No token could be had; ``oauth_error`` is the endpoint's ``error`` code when it gave one."""

    def __init__(self, message: str, *, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.oauth_error = oauth_error


class TokenDenied(TokenError):
    """The token endpoint is refused by the destination policy: a setting to change, not an outage."""


@dataclasses.dataclass(frozen=True)
class Token:
    """An access token; the value never appears in the repr."""

    value: str = dataclasses.field(repr=False)
    expires_at: float
    flow: str
    issued_at: float
    from_cache: bool = False

    @property
    def expires_at_datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.expires_at, dt.timezone.utc)


def with_defaults(auth: Mapping[str, Any]) -> dict[str, Any]:
    """The ``auth`` object with the contract's defaults filled in for its flow."""
    full = dict(auth)
    if full.get("flow") == "microsoft":
        full.setdefault("scope", MICROSOFT_SCOPE)
        full["authority_host"] = full.get("authority_host") or MICROSOFT_AUTHORITY
    elif full.get("flow") == "google":
        full.setdefault("scope", GOOGLE_SCOPE)
    return full


def secret_field(auth: Mapping[str, Any]) -> str:
    """Which reference of the ``auth`` object holds the credential for its flow."""
    for name in SECRET_FIELDS:
        if auth.get(name) is not None:
            return name
    raise TokenError("The OAuth2 settings name no client secret, certificate or key.")


class PolicedSession(requests.Session):
    """A requests session that reaches only HTTPS endpoints outside the denied networks, within a deadline.

    msal, google-auth and the client-credentials request all use it, so no
    token request can be pointed at a metadata endpoint or sent in plaintext.
    Certificates are checked against the process trust store
    (``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` may name a private CA).
    """

    def __init__(self, policy: DestinationPolicy, timeout: float, resolver: Callable[[str, int], list[str]]) -> None:
        super().__init__()
        self.policy = policy
        self.deadline = time.monotonic() + timeout
        self.resolver = resolver

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        text = url.decode() if isinstance(url, bytes) else url
        self.admit(text)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TokenError("The token endpoint did not answer in time.")
        asked = kwargs.get("timeout")
        kwargs["timeout"] = min(left, float(asked)) if isinstance(asked, (int, float)) and asked > 0 else left
        kwargs["allow_redirects"] = False
        return super().request(method, url, *args, **kwargs)

    def admit(self, url: str) -> None:
        """Refuse a URL that is not HTTPS or whose host resolves into a denied network."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise TokenError(f"The token endpoint must be an https:// URL, not {parts.scheme or 'a relative'} one.")
        host = parts.hostname
        port = parts.port or 443
        literal = ip_literal(host)
        if literal:
            addresses = [literal]
        else:
            try:
                addresses = LOOKUPS.call(self.resolver, (host, port), max(0.1, self.deadline - time.monotonic()))
            except TimeoutError:
                raise TokenError(f"Resolving the token endpoint {host} took too long.") from None
            except (OSError, UnicodeError):
                raise TokenError(f"The token endpoint's host name {host} could not be resolved.") from None
        for address in addresses:
            network = self.policy.denied_network(address)
            if network is not None:
                raise TokenDenied(f"The token endpoint {host} ({address}) is in the denied network {network}.")


def _oauth_failure(body: Any, status: int) -> TokenError:
    """The endpoint's RFC 6749 5.2 error, as a TokenError."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        message = description if isinstance(description, str) and description else f"The token endpoint answered {body['error']}."
        return TokenError(message[:1000], oauth_error=body["error"][:100])
    return TokenError(f"The token endpoint answered HTTP {status} without an OAuth2 error.")


def _token_from(body: Any, flow: str, requested_at: float) -> Token:
    if not isinstance(body, Mapping) or not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenError("The token endpoint answered without an access token.")
    try:
        lifetime = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    return Token(body["access_token"], requested_at + lifetime, flow, requested_at)


def fetch_client_credentials(auth: Mapping[str, Any], secret: str, session: PolicedSession) -> Token:
    """RFC 6749 4.4: one POST with the client authenticated by HTTP Basic (2.3.1)."""
    data = {"grant_type": "client_credentials"}
    if auth.get("scope"):
        data["scope"] = auth["scope"]
    requested_at = time.time()
    try:
        response = session.post(auth["token_url"], data=data, auth=(auth["client_id"], secret), headers={"Accept": "application/json"})
    except requests.Timeout:
        raise TokenError("The token endpoint did not answer in time.") from None
    except requests.RequestException as exc:
        raise TokenError(f"The token endpoint could not be reached: {type(exc).__name__}.") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        raise _oauth_failure(body, response.status_code)
    return _token_from(body, "client_credentials", requested_at)


def fetch_microsoft(auth: Mapping[str, Any], secret: str, session: PolicedSession) -> Token:
    """Entra ID client credentials through msal, with a client secret or a certificate (PEM key and certificate)."""
    import msal  # a client library is imported when its flow is first used

    authority_host = str(auth["authority_host"]).rstrip("/")
    credential: Any = secret
    if auth.get("client_certificate") is not None:
        credential = _certificate_credential(secret)
    requested_at = time.time()
    try:
        app = msal.ConfidentialClientApplication(
            auth["client_id"],
            client_credential=credential,
            authority=f"{authority_host}/{auth['tenant_id']}",
            # A sovereign cloud or a private stand-in is used as given.
            instance_discovery=authority_host == MICROSOFT_AUTHORITY,
            http_client=session,
            token_cache=msal.TokenCache(),
        )
        result = app.acquire_token_for_client(scopes=[auth["scope"]])
    except TokenError:
        raise
    except (requests.RequestException, ValueError) as exc:
        # msal reports an unreachable or malformed authority as ValueError; its text may quote the response.
        raise TokenError(f"Microsoft Entra ID could not be reached at {authority_host}: {type(exc).__name__}.") from None
    if "access_token" not in result:
        raise _oauth_failure(result, 400)
    return _token_from(result, "microsoft", requested_at)


def _certificate_credential(pem: str) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise TokenError("The client certificate is not a PEM holding a certificate and its private key.") from None
    return {
        "private_key": pem,
        "thumbprint": certificate.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 -- the x5t header Entra ID asks for
        "public_certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
    }


def fetch_google(auth: Mapping[str, Any], key_json: str, subject: str, session: PolicedSession) -> Token:
    """A Google service account with domain-wide delegation, acting as ``subject``, through google-auth."""
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import service_account

    try:
        info = json.loads(key_json)
        if not isinstance(info, dict):
            raise ValueError
        kwargs: dict[str, Any] = {"scopes": [auth["scope"]], "subject": subject}
        if auth.get("token_url"):
            kwargs["token_uri"] = auth["token_url"]
        credentials = service_account.Credentials.from_service_account_info(info, **kwargs)
    except (ValueError, KeyError, TypeError):
        raise TokenError("The service account key is not a Google service-account key JSON.") from None
    requested_at = time.time()
    try:
        credentials.refresh(google.auth.transport.requests.Request(session=session))
    except TokenError:
        raise
    except google.auth.exceptions.RefreshError as exc:
        body = exc.args[1] if len(exc.args) > 1 else None
        raise _oauth_failure(body, 400) from None
    except google.auth.exceptions.TransportError as exc:
        raise TokenError(f"Google's token endpoint could not be reached: {type(exc.__cause__ or exc).__name__}.") from None
    expiry = credentials.expiry
    expires_at = expiry.replace(tzinfo=dt.timezone.utc).timestamp() if expiry else time.time() + 3600
    return Token(credentials.token, expires_at, "google", requested_at)
