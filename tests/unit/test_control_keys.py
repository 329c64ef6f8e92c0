"""Control-plane keys across a restart: reloaded from the key-store entries, re-verified at
start, and still signing peer maps that nodes holding the original trust accept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rustynet.application.control_keys import (
    CERTIFICATES,
    ControlKeyError,
    create_control_keys,
    load_control_keys,
)
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.netmap import (
    PeerMap,
    PeerMapAcceptor,
    PeerMapTrust,
    SelfEntry,
    build_peer_map,
    seal_peer_map,
)
from tests.doubles import CountingEntropy

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _map(now: datetime) -> PeerMap:
    me = SelfEntry(
        "node_a", "alpha", ("100.64.0.1/32",), TunnelKey(TunnelKeyScheme.X25519, bytes(32)), ()
    )
    return build_peer_map(
        self_entry=me,
        peers=[],
        inbound=[],
        serial=1,
        policy_version=1,
        now=now,
        ttl=timedelta(hours=1),
    )


def test_control_keys_survive_a_restart_and_still_sign_trusted_maps() -> None:
    """After a reload the same root, token and audit keys are back and the peer-map key still
    signs maps that a node pinned to the original root accepts."""
    keys, entries = create_control_keys(CountingEntropy(), NOW)
    node_trust = PeerMapTrust.from_texts(
        keys.root_certificate_text, keys.root.key_id, keys.signing_certificate_texts(), NOW
    )
    later = NOW + timedelta(days=1)
    reloaded = load_control_keys(entries, later)
    assert reloaded.root.key_id == keys.root.key_id
    assert reloaded.token_key.public_key == keys.token_key.public_key
    assert reloaded.audit_certificate == keys.audit_certificate
    assert reloaded.signing_certificate_texts() == keys.signing_certificate_texts()
    envelope = seal_peer_map(reloaded.signing, _map(later), later)
    assert PeerMapAcceptor(node_trust, "node_a").accept(envelope.to_text(), later).serial == 1


def test_reload_re_verifies_the_certificates() -> None:
    """Start refuses once the audit certificate (365 d) has expired, and refuses certificates
    of another control plane put beside our private keys."""
    keys, entries = create_control_keys(CountingEntropy(), NOW)
    load_control_keys(entries, NOW + timedelta(days=364))
    with pytest.raises(ControlKeyError, match="do not verify"):
        load_control_keys(entries, NOW + timedelta(days=366))
    entropy = CountingEntropy()
    entropy.token_bytes(1)  # shift the deterministic stream: another control plane's keys
    other, other_entries = create_control_keys(entropy, NOW)
    assert other.root.key_id != keys.root.key_id
    foreign = {**entries, CERTIFICATES: other_entries[CERTIFICATES]}
    with pytest.raises(ControlKeyError, match="do not verify"):
        load_control_keys(foreign, NOW)
