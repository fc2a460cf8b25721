"""The one way the sending core gets a credential: effective settings in, the SMTP engine's getter out."""

from __future__ import annotations

from service import smtp_check
from service.schemas import is_oauth2
from service.secrets import PasswordUnavailable, SecretsService, TokenUnavailable, password_scope
from service.settings import Effective, auth_scope


class CredentialAdapter:
    """Builds the password or token getter for effective settings, as validate and test-connection do."""

    def __init__(self, secrets: SecretsService) -> None:
        self.secrets = secrets

    def password_getter(self, effective: Effective) -> smtp_check.PasswordGetter | None:
        """The getter of the settings' password; None for anonymous settings or OAuth2."""
        reference = effective.document.get("password")
        if reference is None or is_oauth2(effective.document):
            return None
        scope = password_scope(effective)

        def get(refresh: bool) -> smtp_check.ResolvedPassword:
            try:
                resolved = self.secrets.resolve(reference, scope, refresh=refresh)
            except PasswordUnavailable as exc:
                raise smtp_check.PasswordUnavailable(exc.detail, source=reference.get("source")) from None
            return smtp_check.ResolvedPassword(resolved.value, resolved.source, resolved.version, resolved.from_cache)

        return get

    def token_getter(self, effective: Effective, *, timeout: float) -> smtp_check.TokenGetter | None:
        """The getter of an OAuth2 access token for the settings' mailbox; None unless the settings use OAuth2."""
        if not is_oauth2(effective.document):
            return None
        auth = effective.document["auth"]
        scope = auth_scope(effective)
        subject = str(effective.document["username"])

        def get(refresh: bool) -> smtp_check.AccessToken:
            try:
                token = self.secrets.access_token(auth, scope, subject, refresh=refresh, timeout=timeout)
            except PasswordUnavailable as exc:
                raise smtp_check.TokenUnavailable(
                    f"The OAuth2 client credential could not be resolved: {exc.detail}", code="password_unavailable"
                ) from None
            except TokenUnavailable as exc:
                raise smtp_check.TokenUnavailable(exc.detail, oauth_error=exc.extra.get("oauth_error")) from None
            return smtp_check.AccessToken(token.value, token.flow, token.expires_at_datetime, token.from_cache)

        return get
