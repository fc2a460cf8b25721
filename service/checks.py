"""Validate and test-connection: candidate or saved settings through the SMTP check engine."""

from __future__ import annotations

import collections
import datetime as dt
import math
import threading
import time
from typing import Any, Callable

from marshmallow import ValidationError

from service import smtp_check
from service.errors import ApiError, ValidationFailed
from service.observability import SMTP_CHECKS
from service.schemas import SYSTEM_DEFAULTS, check_address, credential_errors, is_oauth2, load_settings
from service.credentials import CredentialPath
from service.secrets import SecretsService
from service.settings import (
    DESTINATION_FIELDS,
    SYSTEM_SCOPE,
    Effective,
    SettingsService,
    StoredSettings,
    check_auth_references,
    kept_auth_secret_changes,
)

VALIDATE_FIELDS = {"settings"}
TEST_FIELDS = {"settings", "to", "include_cc_bcc"}


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"
    title = "Too many checks"


class RateLimiter:
    """A sliding window per key (the token): at most ``limit`` calls a minute, per process."""

    def __init__(self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._calls: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            calls = self._calls[key]
            while calls and now - calls[0] >= self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                retry = max(1, math.ceil(self.window - (now - calls[0])))
                raise RateLimited(
                    f"At most {self.limit} validations and test mails a minute per token; retry in {retry} s.",
                    headers={"Retry-After": str(retry)},
                )
            calls.append(now)


class CheckService:
    """Builds a check request from stored or candidate settings and runs it."""

    def __init__(
        self,
        settings: SettingsService,
        secrets: SecretsService,
        credentials: CredentialPath,
        policy: smtp_check.DestinationPolicy,
        *,
        fips_mode: bool,
        rate_limit: int,
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.credentials = credentials
        self.policy = policy
        self.fips_mode = fips_mode
        self.limiter = RateLimiter(rate_limit)

    def run(self, tenant: str | None, payload: Any, *, caller: str, send: bool) -> dict[str, Any]:
        """Validate (``send=False``) or send a test mail; the result is the contract's document."""
        payload = {} if payload is None else payload
        allowed = TEST_FIELDS if send else VALIDATE_FIELDS
        if not isinstance(payload, dict):
            raise ValidationFailed(errors={"_schema": ["The body is a JSON object."]})
        errors: dict[str, Any] = {name: ["Unknown field."] for name in payload if name not in allowed}
        to = payload.get("to")
        if send and to is not None:
            try:
                if not isinstance(to, str):
                    raise ValidationError("Must be a string.")
                check_address(to)
            except ValidationError as exc:
                errors["to"] = exc.messages
        include_cc_bcc = payload.get("include_cc_bcc", False)
        if not isinstance(include_cc_bcc, bool):
            errors["include_cc_bcc"] = ["Must be a boolean."]
        if errors:
            raise ValidationFailed(errors=errors)
        self.limiter.hit(caller)
        if "settings" in payload:
            effective = self.candidate(tenant, payload["settings"])
        else:
            effective = self.settings.effective(tenant)
        result = self.check(effective, send_to=(to or effective.document["from_email"]) if send else None, include_cc_bcc=include_cc_bcc)
        SMTP_CHECKS.labels("test" if send else "validate", "ok" if result["ok"] else result["error"]["code"]).inc()
        return result

    def candidate(self, tenant: str | None, document: Any) -> Effective:
        """Settings as they would be if saved, without saving; the round-trip rule applies."""
        scope = SYSTEM_SCOPE if tenant is None else f"tenant:{tenant}"
        try:
            loaded = load_settings(document, tenant=tenant is not None)
        except ValidationError as exc:
            raise ValidationFailed(errors={"settings": exc.messages}) from None
        if self.fips_mode and loaded.get("insecure_skip_verify"):
            raise ValidationFailed(
                "insecure_skip_verify is not allowed in FIPS mode.",
                code="fips_forbids_skip_verify",
                errors={"settings": {"insecure_skip_verify": ["Not allowed when the service runs in FIPS mode."]}},
            )
        password = loaded.get("password")
        if password is not None:
            try:
                loaded["password"] = self.secrets.check_reference(password)
            except ValidationFailed as exc:
                exc.errors = {"settings": exc.errors}
                raise
        if loaded.get("auth") is not None:
            try:
                loaded["auth"] = check_auth_references(loaded["auth"], self.secrets.check_reference)
            except ValidationFailed as exc:
                exc.errors = {"settings": exc.errors}
                raise
        system = self.settings.get(SYSTEM_SCOPE) if tenant is not None else None
        stored = self.settings.get(scope)
        if password is not None and password.get("source") == "plaintext" and "value" not in password:
            loaded["password"] = self._stored_plaintext(tenant, loaded, stored, system)
        if is_oauth2(loaded):
            loaded["auth"] = self._stored_auth_secrets(loaded["auth"], stored)
        candidate = StoredSettings(scope, loaded, 0, _epoch(), "candidate")
        if tenant is None:
            effective = SettingsService.merge(candidate, None, None)
        else:
            effective = SettingsService.merge(system, candidate, tenant)
        errors = credential_errors(effective.document, own=loaded)
        if errors:
            raise ValidationFailed(errors={"settings": errors})
        return effective

    def _stored_auth_secrets(self, auth: dict[str, Any], stored: StoredSettings | None) -> dict[str, Any]:
        """A stored OAuth2 secret is only used with the token endpoint and client it was stored for."""
        stored_auth = (stored.document.get("auth") if stored else None) or {}
        out = dict(auth)
        for name, reference in auth.items():
            if not isinstance(reference, dict) or reference.get("source") != "plaintext" or "value" in reference:
                continue
            kept = stored_auth.get(name) if isinstance(stored_auth.get(name), dict) else None
            changed = kept_auth_secret_changes(stored_auth, auth) if kept and kept.get("source") == "plaintext" else None
            if changed is None or changed:
                reason = f"{', '.join(changed)} changed" if changed else "no stored value at this level"
                raise ValidationFailed(
                    f"The stored {name} is never sent to another token endpoint or client ({reason}): send it again.",
                    code="password_required",
                    errors={"settings": {"auth": {name: [f"Send the value again: {reason}."]}}},
                )
            assert stored is not None
            out[name] = {**kept, "_stored_scope": stored.scope}
        return out

    def _stored_plaintext(
        self, tenant: str | None, loaded: dict[str, Any], stored: StoredSettings | None, system: StoredSettings | None
    ) -> dict[str, Any]:
        """A stored password is only used for the destination it was stored for."""
        stored_password = (stored.document.get("password") if stored else None) or {}
        if stored_password.get("source") != "plaintext":
            raise ValidationFailed(
                "There is no stored password to use: send the password value.",
                code="password_required",
                errors={"settings": {"password": ["No stored password at this level."]}},
            )
        base = {**SYSTEM_DEFAULTS, **(system.document if system else {})}
        before = {**base, **stored.document}
        after = {**base, **loaded}
        changed = [name for name in DESTINATION_FIELDS if before.get(name) != after.get(name)]
        if changed:
            raise ValidationFailed(
                f"The stored password is never sent to a new destination ({', '.join(changed)} changed): send it again.",
                code="password_required",
                errors={"settings": {"password": [f"Send the password again: {', '.join(changed)} changed."]}},
            )
        return {**stored_password, "_stored_scope": stored.scope}

    def check(self, effective: Effective, *, send_to: str | None, include_cc_bcc: bool) -> dict[str, Any]:
        request = smtp_check.CheckRequest(
            settings=effective.document,
            get_password=self.credentials.password_getter(effective),
            get_token=self.credentials.token_getter(effective),
            policy=self.policy,
            send_to=send_to,
            include_cc_bcc=include_cc_bcc,
            scope="system" if effective.scope == SYSTEM_SCOPE else effective.scope.replace(":", " ", 1),
            fips_mode=self.fips_mode,
        )
        return smtp_check.run_check(request)


def _epoch() -> dt.datetime:
    return dt.datetime.fromtimestamp(0, dt.timezone.utc)
