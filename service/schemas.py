"""Marshmallow schemas for the settings document: one source of validation rules."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import email_validator
import idna
from email_validator import EmailNotValidError, validate_email
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

# The library refuses special-use domains (local, test, ...) even when it is told
# not to judge deliverability; emptying this list is its documented way to allow them.
email_validator.SPECIAL_USE_DOMAIN_NAMES.clear()

NOTIFICATION_TYPES = (
    "password_recovery",
    "license_status",
    "product_updates",
    "job_alerts",
    "robot_alerts",
    "tenant_invitation",
    "admin_email_change",
)

SETTINGS_FIELDS = (
    "host",
    "port",
    "security",
    "insecure_skip_verify",
    "ca_certificate_pem",
    "from_email",
    "from_name",
    "reply_to",
    "envelope_from",
    "username",
    "domain",
    "password",
    "auth",
    "cc",
    "bcc",
    "preferred_notifications",
    "timeout_seconds",
)
SYSTEM_DEFAULTS: dict[str, Any] = {
    "security": "starttls",
    "insecure_skip_verify": False,
    "ca_certificate_pem": None,
    "from_name": None,
    "reply_to": None,
    "envelope_from": None,
    "username": None,
    "domain": None,
    "password": None,
    "auth": {"method": "password"},
    "cc": [],
    "bcc": [],
    "preferred_notifications": [],
    "timeout_seconds": 10,
}
SECURITY_MODES = ("none", "starttls", "ssl")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_line_breaks(value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValidationError("Must not contain CR or LF.")


def check_address(value: str) -> str:
    """RFC 5321/5322 syntax, internationalised domains accepted, no CR/LF anywhere.

    Syntax, not public deliverability: company mail lives in ``corp.local`` or
    ``host.internal`` and test rigs in ``mail.test``, so special-use and
    single-label domains pass.
    """
    _no_line_breaks(value)
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")
    try:
        validate_email(value, check_deliverability=False, globally_deliverable=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValidationError(f"Not a valid email address: {exc}") from None
    return value


def check_host(value: str) -> str:
    """A host name (IDN allowed) or an IP literal (``[::1]`` or bare)."""
    _no_line_breaks(value)
    literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(literal)
        return value
    except ValueError:
        if literal is not value:
            raise ValidationError("Not a valid IP literal.") from None
    name = value[:-1] if value.endswith(".") else value
    ascii_name = name
    if not name.isascii() or "xn--" in name.lower():
        try:
            # IDNA 2008 with UTS 46 mapping, as for the domains of addresses: the older
            # codec built into Python also passes symbols, bad punycode and leading hyphens.
            ascii_name = idna.encode(name, uts46=True).decode("ascii")
        except UnicodeError:
            raise ValidationError("Not a valid host name.") from None
    labels = ascii_name.split(".")
    if not name or len(ascii_name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValidationError("Not a valid host name or IP address.")
    if labels[-1].isdigit():
        raise ValidationError("Not a valid host name or IP address.")
    return value


def check_certificates(value: str) -> str:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        certs = []
    if not certs:
        raise ValidationError("Must hold one or more PEM certificates.")
    return value


class StrictInteger(fields.Integer):
    """An integer that refuses strings and booleans."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON boolean only: no "yes", no 1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Address(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return check_address(super()._deserialize(value, attr, data, **kwargs))


