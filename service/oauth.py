"""OAuth2 access tokens for SMTP (XOAUTH2): Microsoft Entra ID, Google service accounts, RFC 6749 client credentials.

The token clients are the vendors' own libraries (msal for Entra ID,
google-auth for Google); a generic endpoint gets one RFC 6749 request. Every
HTTP request goes through one session that holds the token endpoint to the
destination policy (HTTPS only, no denied networks) and to a deadline.
Tokens are cached per endpoint, client, scope, subject and client-secret
digest until shortly before they expire, with one request per key at a time.
This module never imports Flask.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from service.observability import TOKEN_REQUESTS
from service import smtp_check
from service.smtp_check.policy import LOOKUPS, DestinationPolicy, ip_literal

log = logging.getLogger("smtpconf.oauth")

FLOWS = ("microsoft", "google", "client_credentials")
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
#: The fields naming where a token comes from: a plaintext secret is kept on a round trip only while they hold.
ENDPOINT_FIELDS = ("flow", "tenant_id", "authority_host", "token_url", "client_id")
#: The secrets an ``auth`` object may hold, each a reference like ``password``.
SECRET_FIELDS = ("client_secret", "client_certificate", "service_account_key")
#: A token is renewed this long before it expires (at most half its lifetime).
RENEW_BEFORE_SECONDS = 60.0
#: A token this close to expiry is not handed out even when its renewal failed.
STILL_USABLE_SECONDS = 5.0
#: How long one token request may take, whatever the check's own timeout.
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CACHED_TOKENS = 1024
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


@dataclasses.dataclass(frozen=True)
class TokenKey:
    """What a cached token is good for; the secret appears only as a digest."""

    endpoint: str
    client: str
    scope: str
    subject: str
    secret_digest: str = dataclasses.field(repr=False)


def token_key(auth: Mapping[str, Any], secret: str, subject: str) -> TokenKey:
    flow = auth["flow"]
    if flow == "microsoft":
        endpoint = f"{auth['authority_host'].rstrip('/')}/{auth['tenant_id']}"
        client = auth["client_id"]
    elif flow == "google":
        endpoint = auth.get("token_url") or ""
        client = ""  # the key JSON names the client; its digest stands for it
    else:
        endpoint, client = auth["token_url"], auth["client_id"]
    digest = hashlib.sha256(f"{flow}\0{secret}".encode()).hexdigest()
    return TokenKey(f"{flow}:{endpoint}", client, auth.get("scope") or "", subject, digest)


class TokenService:
    """Access tokens, cached per key until shortly before they expire, one request per key at a time.

    The cache is per process: each gunicorn worker asks once for its own token.
    """

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        clock: Callable[[], float] = time.time,
        resolver: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.resolver = resolver
        self._lock = threading.Lock()
        self._tokens: dict[TokenKey, Token] = {}
        self._flights: dict[TokenKey, threading.Lock] = {}

    def get(
        self, auth: Mapping[str, Any], secret: str, subject: str, *, refresh: bool = False, timeout: float | None = None
    ) -> Token:
        """A token for ``auth`` acting as ``subject`` (the mailbox); ``refresh`` drops a cached one first.

        ``timeout`` bounds a request to the endpoint (default ``REQUEST_TIMEOUT_SECONDS``).
        """
        timeout = min(timeout or REQUEST_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS)
        auth = with_defaults(auth)
        key = token_key(auth, secret, subject)
        if refresh:
            with self._lock:
                self._tokens.pop(key, None)
        else:
            cached = self._fresh(key)
            if cached is not None:
                return cached
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        # Concurrent requests for one key wait here for the one request in flight.
        if not flight.acquire(timeout=timeout + 1):
            raise TokenError("The token endpoint did not answer in time (another request for the same token is waiting for it).")
        try:
            cached = self._fresh(key)
            if cached is not None and not refresh:
                return cached
            try:
                token = self._fetch(auth, secret, subject, timeout)
            except TokenError:
                # Renewal is due but the endpoint is down: a token that has not expired yet still works.
                held = None if refresh else self._tokens.get(key)
                if held is not None and held.expires_at - self.clock() > STILL_USABLE_SECONDS:
                    return dataclasses.replace(held, from_cache=True)
                raise
            with self._lock:
                if len(self._tokens) >= MAX_CACHED_TOKENS:
                    self._tokens.clear()
                self._tokens[key] = token
            return token
        finally:
            flight.release()

    def drop(self, token: Token) -> None:
        """Forget a token the SMTP server refused (revoked, or its rights withdrawn)."""
        with self._lock:
            for key, held in list(self._tokens.items()):
                if held.value == token.value:
                    del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def _fresh(self, key: TokenKey) -> Token | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        now = self.clock()
        margin = min(RENEW_BEFORE_SECONDS, max(0.0, token.expires_at - token.issued_at) / 2)
        if token.expires_at - now <= margin:
            return None
        return dataclasses.replace(token, from_cache=True)

    def _fetch(self, auth: Mapping[str, Any], secret: str, subject: str, timeout: float) -> Token:
        flow = auth["flow"]
        # The engine's resolver, looked up now, so a lab that replaces it there replaces it here too.
        session = PolicedSession(self.policy, timeout, self.resolver or smtp_check.default_resolver())
        started = time.monotonic()
        try:
            if flow == "microsoft":
                token = fetch_microsoft(auth, secret, session)
            elif flow == "google":
                token = fetch_google(auth, secret, subject, session)
            elif flow == "client_credentials":
                token = fetch_client_credentials(auth, secret, session)
            else:
                raise TokenError(f"Unknown OAuth2 flow {flow!r}.")
        except TokenError as exc:
            outcome = "failed" if exc.oauth_error is None else exc.oauth_error if exc.oauth_error in OAUTH_ERRORS else "other"
            TOKEN_REQUESTS.labels(flow, outcome).inc()
            log.warning("token request failed", extra={"flow": flow, "oauth_error": exc.oauth_error})
            raise
        finally:
            session.close()
        TOKEN_REQUESTS.labels(flow, "ok").inc()
        log.info("token obtained", extra={"flow": flow, "elapsed_ms": round((time.monotonic() - started) * 1000)})
        return token
