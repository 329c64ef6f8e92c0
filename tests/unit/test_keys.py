"""Key wrappers: RFC vectors, purpose separation, typed encodings, secret hygiene."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from rustynet.domain.errors import DecodeError, InvalidSignature, LocalProtocolError
from rustynet.domain.keys import (
    KeyFingerprint,
    Purpose,
    SigningKey,
    TunnelKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    VerifyKey,
    b64decode,
    b64encode,
)

# RFC 8032 section 7.1, TEST 1-3: (secret key, public key, message, signature).
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]
RFC8032_IDS = ["test1", "test2", "test3"]

# RFC 7748 section 6.1: Alice's and Bob's private and public keys, and the shared secret.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED_SECRET = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

SEED = bytes(range(32))


def _raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize(
    ("secret", "public", "message", "signature"), RFC8032_VECTORS, ids=RFC8032_IDS
)
def test_rfc8032_secret_derives_the_published_public_key(
    secret: str, public: str, message: str, signature: str
) -> None:
    """Each RFC 8032 test secret yields the published public key through SigningKey."""
    key = SigningKey.from_seed(bytes.fromhex(secret))
    assert key.public_key.raw == bytes.fromhex(public)
    assert key.public_key == VerifyKey(bytes.fromhex(public))


@pytest.mark.parametrize(
    ("secret", "public", "message", "signature"), RFC8032_VECTORS, ids=RFC8032_IDS
)
def test_rfc8032_raw_signature_matches_the_library(
    secret: str, public: str, message: str, signature: str
) -> None:
    """Sanity: the library reproduces the RFC signature, so the comparisons below mean something."""
    library_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert library_key.sign(bytes.fromhex(message)) == bytes.fromhex(signature)
    assert _raw_public(library_key) == bytes.fromhex(public)


@pytest.mark.parametrize(
    ("secret", "public", "message", "signature"), RFC8032_VECTORS, ids=RFC8032_IDS
)
@pytest.mark.parametrize("purpose", list(Purpose))
def test_purpose_framed_signature_is_ed25519_over_context_and_message(
    secret: str, public: str, message: str, signature: str, purpose: Purpose
) -> None:
    """Our signature equals plain Ed25519 over `rustynet:<purpose>:v1\\0 + message`."""
    ours = SigningKey.from_seed(bytes.fromhex(secret)).sign(purpose, bytes.fromhex(message))
    library_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    expected_context = f"rustynet:{purpose.value}:v1".encode() + b"\x00"
    assert purpose.context == expected_context
    assert ours == library_key.sign(expected_context + bytes.fromhex(message))
    library_key.public_key().verify(ours, expected_context + bytes.fromhex(message))


@pytest.mark.parametrize(
    ("secret", "public", "message", "signature"), RFC8032_VECTORS, ids=RFC8032_IDS
)
@pytest.mark.parametrize("purpose", list(Purpose))
def test_raw_rfc8032_signature_does_not_verify_for_any_purpose(
    secret: str, public: str, message: str, signature: str, purpose: Purpose
) -> None:
    """A valid Ed25519 signature made outside our framing never verifies through VerifyKey."""
    verify_key = VerifyKey(bytes.fromhex(public))
    with pytest.raises(InvalidSignature):
        verify_key.verify(purpose, bytes.fromhex(message), bytes.fromhex(signature))


def test_signature_for_one_purpose_fails_for_every_other() -> None:
    """A signature for purpose A is rejected for every purpose B != A."""
    key = SigningKey.from_seed(SEED)
    message = b"the same bytes"
    for signed_for in Purpose:
        signature = key.sign(signed_for, message)
        key.public_key.verify(signed_for, message, signature)
        for other in Purpose:
            if other is signed_for:
                continue
            with pytest.raises(InvalidSignature):
                key.public_key.verify(other, message, signature)


def test_verify_rejects_changed_message_and_malformed_signature() -> None:
    """A changed message, a truncated signature or a non-bytes signature all raise."""
    key = SigningKey.from_seed(SEED)
    signature = key.sign(Purpose.PEER_MAP, b"map")
    with pytest.raises(InvalidSignature):
        key.public_key.verify(Purpose.PEER_MAP, b"maP", signature)
    with pytest.raises(InvalidSignature):
        key.public_key.verify(Purpose.PEER_MAP, b"map", signature[:-1])
    with pytest.raises(InvalidSignature):
        # Wrong type on purpose, hence the ignore below.
        key.public_key.verify(Purpose.PEER_MAP, b"map", bytearray(signature))  # type: ignore[arg-type]


def test_signing_needs_a_purpose() -> None:
    """Signing without a Purpose member is a local error, not an unframed signature."""
    key = SigningKey.from_seed(SEED)
    with pytest.raises(LocalProtocolError):
        key.sign("peer-map", b"x")  # type: ignore[arg-type]  # wrong type on purpose


def test_rfc7748_x25519_private_keys_give_the_published_public_keys() -> None:
    """Alice's and Bob's RFC 7748 private keys derive their published public keys."""
    alice = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(ALICE_PRIVATE))
    bob = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(BOB_PRIVATE))
    assert alice.public_key == TunnelKey(TunnelKeyScheme.X25519, bytes.fromhex(ALICE_PUBLIC))
    assert bob.public_key == TunnelKey(TunnelKeyScheme.X25519, bytes.fromhex(BOB_PUBLIC))


def test_rfc7748_exported_secrets_agree_on_the_shared_secret() -> None:
    """The exported private bytes work in the tunnel library: both sides reach the RFC secret."""
    alice = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(ALICE_PRIVATE))
    bob = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(BOB_PRIVATE))
    alice_lib = x25519.X25519PrivateKey.from_private_bytes(bytes(alice.export_secret()))
    bob_lib = x25519.X25519PrivateKey.from_private_bytes(bytes(bob.export_secret()))
    shared_a = alice_lib.exchange(x25519.X25519PublicKey.from_public_bytes(bob.public_key.raw))
    shared_b = bob_lib.exchange(x25519.X25519PublicKey.from_public_bytes(alice.public_key.raw))
    assert shared_a == shared_b == bytes.fromhex(SHARED_SECRET)


def test_typed_encodings_round_trip() -> None:
    """Every typed text form parses back to an equal value."""
    key = SigningKey.from_seed(SEED)
    tunnel = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(ALICE_PRIVATE))
    assert VerifyKey.from_text(key.public_key.to_text()) == key.public_key
    assert key.public_key.to_text().startswith("rnpk_")
    fingerprint = key.public_key.fingerprint()
    assert KeyFingerprint.from_text(fingerprint.to_text()) == fingerprint
    assert TunnelKey.from_text(tunnel.public_key.to_text()) == tunnel.public_key
    assert tunnel.public_key.to_text().startswith("rntk_x25519_")
    again = SigningKey.from_secret_text(key.secret_text())
    assert again.public_key == key.public_key
    tunnel_again = TunnelPrivateKey.from_secret_text(tunnel.secret_text())
    assert tunnel_again.public_key == tunnel.public_key


def test_parsing_one_key_type_as_another_raises() -> None:
    """A key's text never parses as a different key type (same 32 bytes, different prefix)."""
    key = SigningKey.from_seed(SEED)
    tunnel = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, SEED)
    texts = {
        "verify": key.public_key.to_text(),
        "signing": key.secret_text(),
        "fingerprint": key.public_key.fingerprint().to_text(),
        "tunnel": tunnel.public_key.to_text(),
        "tunnel-secret": tunnel.secret_text(),
    }
    parsers = {
        "verify": VerifyKey.from_text,
        "signing": SigningKey.from_secret_text,
        "fingerprint": KeyFingerprint.from_text,
        "tunnel": TunnelKey.from_text,
        "tunnel-secret": TunnelPrivateKey.from_secret_text,
    }
    for kind, text in texts.items():
        for parser_kind, parser in parsers.items():
            if parser_kind == kind:
                continue
            with pytest.raises(DecodeError):
                parser(text)


