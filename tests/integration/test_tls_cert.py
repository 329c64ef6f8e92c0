"""Self-signed control-plane certificates: P-256, SAN from the URL, <= 90 days, private key 0600."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from rustynet.adapters.tls_cert import (
    TlsCertificateError,
    create_self_signed,
    host_of_url,
    spki_pin_of_der,
    spki_pin_of_pem_file,
)

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.tls_pin import PinMismatch, SpkiPin

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificate_is_p256_with_ip_san_and_short_validity(tmp_path: Path) -> None:
    """An IP host becomes an IP SAN; the key is P-256; validity is at most 90 days."""
    info = create_self_signed("https://192.0.2.7:8443", tmp_path / "c", tmp_path / "k", now=NOW)
    cert = _load(info.certificate)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    assert san.get_values_for_type(x509.DNSName) == []
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=90, minutes=5)


def test_dns_host_becomes_dns_san(tmp_path: Path) -> None:
    """A DNS host becomes a DNS SAN (and an IPv6 literal an IP SAN)."""
    info = create_self_signed("https://ctl.example.org", tmp_path / "c", tmp_path / "k", now=NOW)
    san = _load(info.certificate).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["ctl.example.org"]
    assert host_of_url("https://[2001:db8::1]:443") == "2001:db8::1"


def test_private_key_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    """The key file is created 0600; a second run refuses to replace existing files."""
    info = create_self_signed("https://h:1", tmp_path / "c", tmp_path / "k", now=NOW)
    assert stat.S_IMODE(info.private_key.stat().st_mode) == 0o600
    before = info.private_key.read_bytes()
    with pytest.raises(TlsCertificateError, match="refusing to overwrite"):
        create_self_signed("https://h:1", tmp_path / "c", tmp_path / "k", now=NOW)
    assert info.private_key.read_bytes() == before


def test_validity_over_90_days_is_refused(tmp_path: Path) -> None:
    """A longer validity is a programming error, and nothing is written."""
    with pytest.raises(LocalProtocolError):
        create_self_signed(
            "https://h:1", tmp_path / "c", tmp_path / "k", now=NOW, validity=timedelta(days=91)
        )
    assert not (tmp_path / "k").exists()


def test_pin_matches_the_certificate_on_disk_and_on_the_wire(tmp_path: Path) -> None:
    """The pin returned at creation is the SPKI hash of the PEM file and of its DER form."""
    info = create_self_signed("https://h:1", tmp_path / "c", tmp_path / "k", now=NOW)
    der = _load(info.certificate).public_bytes(Encoding.DER)
    assert spki_pin_of_pem_file(info.certificate) == info.pin
    assert spki_pin_of_der(der) == info.pin
    assert SpkiPin.from_text(info.pin.to_text()) == info.pin


def test_pin_of_another_key_does_not_match(tmp_path: Path) -> None:
    """Two certificates for one host have different pins; check raises PinMismatch."""
    a = create_self_signed("https://h:1", tmp_path / "a", tmp_path / "ak", now=NOW)
    b = create_self_signed("https://h:1", tmp_path / "b", tmp_path / "bk", now=NOW)
    a.pin.check(a.pin)
    with pytest.raises(PinMismatch):
        a.pin.check(b.pin)


@pytest.mark.parametrize(
    "text", ["", "sha256/AAAA", "sha1//" + "A" * 44, "sha256//" + "A" * 43, "sha256//" + "!" * 44]
)
def test_malformed_pin_text_is_refused(text: str) -> None:
    """Only `sha256//<canonical base64 of 32 bytes>` parses."""
    with pytest.raises(DecodeError):
        SpkiPin.from_text(text)
