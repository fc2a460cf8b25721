"""CyberArk Central Credential Provider: SMTP passwords read from a CyberArk safe over mutual TLS."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import threading
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from marshmallow import ValidationError, fields, validate, validates_schema

from providers.base import (
    ConnectionSchema,
    CredentialRef,
    ProviderAuthError,
    ProviderError,
    ProviderContext,
    ProviderMisconfigured,
    ProviderUnavailable,
    ReferenceSchema,
    SecretNotFound,
    SecretProvider,
    SecretValue,
)

if TYPE_CHECKING:
    import requests

ACCOUNTS_PATH = "/AIMWebService/api/Accounts"

#: What ``check()`` asks for. The name is not expected to exist: CCP authenticates
#: the application before it looks for the object, so ``APPAP004E`` (not found)
#: already proves that CCP is reachable and accepts the AppID and certificate.
CHECK_SAFE = "smtpconf-check"
CHECK_OBJECT = "smtpconf-reachability-probe"

#: CCP error codes (``ErrorCode`` in the JSON error body) and what they mean here.
_ERROR_CODES: dict[str, tuple[type[ProviderError], str]] = {
    "APPAP004E": (SecretNotFound, "no password object matches the query (or the AppID may not read that safe)"),
    "APPAP227E": (SecretNotFound, "more than one password object matches the query; name the folder"),
    "APPAP228E": (SecretNotFound, "more than one password object matches the query; name the folder"),
    "APPAP229E": (SecretNotFound, "more than one password object matches the query; name the folder"),
    "APPAP230E": (SecretNotFound, "more than one password object matches the query; name the folder"),
    "APPAP306E": (ProviderAuthError, "CCP did not authenticate the application"),
    "APPAP008E": (ProviderAuthError, "the AppID is not defined in the Vault"),
    "APPAP132E": (ProviderAuthError, "CCP could not verify the application's authentication data"),
    "APPAP133E": (ProviderAuthError, "CCP could not verify the application's authentication data"),
    "APPAP007E": (ProviderUnavailable, "CCP could not connect to the Vault"),
    "APPAP282E": (ProviderUnavailable, "the password is being changed; try again shortly"),
    "AIMWS030E": (ProviderMisconfigured, "CCP rejected the query as invalid"),
    "AIMWS031E": (ProviderMisconfigured, "CCP rejected the request as invalid (AppID missing?)"),
    "CASVL010E": (ProviderMisconfigured, "the safe, folder or object name holds characters CCP refuses"),
}

#: OpenSSL reasons for the server refusing *our* certificate: an authentication
#: failure, as much as a wrong AppID is.
_CLIENT_CERTIFICATE_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
}


class CyberArkConnectionSchema(ConnectionSchema):
    """A connection to one CCP web service, as one application (AppID)."""

    url = fields.Url(required=True, schemes={"https"}, require_tld=False)
    app_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    #: PEM text of the client certificate, and of its key unless ``client_key`` is given.
    client_certificate = CredentialRef(load_default=None, allow_none=True)
    client_key = CredentialRef(load_default=None, allow_none=True)
    #: CA certificate(s) to trust for the CCP server instead of the system store.
    ca_certificate_pem = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=65536))
    timeout_seconds = fields.Integer(strict=True, load_default=5, validate=validate.Range(min=1, max=120))

    @validates_schema
    def _key_needs_certificate(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("client_key") and not data.get("client_certificate"):
            raise ValidationError("A client key needs a client certificate.", "client_key")


_NAME = validate.Length(min=1, max=256)


class CyberArkReferenceSchema(ReferenceSchema):
    """``{"source": "cyberark", "provider": "CONN", "safe": "...", "object": "...", "folder": null}``."""

    provider = fields.String(required=True, validate=validate.Length(min=1, max=128))
    safe = fields.String(required=True, validate=_NAME)
    object = fields.String(required=True, validate=_NAME)
    folder = fields.String(load_default=None, allow_none=True, validate=_NAME)


class CyberArkProvider(SecretProvider):
    """Reads passwords through the CyberArk Central Credential Provider REST API.

    Connection document::

        {"type": "cyberark", "url": "https://ccp.example.com", "app_id": "smtpconf",
         "client_certificate": {"file": "/run/secrets/ccp.pem"},
         "client_key": {"file": "/run/secrets/ccp.key"},
         "ca_certificate_pem": null, "timeout_seconds": 5,
         "allowed_secrets": ["SMTP/*"], "cache_ttl_seconds": 300, "max_stale_seconds": 86400}

    Reference: ``{"source": "cyberark", "provider": "ccp", "safe": "SMTP", "object": "relay"}``;
    its ``secret_name`` (matched against ``allowed_secrets``) is ``"SMTP/relay"``.

    Upstream API (GetPassword, REST):
    https://docs.cyberark.com/Product-Doc/OnlineHelp/AAM-CP/Latest/en/Content/CCP/Calling-the-Web-Service-using-REST.htm

    The certificate and key are resolved through the service's credential
    lookup and written to a private temporary directory (0700, files 0600)
    that ``close()`` removes. CCP has no version numbers; ``LastSuccessChange``
    (when the CPM last changed the password) serves as the version, so it
    changes with each managed rotation.

    CCP answers and how they are reported:

    ==================================  ====================  =====================
    CCP answer                          meaning               raised
    ==================================  ====================  =====================
    404 APPAP004E                       no such object, or    ``SecretNotFound``
                                        AppID not a member
                                        of the safe (CCP
                                        does not say which)
    400 APPAP227E/228E/229E/230E        query matches more    ``SecretNotFound``
                                        than one object
    403 APPAP306E (reason APPAP008E,    AppID unknown, or     ``ProviderAuthError``
    APPAP132E, APPAP133E), 401, 403     machine/certificate
                                        not authorised
    TLS alert refusing our certificate  no or untrusted cert  ``ProviderAuthError``
    APPAP007E, APPAP282E, 429, 5xx,     Vault unreachable,    ``ProviderUnavailable``
    connection failure, timeout         change in progress
    server certificate not verified     wrong CA or not CCP   ``ProviderUnavailable``
    400 AIMWS030E/031E, CASVL010E,      the request itself    ``ProviderMisconfigured``
    404 without ErrorCode               or the URL is wrong
    ==================================  ====================  =====================

    A permission problem looks like "not found" to CCP's clients, so
    ``SecretNotAllowed`` comes only from the service's ``allowed_secrets``.
    """

    source: ClassVar[str] = "cyberark"
    connection_schema = CyberArkConnectionSchema
    reference_schema = CyberArkReferenceSchema

    def __init__(self, connection: Mapping[str, Any], context: ProviderContext) -> None:
        super().__init__(connection, context)
        self._lock = threading.Lock()
        self._session: _CcpSession | None = None

    @classmethod
    def secret_name(cls, reference: Mapping[str, Any]) -> str:
        """``"{safe}/{object}"``."""
        return f"{reference.get('safe', '')}/{reference.get('object', '')}"

    def fetch(self, reference: Mapping[str, Any]) -> SecretValue:
        """GetPassword for the reference's safe, folder and object."""
        query = {"Safe": reference["safe"], "Object": reference["object"]}
        if reference.get("folder"):
            query["Folder"] = reference["folder"]
        account = self._get_account(query, self.secret_name(reference))
        content = account.get("Content")
        if not isinstance(content, str):
            raise ProviderError(f"CCP answered for {self.secret_name(reference)!r} without a password.")
        change = account.get("LastSuccessChange")
        return SecretValue(value=content, version=str(change) if change else None)

    def check(self) -> None:
        """Ask for a sentinel object: a password or "not found" both prove access."""
        try:
            self._get_account({"Safe": CHECK_SAFE, "Object": CHECK_OBJECT}, f"{CHECK_SAFE}/{CHECK_OBJECT}")
        except SecretNotFound:
            pass

    def close(self) -> None:
        """Close the HTTP session and delete the certificate files."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def _get_account(self, query: dict[str, str], what: str) -> dict[str, Any]:
        session = self._ccp_session()
        try:
            return _ask_ccp(session, query, what)
        except ProviderAuthError:
            # Start afresh next time, re-reading the certificate, so that a
            # renewed one is picked up without a restart. Calls in flight on
            # other threads keep the old session until they finish.
            with self._lock:
                if self._session is session:
                    self._session = None
            raise

    def _ccp_session(self) -> _CcpSession:
        with self._lock:
            if self._session is None:
                self._session = _CcpSession.build(self.connection, self.context)
            return self._session


def _ask_ccp(session: _CcpSession, query: dict[str, str], what: str) -> dict[str, Any]:
    """The one place CCP is called and its failures become ``ProviderError``."""
    import requests  # loaded by the session already; see _CcpSession

    settings = session.settings
    try:
        response = session.http.get(
            settings["url"].rstrip("/") + ACCOUNTS_PATH,
            params={"AppID": settings["app_id"], **query},
            timeout=settings["timeout_seconds"],
            verify=session.verify,
            cert=session.cert,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as exc:
        reason = _ssl_reason(exc)
        if reason in _CLIENT_CERTIFICATE_REFUSED:
            raise ProviderAuthError(f"CCP refused the service's client certificate ({reason}).") from exc
        if reason == "CERTIFICATE_VERIFY_FAILED":
            raise ProviderUnavailable("CCP's TLS certificate could not be verified; check ca_certificate_pem.") from exc
        raise ProviderUnavailable(f"TLS with CCP failed ({reason or type(exc).__name__}).") from exc
    except requests.exceptions.RequestException as exc:
        raise ProviderUnavailable(f"CCP could not be reached ({type(exc).__name__}).") from exc

    body = _json_object(response)
    if response.status_code == 200 and body is not None and "ErrorCode" not in body:
        return body
    code = str(body.get("ErrorCode", "")) if body else ""
    detail = str(body.get("ErrorMsg", ""))[:300] if body else ""
    error_class, meaning = _classify(response.status_code, code)
    label = f"{code}, HTTP {response.status_code}" if code else f"HTTP {response.status_code}"
    message = f"CCP answered {label} for {what!r}: {meaning}."
    if detail:
        message += f" CCP said: {detail}"
    raise error_class(message)


def _classify(status: int, code: str) -> tuple[type[ProviderError], str]:
    if code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if status in (401, 403):
        return ProviderAuthError, "CCP refused the application"
    if status == 404:
        if code:
            return SecretNotFound, "no password object matches the query"
        return ProviderMisconfigured, "no CCP web service at this URL"
    if status == 429 or status >= 500:
        return ProviderUnavailable, "CCP is not able to answer now"
    if status == 400:
        return ProviderMisconfigured, "CCP rejected the request"
    return ProviderError, "unexpected answer"


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _ssl_reason(exc: BaseException) -> str | None:
    """The OpenSSL reason code buried in requests' and urllib3's wrappers, if any."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) and current.reason:
            return str(current.reason)
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return None


