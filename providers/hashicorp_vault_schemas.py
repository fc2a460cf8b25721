"""What a HashiCorp Vault (or OpenBao) connection and reference look like: marshmallow schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from providers.base import ConnectionSchema, CredentialRef, Discriminated, ReferenceSchema

#: Where Kubernetes mounts a pod's service-account token.
KUBERNETES_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _validate_path(value: str) -> None:
    if any(segment in ("", ".", "..") for segment in value.split("/")):
        raise ValidationError("Must be names separated by '/', without empty, '.' or '..' segments.")


def _validate_ca_pem(value: str) -> None:
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ValidationError("Must be one or more PEM-encoded certificates.") from None


class _JsonNumber(fields.Float):
    """A JSON number only: a plain Float also reads the string "5"."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float:
        if not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class TokenAuthSchema(_StrictSchema):
    """``{"method": "token", "token": {"env": "VAULT_TOKEN"}}``: a token issued out of band."""

    method = fields.String(required=True, validate=validate.Equal("token"))
    token = CredentialRef(required=True)


class AppRoleAuthSchema(_StrictSchema):
    """``{"method": "approle", "role_id": "...", "secret_id": {"file": "..."}}``."""

    method = fields.String(required=True, validate=validate.Equal("approle"))
    mount = fields.String(load_default="approle", validate=_validate_path)
    role_id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    secret_id = CredentialRef(required=True)


class KubernetesAuthSchema(_StrictSchema):
    """``{"method": "kubernetes", "role": "...", "jwt": {"file": "<service-account token>"}}``."""

    method = fields.String(required=True, validate=validate.Equal("kubernetes"))
    mount = fields.String(load_default="kubernetes", validate=_validate_path)
    role = fields.String(required=True, validate=validate.Length(min=1, max=256))
    jwt = CredentialRef(load_default=lambda: {"file": KUBERNETES_TOKEN_FILE})


class JwtAuthSchema(_StrictSchema):
    """``{"method": "jwt", "role": "...", "jwt": {"file": "..."}}``."""

    method = fields.String(required=True, validate=validate.Equal("jwt"))
    mount = fields.String(load_default="jwt", validate=_validate_path)
    role = fields.String(required=True, validate=validate.Length(min=1, max=256))
    jwt = CredentialRef(required=True)


#: The schema validating each auth ``method``.
AUTH_SCHEMAS: dict[str, type[Schema]] = {
    "token": TokenAuthSchema,
    "approle": AppRoleAuthSchema,
    "kubernetes": KubernetesAuthSchema,
    "jwt": JwtAuthSchema,
}


class HashiCorpVaultConnectionSchema(ConnectionSchema):
    """A connection to one KV mount of a Vault server."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.Equal("hashicorp_vault"))
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    namespace = fields.String(load_default=None, allow_none=True, validate=_validate_path)
    mount = fields.String(load_default="secret", validate=_validate_path)
    kv_version = fields.Integer(strict=True, load_default=2, validate=validate.OneOf([1, 2]))
    auth = Discriminated("method", AUTH_SCHEMAS, required=True)
    ca_certificate_pem = fields.String(load_default=None, allow_none=True, validate=_validate_ca_pem)
    timeout_seconds = _JsonNumber(load_default=5.0, validate=validate.Range(min=0, max=60, min_inclusive=False))


class HashiCorpVaultReferenceSchema(ReferenceSchema):
    """A secret's ``key`` at ``path`` in the connection's mount, optionally pinned to a KV v2 ``version``.

    ``{"source": "hashicorp_vault", "provider": "CONN", "path": "mail/smtp", "key": "password", "version": null}``
    """

    class Meta:
        unknown = RAISE

    source = fields.String(required=True, validate=validate.Equal("hashicorp_vault"))
    provider = fields.String(required=True, validate=validate.Length(min=1, max=128))
    path = fields.String(required=True, validate=[validate.Length(min=1, max=512), _validate_path])
    key = fields.String(required=True, validate=validate.Length(min=1, max=256))
    # Vault numbers versions with 64-bit integers; a larger number names none.
    version = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=2**63 - 1))
