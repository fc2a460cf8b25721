"""A provider type shipped by a separate distribution, as a third party would write it."""

from __future__ import annotations

from typing import Any, Mapping

from marshmallow import RAISE, fields

from providers.base import ConnectionSchema, ReferenceSchema, SecretNotFound, SecretProvider, SecretValue


class VaultletConnectionSchema(ConnectionSchema):
    class Meta:
        unknown = RAISE

    secrets = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class VaultletReferenceSchema(ReferenceSchema):
    class Meta:
        unknown = RAISE

    secret = fields.String(required=True)


class VaultletProvider(SecretProvider):
    """Secrets from the connection document itself (a test double of a manager)."""

    source = "vaultlet"
    connection_schema = VaultletConnectionSchema
    reference_schema = VaultletReferenceSchema

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        try:
            return SecretValue(self.connection["secrets"][reference["secret"]], version="1")
        except KeyError:
            raise SecretNotFound(f"no secret {reference['secret']!r}") from None