def test_key_and_fingerprint_have_different_fingerprints_by_type() -> None:
    """The same 32 bytes as a verify key and as a tunnel key get different fingerprints."""
    raw = SigningKey.from_seed(SEED).public_key.raw
    assert VerifyKey(raw).fingerprint() != TunnelKey(TunnelKeyScheme.X25519, raw).fingerprint()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rnpk_",
        "rnpk_" + b64encode(bytes(31)),
        "rnpk_" + b64encode(bytes(33)),
        "rnpk_" + b64encode(bytes(32)) + "=",
        "RNPK_" + b64encode(bytes(32)),
        "rnpk_" + b64encode(bytes(32)).replace("A", "+", 1),
        "rnpk_" + b64encode(bytes(32))[:-1] + "B",  # non-zero padding bits: not canonical
        "rntk_wireguard_" + b64encode(bytes(32)),
        "rntk_x25519" + b64encode(bytes(32)),
        "rnpk_" + "é" * 43,
    ],
)
def test_malformed_key_texts_raise_decode_error(text: str) -> None:
    """Wrong prefix, length, padding, alphabet, scheme or non-canonical base64 all raise."""
    parser = TunnelKey.from_text if text.startswith("rntk") else VerifyKey.from_text
    with pytest.raises(DecodeError):
        parser(text)


