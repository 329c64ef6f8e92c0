"""Peer maps: payload round trip, and the node-side acceptance rules (chain, addressee, expiry,
serial watermark), each tried as an attack that must fail without changing the watermark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rustynet.application.control_keys import create_control_keys
from rustynet.domain.candidates import Candidate
from rustynet.domain.key_hierarchy import KeyRole, SigningKeyring, issue_certificate
from rustynet.domain.keys import Purpose, SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import (
    MalformedPeerMap,
    PeerEntry,
    PeerMap,
    PeerMapAcceptor,
    PeerMapExpired,
    PeerMapRejected,
    PeerMapSignatureError,
    PeerMapTrust,
    SelfEntry,
    StaleSerial,
    WrongAddressee,
    build_peer_map,
    seal_peer_map,
)
from rustynet.domain.policy import ALL_PORTS, PortRange, Proto
from rustynet.domain.policy_compile import FilterRule, host
from tests.doubles import CountingEntropy
from tests.tamper import flipped_texts

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
KEYS, _ = create_control_keys(CountingEntropy(), NOW)


def tunnel(n: int) -> TunnelKey:
    return TunnelKey(TunnelKeyScheme.X25519, bytes([n]) * 32)


def make_map(addressee: str = "node_a", serial: int = 3) -> PeerMap:
    return build_peer_map(
        self_entry=SelfEntry(addressee, "alpha", ("100.64.0.1/32",), tunnel(1), ("tag:a",)),
        peers=[
            PeerEntry(
                "node_b",
                "beta",
                ("100.64.0.2/32",),
                tunnel(2),
                NOW + timedelta(days=30),
                (Candidate.parse("198.51.100.2:41641", "local"),),
                ("relay-1",),
            )
        ],
        inbound=[
            FilterRule(frozenset({host("100.64.0.2")}), Proto.TCP, (PortRange(22, 22),)),
            FilterRule(frozenset({host("100.64.0.2")}), Proto.ICMP, ALL_PORTS),
        ],
        serial=serial,
        policy_version=7,
        now=NOW,
        ttl=timedelta(hours=1),
    )


def trust() -> PeerMapTrust:
    return PeerMapTrust.from_texts(
        KEYS.root_certificate_text, KEYS.root.key_id, KEYS.signing_certificate_texts(), NOW
    )


def sealed(peer_map: PeerMap) -> str:
    return seal_peer_map(KEYS.signing, peer_map, NOW).to_text()


def test_payload_round_trips_through_the_acceptor() -> None:
    """What the control plane builds is exactly what the node accepts."""
    peer_map = make_map()
    accepted = PeerMapAcceptor(trust(), "node_a").accept(sealed(peer_map), NOW)
    assert accepted == peer_map
    assert accepted.inbound[0].ports == ((22, 22),)
    assert accepted.inbound[1].ports == ()  # ICMP has no ports
    assert [str(e) for e in accepted.peers[0].endpoints] == ["198.51.100.2:41641"]
    assert accepted.peers[0].candidates[0].kind.value == "local"


def test_accepting_raises_the_watermark_and_a_replay_is_stale() -> None:
    """The same map twice: the second is refused as stale; so is an older serial."""
    acceptor = PeerMapAcceptor(trust(), "node_a")
    acceptor.accept(sealed(make_map(serial=3)), NOW)
    assert acceptor.watermark == 3
    with pytest.raises(StaleSerial):
        acceptor.accept(sealed(make_map(serial=3)), NOW)
    with pytest.raises(StaleSerial):
        acceptor.accept(sealed(make_map(serial=2)), NOW)
    assert acceptor.watermark == 3


def test_map_for_another_node_is_refused() -> None:
    """A valid map addressed to node_b is not applied by node_a."""
    acceptor = PeerMapAcceptor(trust(), "node_a")
    with pytest.raises(WrongAddressee):
        acceptor.accept(sealed(make_map(addressee="node_b")), NOW)
    assert acceptor.watermark == 0


def test_expired_map_is_refused() -> None:
    """A map past expires_at is refused."""
    acceptor = PeerMapAcceptor(trust(), "node_a")
    with pytest.raises(PeerMapExpired):
        acceptor.accept(sealed(make_map()), NOW + timedelta(hours=1))
    assert acceptor.watermark == 0


def test_every_byte_flip_of_the_envelope_is_refused() -> None:
    """Any single corruption of the envelope text is refused and leaves the watermark."""
    text = sealed(make_map())
    acceptor = PeerMapAcceptor(trust(), "node_a")
    for label, corrupted in flipped_texts(text):
        with pytest.raises(PeerMapRejected):
            acceptor.accept(corrupted, NOW)
        assert acceptor.watermark == 0, label


def test_map_signed_by_an_uncertified_key_is_refused() -> None:
    """A key the root never certified cannot sign peer maps, even with a valid signature."""
    rogue = SigningKey.from_seed(bytes([9]) * 32)
    rogue_ring = SigningKeyring(KEYS.root, KeyRole.SIGNING)
    cert = issue_certificate(
        KEYS.root_key,
        KEYS.root,
        subject=rogue.public_key,
        role=KeyRole.SIGNING,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        scope=frozenset({Purpose.PEER_MAP}),
    )
    rogue_ring.add(cert, NOW, rogue)
    text = seal_peer_map(rogue_ring, make_map(), NOW).to_text()
    with pytest.raises(PeerMapSignatureError):
        PeerMapAcceptor(trust(), "node_a").accept(text, NOW)  # not in the node's trust


def test_a_different_root_is_refused() -> None:
    """Maps from another control plane (another root) never verify."""
    entropy = CountingEntropy()
    entropy.token_bytes(1)  # shift the deterministic stream: different keys
    other, _ = create_control_keys(entropy, NOW)
    assert other.root.key_id != KEYS.root.key_id
    text = seal_peer_map(other.signing, make_map(), NOW).to_text()
    with pytest.raises(PeerMapSignatureError):
        PeerMapAcceptor(trust(), "node_a").accept(text, NOW)


def test_signing_certificate_from_another_root_in_the_trust_is_refused_by_the_chain() -> None:
    """The rogue certificate IS in the node's trust (so the lookup by key id succeeds and the
    signature over the map is valid): only the chain check to the pinned root refuses it."""
    entropy = CountingEntropy()
    entropy.token_bytes(1)  # another control plane: another root, another signing key
    other, _ = create_control_keys(entropy, NOW)
    rogue_cert = other.signing_certificate_texts()[0]
    poisoned = PeerMapTrust.from_texts(
        KEYS.root_certificate_text,
        KEYS.root.key_id,
        (*KEYS.signing_certificate_texts(), rogue_cert),
        NOW,
    )
    rogue_map = seal_peer_map(other.signing, make_map(), NOW)
    rogue = poisoned.certificate_for(rogue_map.key_id)
    assert rogue.issuer == other.root.key_id != KEYS.root.key_id
    assert Purpose.PEER_MAP in rogue.scope  # only the chain is wrong
    acceptor = PeerMapAcceptor(poisoned, "node_a")
    with pytest.raises(PeerMapSignatureError, match="not issued by the trusted root"):
        acceptor.accept(rogue_map.to_text(), NOW)
    assert acceptor.watermark == 0
    # Positive control: the same trust accepts the same map signed by the pinned root's key.
    assert acceptor.accept(sealed(make_map()), NOW).serial == 3


def test_payload_with_an_extra_field_is_malformed() -> None:
    """The payload parser is strict: an unknown field is refused."""
    payload = dict(make_map().to_payload())
    payload["extra"] = 1
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)


@pytest.mark.parametrize(
    "candidates",
    [
        [{"endpoint": "127.0.0.1:41641", "kind": "local"}],
        [{"endpoint": "[fe80::1]:41641", "kind": "local"}],
        [{"endpoint": "224.0.0.1:41641", "kind": "reflexive"}],
        [{"endpoint": "198.51.100.2:41641", "kind": "peer-observed"}],
        [{"endpoint": "198.51.100.2:41641", "kind": "local", "extra": 1}],
        [{"endpoint": "198.51.100.2:41641", "kind": "local"}] * 2,
        ["198.51.100.2:41641"],
        {"endpoint": "198.51.100.2:41641", "kind": "local"},
    ],
)
def test_a_peer_candidate_breaking_the_rule_makes_the_map_malformed(candidates: object) -> None:
    """The node's decoder applies the candidate rule too (a signed map is no exception)."""
    payload = dict(make_map().to_payload())
    peers = payload["peers"]
    assert isinstance(peers, list)
    first = dict(peers[0])
    first["candidates"] = candidates
    payload["peers"] = [first, *peers[1:]]
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)


def test_a_peers_nat_class_travels_in_the_map_and_an_older_map_without_it_reads_as_null() -> None:
    payload = dict(make_map().to_payload())
    peers = payload["peers"]
    assert isinstance(peers, list)
    first = dict(peers[0])
    assert "nat" not in first  # unclassified: left out, so a map stays readable by older nodes
    first["nat"] = None
    payload["peers"] = [first]
    assert PeerMap.from_payload(payload).peers[0].nat is None
    first["nat"] = "hard"
    payload["peers"] = [first]
    assert PeerMap.from_payload(payload).peers[0].nat is NatClass.HARD
    del first["nat"]
    payload["peers"] = [first]
    assert PeerMap.from_payload(payload).peers[0].nat is None
    for bad in ("symmetric", 3, ""):
        first["nat"] = bad
        payload["peers"] = [first]
        with pytest.raises(MalformedPeerMap):
            PeerMap.from_payload(payload)
