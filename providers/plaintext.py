"""The ``plaintext`` source: a password kept by the service itself, encrypted at rest."""

from __future__ import annotations

from typing import Any, Mapping

from marshmallow import RAISE, ValidationError, fields, validate, validates_schema

from providers.base import ReferenceSchema, SecretProvider, SecretValue


class PlaintextReferenceSchema(ReferenceSchema):
    """``{"source": "plaintext", "value": "..."}``, or the read-back form ``{"value_set": true}``."""

    class Meta:
        unknown = RAISE

    value = fields.String(validate=validate.Length(min=1, max=1024), load_only=True)
    value_set = fields.Boolean()

    @validates_schema
    def _value_or_marker(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("value" in data) == (data.get("value_set") is True):
            raise ValidationError('Give "value", or "value_set": true to keep the stored one.', "value")


class PlaintextProvider(SecretProvider):
    """No manager to ask: the service decrypts the stored value and hands it over.

    Reference: ``{"source": "plaintext", "value": "s3cret"}``.
    """

    source = "plaintext"
    reference_schema = PlaintextReferenceSchema
    needs_connection = False

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        return SecretValue(value=reference["value"], version=reference.get("version"))

    @classmethod
    def secret_name(cls, reference: Mapping[str, Any]) -> str:
        return "plaintext"