def _no_control(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")


def check_https_url(value: str) -> str:
    """An absolute https:// URL with a host (token endpoints are reached over HTTPS only)."""
    _no_control(value)
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise ValidationError("Not a valid URL.") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password or " " in value:
        raise ValidationError("Must be an https:// URL with a host name (and no user information).")
    check_host(parts.hostname)
    return value


class PasswordReference(fields.Dict):
    """A password reference; its shape is checked by the provider type its ``source`` names."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        result = super()._deserialize(value, attr, data, **kwargs)
        if not isinstance(result.get("source"), str) or not result["source"]:
            raise ValidationError({"source": ["Missing data for required field."]})
        return result


def _text(max_length: int, **kwargs: Any) -> fields.String:
    return fields.String(
        validate=[validate.Length(min=1, max=max_length), _no_line_breaks_validator], **kwargs
    )


def _no_line_breaks_validator(value: str) -> None:
    _no_line_breaks(value)


def check_auth_plaintext(reference: dict[str, Any]) -> dict[str, Any]:
    """A plaintext OAuth2 secret: ``value`` (a key JSON or PEM may run to kilobytes) or the read-back form."""
    unknown = set(reference) - {"source", "value", "value_set"}
    if unknown:
        raise ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
    value = reference.get("value")
    if "value" in reference:
        if not isinstance(value, str) or not 1 <= len(value) <= 16384:
            raise ValidationError({"value": ["Must be a string of 1 to 16384 characters."]})
        if reference.get("value_set") is not None:
            raise ValidationError({"value": ['Give "value", or "value_set": true to keep the stored one.']})
        return {"source": "plaintext", "value": value}
    if reference.get("value_set") is not True:
        raise ValidationError({"value": ['Give "value", or "value_set": true to keep the stored one.']})
    return {"source": "plaintext", "value_set": True}


def _identifier(**kwargs: Any) -> fields.String:
    return fields.String(validate=[validate.Length(min=1, max=256), _no_control], **kwargs)


class _OAuth2Schema(Schema):
    class Meta:
        unknown = RAISE

    method = fields.String(required=True, validate=validate.Equal("oauth2"))
    scope = fields.String(validate=[validate.Length(min=1, max=1024), _no_control])


class MicrosoftAuthSchema(_OAuth2Schema):
    """Entra ID client credentials: a tenant, a client, and a client secret or certificate."""

    flow = fields.String(required=True, validate=validate.Equal("microsoft"))
    tenant_id = _identifier(required=True)
    client_id = _identifier(required=True)
    client_secret = PasswordReference()
    client_certificate = PasswordReference()
    authority_host = fields.String(validate=[validate.Length(max=2048), check_https_url])

    @validates_schema
    def _one_credential(self, data: dict[str, Any], **kwargs: Any) -> None:
        given = [name for name in ("client_secret", "client_certificate") if name in data]
        if len(given) != 1:
            message = "Give client_secret or client_certificate (one of them)."
            raise ValidationError({name: [message] for name in (given or ["client_secret"])})


class GoogleAuthSchema(_OAuth2Schema):
    """A Google service account with domain-wide delegation (its key JSON, by reference)."""

    flow = fields.String(required=True, validate=validate.Equal("google"))
    service_account_key = PasswordReference(required=True)
    token_url = fields.String(validate=[validate.Length(max=2048), check_https_url])


class ClientCredentialsAuthSchema(_OAuth2Schema):
    """Any RFC 6749 client-credentials token endpoint."""

    flow = fields.String(required=True, validate=validate.Equal("client_credentials"))
    token_url = fields.String(required=True, validate=[validate.Length(max=2048), check_https_url])
    client_id = _identifier(required=True)
    client_secret = PasswordReference(required=True)


class PasswordAuthSchema(Schema):
    class Meta:
        unknown = RAISE

    method = fields.String(required=True, validate=validate.Equal("password"))


AUTH_FLOW_SCHEMAS: dict[str, type[Schema]] = {
    "microsoft": MicrosoftAuthSchema,
    "google": GoogleAuthSchema,
    "client_credentials": ClientCredentialsAuthSchema,
}


class AuthField(fields.Field):
    """The ``auth`` object: ``{"method": "password"}``, or ``oauth2`` with a nested schema per ``flow``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValidationError("Must be an object.")
        method = value.get("method")
        if method == "password":
            return PasswordAuthSchema().load(value)
        if method != "oauth2":
            raise ValidationError({"method": ["Must be one of: password, oauth2."]})
        flow = value.get("flow")
        if not isinstance(flow, str) or flow not in AUTH_FLOW_SCHEMAS:
            raise ValidationError({"flow": [f"Must be one of: {', '.join(AUTH_FLOW_SCHEMAS)}."]})
        return AUTH_FLOW_SCHEMAS[flow]().load(value)


class SettingsSchema(Schema):
    """The system-level document: ``host``, ``port`` and ``from_email`` required."""

    class Meta:
        unknown = RAISE

    host = fields.String(required=True, validate=[validate.Length(min=1, max=255), check_host])
    port = StrictInteger(required=True, validate=validate.Range(min=1, max=65535))
    security = fields.String(validate=validate.OneOf(SECURITY_MODES))
    insecure_skip_verify = StrictBoolean()
    ca_certificate_pem = fields.String(allow_none=True, validate=[validate.Length(max=65536), check_certificates])
    from_email = Address(required=True, validate=validate.Length(max=320))
    from_name = _text(256, allow_none=True)
    reply_to = Address(allow_none=True, validate=validate.Length(max=320))
    envelope_from = Address(allow_none=True, validate=validate.Length(max=320))
    username = _text(256, allow_none=True)
    domain = _text(255, allow_none=True)
    password = PasswordReference(allow_none=True)
    auth = AuthField()
    cc = fields.List(Address(validate=validate.Length(max=320)), validate=validate.Length(max=100))
    bcc = fields.List(Address(validate=validate.Length(max=320)), validate=validate.Length(max=100))
    preferred_notifications = fields.List(
        fields.String(validate=validate.OneOf(NOTIFICATION_TYPES)), validate=validate.Length(max=len(NOTIFICATION_TYPES))
    )
    timeout_seconds = StrictInteger(validate=validate.Range(min=1, max=120))


class TenantSettingsSchema(SettingsSchema):
    """A tenant override: every field optional; ``null`` overrides to null."""

    class Meta:
        unknown = RAISE

    host = fields.String(validate=[validate.Length(min=1, max=255), check_host])
    port = StrictInteger(validate=validate.Range(min=1, max=65535))
    security = fields.String(validate=validate.OneOf(SECURITY_MODES))
    from_email = Address(validate=validate.Length(max=320))
    cc = fields.List(Address(validate=validate.Length(max=320)), allow_none=True, validate=validate.Length(max=100))
    bcc = fields.List(Address(validate=validate.Length(max=320)), allow_none=True, validate=validate.Length(max=100))
    auth = AuthField(allow_none=True)


def load_settings(document: Any, *, tenant: bool) -> dict[str, Any]:
    """Validate a PUT body; raise ``ValidationError`` with per-field messages."""
    if not isinstance(document, dict):
        raise ValidationError({"_schema": ["The settings document must be a JSON object."]})
    schema = TenantSettingsSchema() if tenant else SettingsSchema()
    loaded = schema.load(document)
    if not tenant:
        loaded = {**SYSTEM_DEFAULTS, **loaded}
    for name in ("cc", "bcc", "preferred_notifications"):
        if loaded.get(name) is not None:
            loaded[name] = list(dict.fromkeys(loaded[name]))
    return loaded


def is_oauth2(document: dict[str, Any]) -> bool:
    """Whether these (effective) settings authenticate with an OAuth2 access token."""
    auth = document.get("auth")
    return isinstance(auth, dict) and auth.get("method") == "oauth2"


def credential_errors(effective: dict[str, Any], own: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """``username`` and ``password`` come together or not at all; under OAuth2 a username and no password.

    ``own`` is the document of the level being written: a password it sets
    conflicts with OAuth2, one it inherits from the system level is set aside.
    """
    username, password = effective.get("username"), effective.get("password")
    if is_oauth2(effective):
        errors = {}
        if username is None:
            errors["username"] = ["Required with auth.method oauth2: the mailbox the token acts for."]
        if (own if own is not None else effective).get("password") is not None:
            errors["password"] = ["Must be absent or null with auth.method oauth2."]
        return errors
    if (username is None) == (password is None):
        return {}
    missing = "password" if username is not None else "username"
    return {missing: ["username and password are given together or not at all."]}
