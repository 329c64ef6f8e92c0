"""Self-signed TLS certificates for the control plane (and later the relay), and their pins.

The one rule: clients trust the server by its SPKI pin (`rustynet.domain.tls_pin.SpkiPin`),
never by a CA, so this module makes a short-lived (<= 90 days) ECDSA P-256 certificate whose
subject alternative name is exactly the host of the public URL (a DNS name or an IP address),
writes its private key with mode 0600 (created exclusively: never over an existing file), and
computes the pin the same way the client checks it (SHA-256 over the DER SubjectPublicKeyInfo).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rustynet.adapters.support.private_file import write_private

from rustynet.domain.errors import LocalProtocolError, RustynetError
from rustynet.domain.tls_pin import SpkiPin

MAX_VALIDITY: Final = timedelta(days=90)
_BACKDATE: Final = timedelta(minutes=5)  # tolerate small clock skew on clients


class TlsCertificateError(RustynetError):
    """A certificate or key file could not be made, read or parsed; message for the operator."""


@attrs.frozen
class CertificateInfo:
    """What was made: paths, the SAN host, validity and the SPKI pin."""

    certificate: Path
    private_key: Path
    host: str
    not_before: datetime
    not_after: datetime
    pin: SpkiPin


def host_of_url(url: str) -> str:
    """The host of an `https://HOST:PORT` URL (IPv6 without brackets); raises on anything else."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise LocalProtocolError(f"expected an https://HOST[:PORT] URL, got {url!r}")
    return parts.hostname


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def spki_pin_of_public_key(key: ec.EllipticCurvePublicKey) -> SpkiPin:
    """SHA-256 of the key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SpkiPin(hashlib.sha256(der).digest())


def spki_pin_of_der(certificate_der: bytes) -> SpkiPin:
    """The SPKI pin of a DER certificate (what a client sees on the wire)."""
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsCertificateError("cannot parse the certificate") from exc
    return SpkiPin(hashlib.sha256(der).digest())


def spki_pin_of_pem_file(path: Path) -> SpkiPin:
    """The SPKI pin of a PEM certificate file."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsCertificateError(f"{path}: cannot read the certificate: {exc}") from exc
    return spki_pin_of_der(cert.public_bytes(serialization.Encoding.DER))


def _write_exclusive(path: Path, data: bytes | bytearray, mode: int) -> None:
    # replace=False: never replace a key or certificate that already exists (init refuses twice).
    try:
        write_private(path, data, mode=mode, replace=False)
    except FileExistsError as exc:
        raise TlsCertificateError(f"{path} already exists; refusing to overwrite it") from exc
    except OSError as exc:
        raise TlsCertificateError(f"{path}: cannot write: {exc}") from exc


def create_self_signed(
    url: str,
    certificate: Path,
    private_key: Path,
    *,
    now: datetime,
    validity: timedelta = MAX_VALIDITY,
) -> CertificateInfo:
    """Make a P-256 key and a self-signed certificate for the host of `url`; write both.

    The key file is 0600 and the certificate 0644; both are created exclusively.
    """
    if validity <= timedelta(0) or validity > MAX_VALIDITY:
        raise LocalProtocolError(f"certificate validity must be within (0, {MAX_VALIDITY.days} d]")
    if now.tzinfo is None:
        raise LocalProtocolError("now must be timezone-aware")
    host = host_of_url(url)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    not_before = (now - _BACKDATE).replace(microsecond=0)
    not_after = (now + validity).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = bytearray(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    try:
        _write_exclusive(Path(private_key), key_pem, 0o600)
    finally:
        key_pem[:] = bytes(len(key_pem))
    try:
        _write_exclusive(Path(certificate), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except TlsCertificateError:
        with contextlib.suppress(OSError):
            Path(private_key).unlink()
        raise
    return CertificateInfo(
        certificate=Path(certificate),
        private_key=Path(private_key),
        host=host,
        not_before=not_before,
        not_after=not_after,
        pin=spki_pin_of_public_key(key.public_key()),
    )
