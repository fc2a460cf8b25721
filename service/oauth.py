"""OAuth2 access tokens cached per endpoint, client, scope, subject and client-secret digest, one request per
key at a time for the whole instance (the token is shared by its workers, sealed on disk). Never imports Flask."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from service import smtp_check
from service.observability import TOKEN_REQUESTS
from service.oauth_flows import (
    OAUTH_ERRORS,
    PolicedSession,
    Token,
    TokenError,
    fetch_client_credentials,
    fetch_google,
    fetch_microsoft,
    with_defaults,
)
from service.smtp_check.policy import DestinationPolicy
from service.token_store import SharedTokens

log = logging.getLogger("smtpconf.oauth")

#: A token is renewed this long before it expires (at most half its lifetime).
RENEW_BEFORE_SECONDS = 60.0
#: A token this close to expiry is not handed out even when its renewal failed.
STILL_USABLE_SECONDS = 5.0
#: How long one token request may take, whatever the check's own timeout.
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CACHED_TOKENS = 1024
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

    With ``shared`` the workers of an instance share each token: one of them
    asks the endpoint, the others use what it stored. Each process keeps the
    tokens it used in memory, so a cached read touches no file.
    """

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        shared: SharedTokens | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.policy = policy
        self.shared = shared
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
        with self._lock:
            rejected = self._tokens.pop(key, None) if refresh else None
        if not refresh:
            cached = self._fresh(self._tokens.get(key))
            if cached is not None:
                return cached
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        # Concurrent requests for one key wait here for the one request in flight.
        if not flight.acquire(timeout=timeout + 1):
            raise TokenError("The token endpoint did not answer in time (another request for the same token is waiting for it).")
        try:
            cached = self._fresh(self._tokens.get(key))
            if cached is not None and not refresh:
                return cached
            if self.shared is None:
                return self._renew(key, auth, secret, subject, timeout, refresh, None)
            try:
                with self.shared.locked(key, timeout + 1):
                    stored = self.shared.read(key)
                    usable = self._fresh(stored)
                    # After a refusal, a token another worker got meanwhile is the new one: used, not asked for again.
                    if usable is not None and (not refresh or (rejected is not None and usable.value != rejected.value)):
                        self._keep(key, usable)
                        return usable
                    return self._renew(key, auth, secret, subject, timeout, refresh, stored)
            except TimeoutError:
                raise TokenError("The token endpoint did not answer in time (another worker's request for the same token is waiting for it).") from None
        finally:
            flight.release()

    def _renew(
        self, key: TokenKey, auth: Mapping[str, Any], secret: str, subject: str, timeout: float, refresh: bool, stored: Token | None
    ) -> Token:
        try:
            token = self._fetch(auth, secret, subject, timeout)
        except TokenError:
            # Renewal is due but the endpoint is down: a token that has not expired yet still works.
            held = None if refresh else self._tokens.get(key) or stored
            if held is not None and held.expires_at - self.clock() > STILL_USABLE_SECONDS:
                return dataclasses.replace(held, from_cache=True)
            raise
        self._keep(key, token)
        if self.shared is not None:
            self.shared.write(key, token)
        return token

    def _keep(self, key: TokenKey, token: Token) -> None:
        with self._lock:
            if len(self._tokens) >= MAX_CACHED_TOKENS:
                self._tokens.clear()
            self._tokens[key] = dataclasses.replace(token, from_cache=False)

    def drop(self, token: Token) -> None:
        """Forget a token the SMTP server refused (revoked, or its rights withdrawn)."""
        with self._lock:
            for key, held in list(self._tokens.items()):
                if held.value == token.value:
                    del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
        if self.shared is not None:
            self.shared.clear()

    def _fresh(self, token: Token | None) -> Token | None:
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
