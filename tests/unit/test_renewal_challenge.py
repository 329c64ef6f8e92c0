"""Stateless token-renewal challenges: what the control plane made for one node, live, unaltered.

The expected bytes are recomputed here with the standard library (RFC 5869 HKDF and RFC 2104
HMAC by hand), independently of the `cryptography` calls under test.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.errors import InvalidSignature, LocalProtocolError
from rustynet.domain.keys import MacKey, SigningKey
from rustynet.domain.renewal_challenge import (
    MAC_LABEL,
    MAX_CLOCK_SKEW,
    RENEWAL_CHALLENGE_BYTES,
    RENEWAL_CHALLENGE_TTL,
    InvalidChallenge,
    issue_renewal_challenge,
    verify_renewal_challenge,
)
from rustynet.domain.replay import NONCE_RETENTION
from tests.doubles import CountingEntropy

NOW = datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
TOKEN_KEY = SigningKey.from_seed(bytes(range(32)))
KEY = MacKey.derive(TOKEN_KEY, MAC_LABEL)
NODE_A = "node_AAAAAAAAAAAAAAAA"
NODE_B = "node_BBBBBBBBBBBBBBBB"


def _independent_key(seed: bytes, label: str) -> bytes:
    """RFC 5869 HKDF-SHA-256 (empty salt → 32 zero bytes), one output block."""
    prk = hmac.new(bytes(32), seed, hashlib.sha256).digest()
    info = f"rustynet:{label}:mac:v1".encode()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_layout_matches_an_independent_hkdf_and_hmac() -> None:
    """expires_at (4) ∥ nonce (12) ∥ HMAC-SHA-256(key, expires_at ∥ nonce ∥ node id)[:16]."""
    challenge = issue_renewal_challenge(KEY, NODE_A, NOW, CountingEntropy())
    data = challenge.id
    assert len(data) == RENEWAL_CHALLENGE_BYTES == 32
    expires = int(NOW.timestamp()) + 60
    assert int.from_bytes(data[:4], "big") == expires
    assert challenge.expires_at == datetime.fromtimestamp(expires, UTC)
    assert NOW < challenge.expires_at <= NOW + RENEWAL_CHALLENGE_TTL
    key = _independent_key(bytes(range(32)), MAC_LABEL)
    assert data[16:] == hmac.new(key, data[:16] + NODE_A.encode(), hashlib.sha256).digest()[:16]


def test_a_challenge_verifies_for_its_node_until_it_expires() -> None:
    """Round trip; live until one second before `expires_at`, refused at and after it."""
    challenge = issue_renewal_challenge(KEY, NODE_A, NOW, OsEntropy())
    verified = verify_renewal_challenge(KEY, challenge.id, NODE_A, NOW)
    assert verified == challenge
    assert verified.remember_until == challenge.expires_at + NONCE_RETENTION
    last = challenge.expires_at - timedelta(microseconds=1)
    assert verify_renewal_challenge(KEY, challenge.id, NODE_A, last) == challenge
    for at in (challenge.expires_at, challenge.expires_at + timedelta(days=1)):
        with pytest.raises(InvalidChallenge) as caught:
            verify_renewal_challenge(KEY, challenge.id, NODE_A, at)
        assert caught.value.reason == "expired"


def test_a_challenge_is_bound_to_the_node_it_was_issued_for() -> None:
    """Issued for A: refused for B (and for any other text), whatever else is right."""
    challenge = issue_renewal_challenge(KEY, NODE_A, NOW, OsEntropy())
    for other in (NODE_B, NODE_A + "x", NODE_A[:-1], NODE_A.upper()):
        with pytest.raises(InvalidChallenge) as caught:
            verify_renewal_challenge(KEY, challenge.id, other, NOW)
        assert "for this node" in caught.value.reason


def test_every_flipped_bit_is_refused() -> None:
    """Tampering with the expiry, the nonce or the tag: each of the 256 bit flips fails."""
    challenge = issue_renewal_challenge(KEY, NODE_A, NOW, OsEntropy())
    for bit in range(RENEWAL_CHALLENGE_BYTES * 8):
        data = bytearray(challenge.id)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidChallenge):
            verify_renewal_challenge(KEY, bytes(data), NODE_A, NOW)


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64])
def test_wrong_sizes_are_refused(size: int) -> None:
    """Only 32 bytes is a challenge (a truncated or padded real one too)."""
    real = issue_renewal_challenge(KEY, NODE_A, NOW, OsEntropy()).id
    with pytest.raises(InvalidChallenge):
        verify_renewal_challenge(KEY, (real * 3)[:size], NODE_A, NOW)


def test_another_control_planes_challenge_is_refused() -> None:
    """A different token key, or the same key under another label, makes a different MAC key."""
    other = MacKey.derive(SigningKey.from_seed(bytes(range(1, 33))), MAC_LABEL)
    relabelled = MacKey.derive(TOKEN_KEY, "something-else")
    for key in (other, relabelled):
        challenge = issue_renewal_challenge(key, NODE_A, NOW, OsEntropy())
        with pytest.raises(InvalidChallenge):
            verify_renewal_challenge(KEY, challenge.id, NODE_A, NOW)


def test_an_expiry_beyond_any_issued_one_is_refused() -> None:
    """Even with a good tag (an instance whose clock ran far ahead), a challenge expiring more
    than TTL + skew ahead is refused; within the skew it is accepted."""
    ahead = issue_renewal_challenge(KEY, NODE_A, NOW + MAX_CLOCK_SKEW, OsEntropy())
    assert verify_renewal_challenge(KEY, ahead.id, NODE_A, NOW).expires_at == ahead.expires_at
    far = issue_renewal_challenge(
        KEY, NODE_A, NOW + MAX_CLOCK_SKEW + timedelta(seconds=2), OsEntropy()
    )
    with pytest.raises(InvalidChallenge):
        verify_renewal_challenge(KEY, far.id, NODE_A, NOW)


def test_unknown_and_known_node_ids_get_challenges_of_one_shape() -> None:
    """Issuing reads nothing about the node: any id gets 32 bytes and the same expiry, and
    two challenges for one node differ (fresh nonce)."""
    entropy = OsEntropy()
    first, second = (issue_renewal_challenge(KEY, NODE_A, NOW, entropy) for _ in range(2))
    unknown = issue_renewal_challenge(KEY, NODE_B, NOW, entropy)
    assert first.id != second.id
    assert {len(c.id) for c in (first, second, unknown)} == {RENEWAL_CHALLENGE_BYTES}
    assert first.expires_at == unknown.expires_at


def test_bad_node_ids_and_times_fail_cleanly() -> None:
    """Non-ASCII, empty, oversized ids are refused without an exception of another type
    (a lone surrogate from JSON must not reach an encoder); naive `now` is a local error."""
    real = issue_renewal_challenge(KEY, NODE_A, NOW, OsEntropy()).id
    for node_id in ("", "x" * 129, "node_\ud800", "node_é", "node_\n"):
        with pytest.raises(InvalidChallenge):
            verify_renewal_challenge(KEY, real, node_id, NOW)
        with pytest.raises(LocalProtocolError):
            issue_renewal_challenge(KEY, node_id, NOW, OsEntropy())
    with pytest.raises(LocalProtocolError):
        verify_renewal_challenge(KEY, real, NODE_A, NOW.replace(tzinfo=None))


def test_mac_key_limits_and_wipe() -> None:
    """Tags are 16..32 bytes; a wrong or short tag raises InvalidSignature; a wiped key is
    unusable; labels are lowercase words."""
    key = MacKey.derive(TOKEN_KEY, "test-label")
    tag = key.tag(b"message")
    assert len(tag) == 32
    assert key.tag(b"message", 16) == tag[:16]
    key.verify(b"message", tag[:16])
    for bad in (tag[:15], tag[:16][::-1], b"", tag + b"\x00"):
        with pytest.raises(InvalidSignature):
            key.verify(b"message", bad)
    with pytest.raises(LocalProtocolError):
        key.tag(b"message", 8)
    for label in ("", "Upper", "with space", "ünï"):
        with pytest.raises(LocalProtocolError):
            MacKey.derive(TOKEN_KEY, label)
    key.wipe()
    assert key.wiped
    with pytest.raises(LocalProtocolError):
        key.tag(b"message")
    assert "bytearray" not in repr(key)
