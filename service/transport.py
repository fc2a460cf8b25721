"""Where a request came from and over what: trusted proxies, and secrets that only travel encrypted."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import ssl
import threading
import time
from typing import Any, Callable, Iterable

log = logging.getLogger("smtpconf.transport")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: How often a served certificate's files are looked at for a renewal.
CERTIFICATE_CHECK_SECONDS = 1.0


def parse_networks(text: str | None) -> tuple[Network, ...]:
    """``SMTPCONF_TRUSTED_PROXIES``: addresses or CIDRs, separated by commas or spaces."""
    networks = []
    for item in (text or "").replace(",", " ").split():
        networks.append(ipaddress.ip_network(item, strict=False))
    return tuple(networks)


@functools.lru_cache(maxsize=4096)
def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]  # [v6]:port
    elif text.count(":") == 1:
        text = text.split(":")[0]  # v4:port
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


class ClientOrigin:
    """WSGI middleware: the client's address and scheme, taken from ``X-Forwarded-*`` only behind a trusted proxy.

    From a trusted proxy, the client is the right-most ``X-Forwarded-For`` entry
    that is not itself a trusted proxy, and the scheme is the nearest proxy's
    ``X-Forwarded-Proto``. From anyone else both headers are removed, so nothing
    downstream can be told a story by the client.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], trusted: tuple[Network, ...]) -> None:
        self.app = app
        self.trusted = trusted

    def _is_trusted(self, address: Any) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["smtpconf.peer"] = environ.get("REMOTE_ADDR")
        forwarded_for = environ.pop("HTTP_X_FORWARDED_FOR", None)
        forwarded_proto = environ.pop("HTTP_X_FORWARDED_PROTO", None)
        if self.trusted and self._is_trusted(_address(environ.get("REMOTE_ADDR"))):
            if forwarded_for:
                hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
                client = next((hop for hop in reversed(hops) if not self._is_trusted(_address(hop))), hops[0] if hops else None)
                if _address(client) is not None:
                    environ["REMOTE_ADDR"] = str(_address(client))
            if forwarded_proto:
                scheme = forwarded_proto.split(",")[-1].strip().lower()
                if scheme in ("http", "https"):
                    environ["wsgi.url_scheme"] = scheme
        return self.app(environ, start_response)


def secrets_may_travel(environ: dict[str, Any], *, allow_plaintext: bool) -> bool:
    """Whether a response carrying a secret may go back over this request's transport.

    Yes over HTTPS (the service's own, or a trusted proxy's), from a loopback
    client through loopback only (the traffic never leaves the host), or when
    the operator says a proxy or mesh in front encrypts it.
    """
    if allow_plaintext or environ.get("wsgi.url_scheme") == "https":
        return True
    hops = (_address(environ.get("REMOTE_ADDR")), _address(environ.get("smtpconf.peer", environ.get("REMOTE_ADDR"))))
    return all(hop is not None and hop.is_loopback for hop in hops)


class CertificateReloader:
    """The TLS context the server presents, replaced when its certificate or key files change.

    Renewals (cert-manager and friends) replace the files every few weeks: each
    new connection gets the newest pair that loads. A pair caught half-written
    (the certificate replaced, the key not yet) fails to load: the previous
    context keeps serving and the files are tried again on the next check.
    """

    def __init__(self, certfile: str, keyfile: str, factory: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.factory = factory or _server_context
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._files_stamp()
        self._context = self._load()

    def _files_stamp(self) -> tuple[Any, ...]:
        stamps = []
        for path in (self.certfile, self.keyfile):
            try:
                status = os.stat(path)
                stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def _load(self) -> ssl.SSLContext:
        context = self.factory()
        context.load_cert_chain(certfile=self.certfile, keyfile=self.keyfile)
        return context

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (the files are looked at no more than once a second)."""
        now = time.monotonic()
        if now - self._checked < CERTIFICATE_CHECK_SECONDS:
            return self._context
        with self._lock:
            if now - self._checked < CERTIFICATE_CHECK_SECONDS:
                return self._context
            self._checked = now
            stamp = self._files_stamp()
            if stamp != self._stamp:
                try:
                    self._context = self._load()
                    self._stamp = stamp
                    log.info("TLS certificate reloaded", extra={"certfile": self.certfile})
                except (OSError, ssl.SSLError, ValueError) as exc:
                    # Keep serving the previous pair; the stamp is not taken, so the next check tries again.
                    log.warning("TLS certificate not reloaded", extra={"error": type(exc).__name__})
            return self._context


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