def test_base64_is_strict_and_canonical() -> None:
    """b64decode refuses padding, whitespace and non-canonical trailing bits."""
    assert b64decode(b64encode(b"\x00\xff")) == b"\x00\xff"
    for bad in ["AP8=", "AP 8", "AP9", "AP8\n", ""]:
        with pytest.raises(DecodeError):
            b64decode(bad)


def test_private_key_repr_shows_no_key_material() -> None:
    """repr/str of private keys shows the public key only: no seed in hex or base64."""
    key = SigningKey.from_seed(SEED)
    tunnel = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes.fromhex(ALICE_PRIVATE))
    for secret_holder, secret in ((key, SEED), (tunnel, bytes.fromhex(ALICE_PRIVATE))):
        for shown in (repr(secret_holder), str(secret_holder)):
            assert secret.hex() not in shown.lower()
            assert b64encode(secret) not in shown
            assert b64encode(secret)[:16] not in shown
            assert repr(secret) not in shown
            assert repr(bytearray(secret)) not in shown
    assert key.public_key.to_text() in repr(key)
    assert repr(key.public_key) == f"VerifyKey({key.public_key.to_text()!r})"


def test_wipe_zeroes_the_seed_and_disables_signing() -> None:
    """After wipe() the owned buffer is all zeros and sign/export raise."""
    buffer = bytearray(SEED)
    key = SigningKey(seed=buffer)
    assert key.sign(Purpose.PEER_MAP, b"x")
    key.wipe()
    assert buffer == bytearray(32)
    assert key.wiped
    with pytest.raises(LocalProtocolError):
        key.sign(Purpose.PEER_MAP, b"x")
    with pytest.raises(LocalProtocolError):
        key.export_seed()
    with pytest.raises(LocalProtocolError):
        key.secret_text()


def test_tunnel_private_key_wipe_zeroes_the_secret() -> None:
    """TunnelPrivateKey.wipe() zeroes the buffer it owns."""
    buffer = bytearray(bytes.fromhex(ALICE_PRIVATE))
    tunnel = TunnelPrivateKey(TunnelKeyScheme.X25519, secret=buffer)
    tunnel.wipe()
    assert buffer == bytearray(32)


def test_signing_key_rejects_immutable_or_short_seed() -> None:
    """The seed must be an owned 32-byte bytearray (bytes could not be wiped)."""
    with pytest.raises(DecodeError):
        SigningKey(seed=SEED)  # type: ignore[arg-type]  # wrong type on purpose
    with pytest.raises(DecodeError):
        SigningKey(seed=bytearray(31))


def test_generate_uses_the_entropy_port() -> None:
    """generate() takes its bytes from the Entropy port (deterministic here)."""

    class FixedEntropy:
        def token_bytes(self, n: int) -> bytes:
            return SEED[:n]

    assert SigningKey.generate(FixedEntropy()).public_key == SigningKey.from_seed(SEED).public_key
    tunnel = TunnelPrivateKey.generate(FixedEntropy(), TunnelKeyScheme.X25519)
    assert (
        tunnel.public_key == TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, SEED).public_key
    )
