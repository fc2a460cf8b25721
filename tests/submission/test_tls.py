"""The submission server presents the service's certificate and picks up a renewal for new connections, over
STARTTLS and implicit TLS alike, without a restart."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
import trustme
from cryptography import x509

from tests.submission.harness import LOOPBACK, Raw, client_context, write_certificate


def presented(server, ca: trustme.CA) -> x509.Certificate:
    raw = Raw(LOOPBACK, server.port, context=client_context(ca) if server.implicit_tls else None)
    try:
        if not server.implicit_tls:
            raw.reply()
            raw.command("EHLO client.example.test")
            assert raw.command("STARTTLS").startswith("220")
            raw.starttls(client_context(ca))
        return x509.load_der_x509_certificate(raw.sock.getpeercert(binary_form=True))
    finally:
        raw.close()


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "implicit"])
def test_a_renewed_certificate_is_presented_to_new_connections(lab, implicit_tls):
    server = lab.start(implicit_tls=implicit_tls)
    first = presented(server, lab.ca)
    renewal = lab.directory / f"renewal-{int(implicit_tls)}"
    renewal.mkdir()
    cert_file, key_file = write_certificate(lab.ca, renewal, "localhost", LOOPBACK)
    # Replaced in place, as a renewal tool does (the server was started on lab.cert).
    lab.cert[1].write_bytes(key_file.read_bytes())
    lab.cert[0].write_bytes(cert_file.read_bytes())
    try:
        deadline = time.monotonic() + 15
        while presented(server, lab.ca).serial_number == first.serial_number:
            assert time.monotonic() < deadline, "the renewed certificate was never presented"
            time.sleep(0.2)
    finally:
        original = write_certificate(lab.ca, renewal, "localhost", LOOPBACK, *([lab.outside] if lab.outside else []))
        lab.cert[1].write_bytes(original[1].read_bytes())
        lab.cert[0].write_bytes(original[0].read_bytes())


def test_a_client_that_does_not_trust_the_certificate_fails_the_handshake(lab):
    server = lab.start(implicit_tls=True)
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.wrap_socket(sock, server_hostname=LOOPBACK)