class _CcpSession:
    """A requests session plus the private files that hold the TLS material."""

    def __init__(self, settings: dict[str, Any]) -> None:
        # requests is imported when a CyberArk connection is first used: a worker
        # that never reads CyberArk does not carry it.
        import requests

        self.settings = settings
        self.http = requests.Session()
        self.verify: bool | str = True
        self.cert: str | tuple[str, str] | None = None
        self._directory: str | None = None
        self._cleanup: weakref.finalize | None = None

    @classmethod
    def build(cls, connection: Mapping[str, Any], context: ProviderContext) -> _CcpSession:
        try:
            settings = CyberArkConnectionSchema().load(dict(connection))
        except ValidationError as exc:
            raise ProviderMisconfigured(f"The CyberArk connection is invalid: {sorted(exc.messages)}.") from None
        session = cls(settings)
        try:
            session._write_tls_files(context)
        except BaseException:
            session.close()
            raise
        return session

    def _write_tls_files(self, context: ProviderContext) -> None:
        settings = self.settings
        if settings["ca_certificate_pem"]:
            self.verify = self._write("ca.pem", settings["ca_certificate_pem"])
        if not settings["client_certificate"]:
            return
        certificate = _resolve(context, settings["client_certificate"], "client_certificate")
        key = _resolve(context, settings["client_key"], "client_key") if settings["client_key"] else None
        if key is None and "PRIVATE KEY" not in certificate:
            raise ProviderMisconfigured("client_certificate holds no private key and no client_key is given.")
        cert_path = self._write("client.pem", certificate)
        key_path = self._write("client.key", key) if key is not None else None
        try:
            ssl.create_default_context().load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError) as exc:
            raise ProviderMisconfigured(
                "The client certificate or key is not valid PEM, or they do not match."
            ) from exc
        self.cert = (cert_path, key_path) if key_path else cert_path

    def _write(self, name: str, text: str) -> str:
        if self._directory is None:
            # mkdtemp makes the directory 0700; the finalizer removes it even
            # if nobody calls close().
            self._directory = tempfile.mkdtemp(prefix="smtpconf-ccp-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._directory, True)
        path = os.path.join(self._directory, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        return path

    def close(self) -> None:
        self.http.close()
        if self._cleanup is not None:
            self._cleanup()


def _resolve(context: ProviderContext, ref: Mapping[str, str], field: str) -> str:
    try:
        return context.credential(ref)
    except ProviderError:
        raise
    except Exception as exc:
        kind = next(iter(ref), "?")
        raise ProviderMisconfigured(f"{field} ({kind} reference) could not be read ({type(exc).__name__}).") from exc
