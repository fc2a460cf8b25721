"""The secret-provider interface: what every password source implements."""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import fnmatch
from typing import Any, Callable, ClassVar, Mapping, Protocol

from marshmallow import Schema, fields, validate


class ProviderError(Exception):
    """Root of every failure a provider reports; carries a contract ``code``.

    Messages never contain a secret value: providers build them from the
    reference and the manager's status only.
    """

    code: ClassVar[str] = "provider_error"
    status: ClassVar[int] = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SecretNotFound(ProviderError):
    """The manager answered, and the secret (or the pinned version) is not there."""

    code = "secret_not_found"
    status = 404


class ProviderUnavailable(ProviderError):
    """The manager could not be reached or did not answer in time."""

    code = "provider_unavailable"
    status = 503


class ProviderAuthError(ProviderError):
    """The manager refused the service's own credentials."""

    code = "provider_auth_failed"
    status = 502


class SecretNotAllowed(ProviderError):
    """The reference names a secret outside the connection's ``allowed_secrets``,
    or the manager denied access to it."""

    code = "secret_not_allowed"
    status = 422


class ListingNotSupported(ProviderError):
    """The manager cannot list secret names (CyberArk's CCP only answers for one object)."""

    code = "listing_not_supported"
    status = 409


class ProviderMisconfigured(ProviderError):
    """The connection document cannot work (missing credential, bad URL, ...)."""

    code = "provider_misconfigured"
    status = 422


@dataclasses.dataclass(frozen=True)
class SecretValue:
    """A fetched secret. ``repr`` never shows the value."""

    value: str = dataclasses.field(repr=False)
    version: str | None = None
    expires_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class SecretListing:
    """Secret names a manager listed (never values); ``truncated`` when a bound cut the list short."""

    names: list[str]
    truncated: bool = False


class CredentialResolver(Protocol):
    """Turns a credential reference ``{"env"|"file"|"internal": ...}`` into its value."""

    def __call__(self, ref: Mapping[str, str]) -> str: ...


class InternalStore(Protocol):
    """The service's own encrypted secret store, as the ``internal`` provider sees it."""

    def read(self, name: str, version: int | None = None) -> SecretValue: ...

    def names(self) -> list[str]: ...


@dataclasses.dataclass
class ProviderContext:
    """What the service lends a provider: credential lookup and the internal store."""

    credential: CredentialResolver
    internal_store: InternalStore | None = None
    decrypt: Callable[[str], str] | None = None


class CredentialRef(fields.Dict):
    """A credential reference: exactly one of ``env``, ``file`` or ``internal``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), values=fields.String(), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        result = super()._deserialize(value, attr, data, **kwargs)
        if len(result) != 1 or next(iter(result)) not in ("env", "file", "internal"):
            raise validate.ValidationError(
                'Must be {"env": NAME}, {"file": PATH} or {"internal": SECRET}; '
                "credentials are never stored inline."
            )
        if not next(iter(result.values())):
            raise validate.ValidationError("Must not be empty.")
        return result


class Discriminated(fields.Field):
    """A nested document whose schema is chosen by one of its fields (``method``, ``kind``)."""

    def __init__(self, discriminator: str, schemas: Mapping[str, type[Schema]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.schemas = dict(schemas)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, Mapping):
            raise validate.ValidationError(f"Must be an object with a {self.discriminator!r}.")
        schema = self.schemas.get(str(value.get(self.discriminator)))
        if schema is None:
            raise validate.ValidationError({self.discriminator: [f"Must be one of: {', '.join(self.schemas)}."]})
        return schema().load(value)


class ConnectionSchema(Schema):
    """Fields every connection document has, whatever its type."""

    type = fields.String(required=True)
    allowed_secrets = fields.List(fields.String(validate=validate.Length(min=1, max=512)), load_default=list)
    # strict: a non-strict Integer reads "300" and truncates 1.5 to 1 without a word.
    cache_ttl_seconds = fields.Integer(strict=True, load_default=300, validate=validate.Range(min=0, max=86400))
    max_stale_seconds = fields.Integer(strict=True, load_default=86400, validate=validate.Range(min=0, max=30 * 86400))


class ReferenceSchema(Schema):
    """Fields every password reference has: ``source`` and, for managers, ``provider``."""

    source = fields.String(required=True)
    provider = fields.String(validate=validate.Length(min=1, max=128))


class SecretProvider(abc.ABC):
    """One kind of password source, loaded from the ``smtpconf.secret_providers`` group.

    Subclasses set ``source``, ``connection_schema`` (a ``ConnectionSchema``
    subclass, or ``None`` for sources that need no connection) and
    ``reference_schema`` (a ``ReferenceSchema`` subclass; it validates the whole
    reference, ``source`` and ``provider`` included). The constructor only stores its arguments: clients
    are built lazily on first use, so a broken manager never breaks start-up.
    """

    source: ClassVar[str]
    connection_schema: ClassVar[type[Schema] | None] = None
    reference_schema: ClassVar[type[Schema]]
    #: Whether references name a connection with ``"provider": NAME``.
    needs_connection: ClassVar[bool] = True

    def __init__(self, connection: Mapping[str, Any], context: ProviderContext) -> None:
        self.connection = dict(connection)
        self.context = context

    @abc.abstractmethod
    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        """Read the secret a (validated) reference names; raise a ``ProviderError``."""

    def check(self) -> None:
        """Reach and authenticate to the manager; raise a ``ProviderError`` if it fails."""

    def list_secrets(self, prefix: str, *, accept: Callable[[str], bool], limit: int) -> SecretListing:
        """Names (as ``secret_name`` gives them) starting with ``prefix`` that ``accept`` lets through.

        At most ``limit`` names, in the manager's order; a provider also bounds
        the work it does (requests made, entries scanned, time spent) and sets
        ``truncated`` when it stopped early. Values are never read. Managers that
        cannot list raise ``ListingNotSupported`` (the default).
        """
        raise ListingNotSupported(f"the {self.source} source cannot list secret names; enter the name")

    @classmethod
    def secret_name(cls, reference: Mapping[str, Any]) -> str:
        """The name matched against ``allowed_secrets`` and used as the cache key."""
        return str(reference.get("secret") or reference.get("path") or "")

    #: Whether the manager can push rotation events to the service (``POST .../events``).
    publishes_events: ClassVar[bool] = False

    @classmethod
    def rotated_secret(cls, connection: Mapping[str, Any], event_type: str, data: Mapping[str, Any]) -> str | None:
        """The secret (as ``secret_name`` names it) that a pushed event says has a new
        version in this connection's manager; ``None`` when the event is not about it."""
        return None

    def close(self) -> None:
        """Release clients and connections."""


def expires_soon(
    secret: SecretValue, now: dt.datetime | None = None, within: dt.timedelta = dt.timedelta(days=14)
) -> bool:
    """Whether ``secret`` expires (or has expired) within ``within`` of ``now``."""
    if secret.expires_at is None:
        return False
    expires_at = secret.expires_at
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=dt.timezone.utc)
    return expires_at - (now or dt.datetime.now(dt.timezone.utc)) <= within


def secret_allowed(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the glob ``patterns`` (empty list: nothing)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
