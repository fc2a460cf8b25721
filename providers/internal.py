"""The ``internal`` source: the service's own encrypted secret store."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from marshmallow import RAISE, fields, validate

from providers.base import (
    ConnectionSchema,
    ProviderMisconfigured,
    ReferenceSchema,
    SecretNotFound,
    SecretListing,
    SecretProvider,
    SecretValue,
)

CHECK_SECRET = "smtpconf-check/does-not-exist"


class InternalConnectionSchema(ConnectionSchema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.Equal("internal"))


class InternalReferenceSchema(ReferenceSchema):
    class Meta:
        unknown = RAISE

    secret = fields.String(required=True, validate=validate.Length(min=1, max=256))
    # Versions are counted in an INTEGER column; a larger number names none and cannot be queried.
    version = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=1, max=2**31 - 1))


class InternalProvider(SecretProvider):
    """Secrets kept in the service's own store (``/v1/secrets``), AES-256-GCM at rest.

    Connection (exists from the first start, edited like any other)::

        {"type": "internal", "allowed_secrets": ["smtp/*"], "cache_ttl_seconds": 300}

    Reference: ``{"source": "internal", "secret": "smtp/relay", "version": null}``.
    """

    source = "internal"
    connection_schema = InternalConnectionSchema
    reference_schema = InternalReferenceSchema

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        store = self.context.internal_store
        if store is None:
            raise ProviderMisconfigured("the internal store is not available here")
        return store.read(reference["secret"], reference.get("version"))

    def check(self) -> None:
        store = self.context.internal_store
        if store is None:
            raise ProviderMisconfigured("the internal store is not available here")
        try:
            store.read(CHECK_SECRET)
        except SecretNotFound:
            pass  # the store answered: that is all a check asks

    def list_secrets(self, prefix: str, *, accept: Callable[[str], bool], limit: int) -> SecretListing:
        """Names in the store under ``prefix``; the store is one table, read in one query."""
        store = self.context.internal_store
        if store is None:
            raise ProviderMisconfigured("the internal store is not available here")
        names = [name for name in store.names() if name.startswith(prefix) and accept(name)]
        return SecretListing(names[:limit], truncated=len(names) > limit)
