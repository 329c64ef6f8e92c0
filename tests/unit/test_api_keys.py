"""Admin API keys: text format, stored hash, constant-time verification, scope permissions."""

from __future__ import annotations

import pytest

from rustynet.domain.api_keys import (
    SECRET_BYTES,
    AdminAction,
    ApiKey,
    ApiKeyMismatch,
    permits,
)
from rustynet.domain.keys import b64encode
from tests.doubles import CountingEntropy


def test_generated_key_round_trips_and_verifies() -> None:
    """`rnk_<16 hex>_<secret>` parses back to a key that matches the stored hash."""
    key = ApiKey.generate(CountingEntropy())
    text = key.to_text()
    assert text.startswith(f"rnk_{key.key_id}_")
    parsed = ApiKey.parse(text)
    parsed.verify(key.secret_hash())
    assert SECRET_BYTES * 8 >= 128


def test_wrong_secret_does_not_verify() -> None:
    """A key with the right id and another secret is refused."""
    key = ApiKey.generate(CountingEntropy())
    forged = ApiKey.parse(f"rnk_{key.key_id}_{b64encode(bytes(32))}")
    with pytest.raises(ApiKeyMismatch):
        forged.verify(key.secret_hash())


def test_hash_is_bound_to_the_key_id() -> None:
    """The same secret under another id hashes differently (no cross-key reuse)."""
    entropy = CountingEntropy()
    a = ApiKey.generate(entropy)
    secret = a.to_text().split("_", 2)[2]
    other = ApiKey.parse(f"rnk_{'0' * 16}_{secret}")
    with pytest.raises(ApiKeyMismatch):
        other.verify(a.secret_hash())


@pytest.mark.parametrize(
    "text",
    ["", "rnk_", "rnk_abc_def", "rnk_0123456789abcdef", "rnk_0123456789ABCDEF_AAAA", "x" * 500],
)
def test_malformed_keys_raise_one_error(text: str) -> None:
    """Every malformed key raises the same ApiKeyMismatch."""
    with pytest.raises(ApiKeyMismatch):
        ApiKey.parse(text)


def test_repr_never_shows_the_secret() -> None:
    """repr holds the id only."""
    key = ApiKey.generate(CountingEntropy())
    assert key.to_text().split("_", 2)[2] not in repr(key)


def test_wiped_key_no_longer_verifies() -> None:
    """After wipe() the secret is gone."""
    key = ApiKey.generate(CountingEntropy())
    stored = key.secret_hash()
    key.wipe()
    with pytest.raises(ApiKeyMismatch):
        key.verify(stored)


def test_scopes_permit_only_their_actions() -> None:
    """admin: everything; read-only: read; enroll-only: create join keys; unknown: nothing."""
    assert all(permits("admin", a) for a in AdminAction)
    assert permits("read-only", AdminAction.READ)
    assert not permits("read-only", AdminAction.WRITE)
    assert not permits("read-only", AdminAction.CREATE_JOIN_KEY)
    assert permits("enroll-only", AdminAction.CREATE_JOIN_KEY)
    assert not permits("enroll-only", AdminAction.READ)
    assert not permits("superuser", AdminAction.READ)
